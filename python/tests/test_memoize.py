"""Cache.memoize: keys made of the arguments' values, refusals, and invalidate."""

import collections
import enum
import math
import os
import pickle
import struct
import subprocess
import sys

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import _workers
import larder

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def pcache(path):
    """A cache that pickles its values, so memoized functions may return objects."""
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=0.5, serializer="pickle")
    yield c
    c.close()


class User:
    """An object without a value: its default repr carries its address."""

    def __init__(self, uid, admin):
        self.uid = uid
        self.admin = admin


class SameRepr(User):
    def __repr__(self):
        return "User"


def test_objects_with_equal_reprs_are_refused_not_confused(pcache):
    """Keyed by repr, the second user hit the first's entry and got its permissions."""
    calls = []

    @pcache.memoize
    def perms(user):
        calls.append(user.uid)
        return {"uid": user.uid, "admin": user.admin}

    for user in (SameRepr(1, True), SameRepr(2, False)):
        with pytest.raises(TypeError):
            perms(user)
    assert calls == []


def test_a_reused_address_never_serves_another_objects_result(pcache):
    """Keyed by repr, a new object at a freed object's address hit the freed one's
    entry."""

    @pcache.memoize
    def perms(user):
        return {"uid": user.uid, "admin": user.admin}

    seen = set()
    for uid in range(10_000):
        user = User(uid, admin=uid == 0)
        try:
            assert perms(user) == {"uid": uid, "admin": uid == 0}
        except TypeError:
            pass
        if id(user) in seen:
            break
        seen.add(id(user))
        del user
    else:
        pytest.fail("no address was reused in 10,000 objects")


def test_key_function_serves_each_object_its_own_result(pcache):
    calls = []

    @pcache.memoize(key=lambda user: f"perms:{user.uid}")
    def perms(user):
        calls.append(user.uid)
        return {"uid": user.uid, "admin": user.admin}

    assert perms(SameRepr(1, True)) == {"uid": 1, "admin": True}
    assert perms(SameRepr(2, False)) == {"uid": 2, "admin": False}
    assert perms(SameRepr(1, True)) == {"uid": 1, "admin": True}
    assert calls == [1, 2]
    assert perms.cache_key(SameRepr(2, False)) == "perms:2"
    assert pcache.get("perms:2") == {"uid": 2, "admin": False}


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Count(int):
    pass


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "value, type_name",
    [
        (object(), "object"),
        (User(1, True), "User"),
        ({1, 2}, "set"),
        (bytearray(b"a"), "bytearray"),
        (memoryview(b"a"), "memoryview"),
        (1j, "complex"),
        (Color.RED, "Color"),
        (Name("a"), "Name"),
        (Count(1), "Count"),
        (Point(1, 2), "Point"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (collections.defaultdict(int), "defaultdict"),
        (print, "builtin_function_or_method"),
    ],
)
def test_arguments_without_a_value_encoding_are_refused(cache, value, type_name):
    calls = []

    @cache.memoize
    def fn(*args, **kwargs):
        calls.append(1)
        return b"v"

    with pytest.raises(TypeError) as positional:
        fn(b"fine", value)
    message = str(positional.value)
    assert "argument 1" in message and type_name in message and "key=" in message
    assert "fn" in message

    with pytest.raises(TypeError) as keyword:
        fn(b"fine", user=value)
    message = str(keyword.value)
    assert "'user'" in message and type_name in message and "key=" in message

    # Inside an accepted container, the error names the argument, the container and
    # the value it holds.
    for nested in ([value], (0, value), {"k": value}, {0: [value]}):
        with pytest.raises(TypeError) as inside:
            fn(nested)
        message = str(inside.value)
        assert "argument 0" in message and type(nested).__name__ in message
        assert type_name in message and "key=" in message

    with pytest.raises(TypeError):
        fn.cache_key(value)
    with pytest.raises(TypeError):
        fn.invalidate(value)
    assert calls == []
    assert cache.stats()["entries"] == 0


def test_a_methods_self_is_refused_until_key_is_given(pcache):
    class Repo:
        def __init__(self, name):
            self.name = name

        @pcache.memoize
        def size(self, path):
            return len(self.name + path)

        @pcache.memoize(key=lambda self, path: f"repo:{self.name}:{path}")
        def keyed_size(self, path):
            return len(self.name + path)

    with pytest.raises(TypeError, match="argument 0"):
        Repo("a").size("b")
    assert Repo("a").keyed_size("bc") == 3
    assert Repo("ab").keyed_size("c") == 3
    assert pcache.get("repo:a:bc") == 3


def test_self_referential_and_too_deep_arguments_raise_value_error(cache):
    @cache.memoize
    def fn(*args, **kwargs):
        return b"v"

    loop = [1]
    loop.append(loop)
    looped_dict = {}
    looped_dict["self"] = looped_dict
    deep = []
    for _ in range(10_000):
        deep = [deep]
    for value in (loop, looped_dict, deep):
        with pytest.raises(ValueError) as refused:
            fn(b"fine", value)
        message = str(refused.value)
        assert "argument 1" in message and "key=" in message
        with pytest.raises(ValueError, match="'arg'"):
            fn(arg=value)

    nested = b"leaf"
    for _ in range(50):
        nested = [nested]
    assert fn(nested) == b"v"


@pytest.fixture
def probe(cache):
    return _workers.memoize_probe(cache)


NAN_BITS = struct.unpack(">d", struct.pack(">Q", 0x7FF8_0000_0000_0001))[0]

# Calls that differ only in a way the encoding must keep apart; each is (args, kwargs).
DISTINCT_CALLS = [
    ((), {}),
    ((None,), {}),
    ((1,), {}),
    ((True,), {}),
    ((1.0,), {}),
    (("1",), {}),
    ((b"1",), {}),
    ((0,), {}),
    ((False,), {}),
    ((0.0,), {}),
    ((-0.0,), {}),
    ((math.nan,), {}),
    ((-math.nan,), {}),
    ((NAN_BITS,), {}),
    ((math.inf,), {}),
    ((-1,), {}),
    ((255,), {}),
    ((-256,), {}),
    ((2**64,), {}),
    ((-(2**64),), {}),
    ((10**5000,), {}),
    (("",), {}),
    ((b"",), {}),
    (("a",), {}),
    ((b"a",), {}),
    (("\ud83d\ude00",), {}),
    (("\U0001f600",), {}),
    (((),), {}),
    (([],), {}),
    (({},), {}),
    ((frozenset(),), {}),
    (((1, 2),), {}),
    (([1, 2],), {}),
    ((frozenset([1, 2]),), {}),
    ((1, 2), {}),
    ((("a", "b"),), {}),
    ((("ab",),), {}),
    ((("a", ("b",)),), {}),
    ((("a",), "b"), {}),
    (("a", "b"), {}),
    (("ab",), {}),
    (("ab", ""), {}),
    (("", "ab"), {}),
    ((b"a", b"b"), {}),
    ((b"ab", b""), {}),
    ((("a", "b"), ("c",)), {}),
    ((("a",), ("b", "c")), {}),
    (([1, 2], [3]), {}),
    (([1], [2, 3]), {}),
    ((10**20, 0), {}),
    ((0, 10**20), {}),
    # Without lengths, these ints' bytes would spell the next int's tag (b"i"), and
    # these lists would end in other places.
    ((0x016901, 2), {}),
    ((1, 0x016902), {}),
    (([[1], 2],), {}),
    (([[1, 2]],), {}),
    ((("",),), {}),
    (((None,),), {}),
    (({1: 2},), {}),
    (({True: 2},), {}),
    (({1: 2.0},), {}),
    (({"a": 1},), {}),
    (([("a", 1)],), {}),
    (({"a": 1, "b": 2},), {}),
    (({"a": 2, "b": 1},), {}),
    (({"a": None},), {}),
    ((), {"a": 1}),
    ((), {"b": 1}),
    ((), {"a": True}),
    ((), {"a": 1, "b": 2}),
    ((1,), {"b": 2}),
    ((), {"a": {"a": 1}}),
]


def test_values_that_differ_in_type_or_value_get_distinct_keys(probe):
    keys = [probe.cache_key(*args, **kwargs) for args, kwargs in DISTINCT_CALLS]
    counts = collections.Counter(keys)
    assert [DISTINCT_CALLS[i] for i, k in enumerate(keys) if counts[k] > 1] == []


def test_positional_and_keyword_calls_are_distinct_keys(cache):
    @cache.memoize
    def scaled(x, scale=1):
        return b"%d" % (x * scale)

    assert scaled.cache_key(2) != scaled.cache_key(x=2)
    assert scaled.cache_key(2) != scaled.cache_key(2, scale=1)
    assert scaled.cache_key(2, scale=1) != scaled.cache_key(2, 1)


def test_order_of_dict_items_frozenset_members_and_keywords_does_not_matter(probe):
    assert probe.cache_key({"a": 1, "b": [2]}) == probe.cache_key({"b": [2], "a": 1})
    assert probe.cache_key(a=1, b=2) == probe.cache_key(b=2, a=1)
    # 1 and 9 fall in the same slot of a small set's table, so the member inserted
    # first is iterated first.
    one_first, nine_first = frozenset([1, 9]), frozenset([9, 1])
    assert list(one_first) != list(nine_first)
    assert probe.cache_key(one_first) == probe.cache_key(nine_first)
    assert probe.cache_key({one_first: 1}) == probe.cache_key({nine_first: 1})


def test_equal_values_get_equal_keys(probe):
    assert probe.cache_key([1, "a", b"b", None]) == probe.cache_key([1, "a", b"b", None])
    assert probe.cache_key(float("nan")) == probe.cache_key(float("nan"))
    big = 10**40
    assert probe.cache_key(big + 1) == probe.cache_key(int(str(big + 1)))


def test_key_is_prefixed_by_module_and_qualname(cache):
    @cache.memoize
    def first(x):
        return b"1"

    @cache.memoize
    def second(x):
        return b"2"

    key = first.cache_key(1)
    prefix = "memoize:test_memoize." "test_key_is_prefixed_by_module_and_qualname.<locals>.first:"
    assert key.startswith(prefix)
    digest = key[len(prefix) :]
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert first.cache_key(1) != second.cache_key(1)
    assert first(1) == b"1" and second(1) == b"2"
    assert cache.get(key) == b"1"


def test_invalidate_removes_exactly_that_calls_entry(cache):
    calls = []

    @cache.memoize
    def square(x):
        calls.append(x)
        return b"%d" % (x * x)

    assert square(3) == b"9" and square(4) == b"16" and square(x=3) == b"9"
    assert calls == [3, 4, 3]
    assert square.invalidate(3) is True
    assert square.invalidate(3) is False
    assert square(4) == b"16" and square(x=3) == b"9"
    assert calls == [3, 4, 3]
    assert square(3) == b"9"
    assert calls == [3, 4, 3, 3]
    assert square.invalidate(x=3) is True
    assert square(x=3) == b"9"
    assert calls == [3, 4, 3, 3, 3]


def test_invalidate_uses_the_key_function(cache):
    calls = []

    @cache.memoize(key=lambda name, *, lang="en": f"greeting:{lang}:{name}")
    def greet(name, *, lang="en"):
        calls.append(name)
        return f"{lang}: hello {name}".encode()

    assert greet("ann") == b"en: hello ann"
    assert greet.cache_key("ann") == "greeting:en:ann"
    assert "greeting:en:ann" in cache
    assert greet.invalidate("bob") is False
    assert greet.invalidate("ann") is True
    assert "greeting:en:ann" not in cache
    assert greet("ann") == b"en: hello ann"
    assert calls == ["ann", "ann"]


def test_wrapper_keeps_the_functions_name_and_doc(cache):
    @cache.memoize(ttl=60)
    def documented(x):
        """Docs."""
        return b""

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docs."
    assert documented.__wrapped__(1) == b""


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
HASHABLES = st.recursive(
    SCALARS,
    lambda inner: (st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3)),
    max_leaves=8,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(HASHABLES, inner, max_size=3)
        | st.frozensets(HASHABLES, max_size=3)
    ),
    max_leaves=12,
)
KWARGS = st.dictionaries(st.text(max_size=3), VALUES, max_size=3)


def canonical(value):
    """The test's own model of "the same value": type and value, element by element,
    floats by their bits, dicts and frozensets as sorted collections."""
    kind = type(value)
    if kind is float:
        return ("float", struct.pack(">d", value))
    if kind in (tuple, list):
        return (kind.__name__, tuple(canonical(x) for x in value))
    if kind is dict:
        items = [(canonical(k), canonical(v)) for k, v in value.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    if kind is frozenset:
        return ("frozenset", tuple(sorted(map(canonical, value), key=repr)))
    return (kind.__name__, value)


def rebuilt(value):
    """An equal value made of new objects, dict items and set members added in reverse
    order."""
    kind = type(value)
    if kind is float:
        return struct.unpack(">d", struct.pack(">d", value))[0]
    if kind in (tuple, list):
        return kind(rebuilt(x) for x in value)
    if kind is dict:
        return {rebuilt(k): rebuilt(v) for k, v in reversed(list(value.items()))}
    if kind is frozenset:
        return frozenset(rebuilt(x) for x in reversed(list(value)))
    if kind is int:
        return int(str(value))
    return value


def test_keys_are_equal_exactly_when_values_are(probe):
    @settings(max_examples=300, deadline=None)
    @given(VALUES, VALUES)
    def check(a, b):
        assert probe.cache_key(a) == probe.cache_key(rebuilt(a))
        same = canonical(a) == canonical(b)
        assert (probe.cache_key(a) == probe.cache_key(b)) == same
        assert (probe.cache_key(x=a) == probe.cache_key(x=b)) == same
        assert probe.cache_key(a, b) != probe.cache_key((a, b))

    check()


def key_server(path, seed):
    """A child that computes memoize keys under PYTHONHASHSEED=seed; exits when its
    stdin closes (Popen's context manager closes it)."""
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, env.get("PYTHONPATH")]))
    script = "import sys, _workers; _workers.serve_memoize_keys(sys.argv[1])"
    return subprocess.Popen(
        [sys.executable, "-c", script, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


def ask(server, args, kwargs):
    pickle.dump((args, kwargs), server.stdin)
    server.stdin.flush()
    line = server.stdout.readline()
    assert line, "the key server exited"
    return line.decode().strip()


def test_keys_are_the_same_in_processes_with_other_hash_seeds(cache, probe, procs):
    with key_server(cache.path, 1) as one, key_server(cache.path, 2) as two:
        procs += [one, two]
        hashes = [s.stdout.readline().strip() for s in (one, two)]
        assert hashes[0] != hashes[1], "the servers should hash str differently"

        @settings(max_examples=100, deadline=None)
        @given(st.lists(VALUES, max_size=3), KWARGS)
        def check(args, kwargs):
            mine = probe.cache_key(*args, **kwargs)
            assert [ask(s, args, kwargs) for s in (one, two)] == [mine, mine]

        check()
        # Frozensets and dicts of strings, whose iteration order follows hash(), once
        # more explicitly.
        words = [f"w{i}" for i in range(40)]
        calls = [
            ((frozenset(words),), {}),
            (({w: i for i, w in enumerate(words)},), {}),
            ((), {w: i for i, w in enumerate(words)}),
        ]
        for args, kwargs in calls:
            mine = probe.cache_key(*args, **kwargs)
            assert [ask(s, args, kwargs) for s in (one, two)] == [mine, mine]
    assert one.returncode == 0 and two.returncode == 0
