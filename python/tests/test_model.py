"""The API against a dict model, with TTLs on the handle's manual clock.

TTLs end on half seconds and the clock moves by whole seconds, so the few milliseconds
the real clock runs during one case never decide an expiry.
"""

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import conftest
import larder

KEYS = st.sampled_from(["a", "b", "c", b"d", "\u00e9"])
VALUES = st.binary(max_size=64)
TTLS = st.sampled_from([None, 1.5, 2.5, 4.5])


def kb(k):
    return k.encode() if isinstance(k, str) else k


class CacheModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.path = conftest.unique_path()
        self.c = larder.Cache(self.path, capacity=4 << 20, manual_clock=True)
        self.now = 0.0
        self.model = {}  # key bytes -> (value, expire or None)

    def teardown(self):
        self.c.close()
        conftest.remove(self.path)

    def fresh(self, k):
        e = self.model.get(kb(k))
        if e is None:
            return None
        v, exp = e
        return v if exp is None or self.now < exp else None

    def expiry(self, ttl):
        return None if ttl is None else self.now + ttl

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def set(self, k, v, ttl):
        self.c.set(k, v, ttl=ttl)
        self.model[kb(k)] = (v, self.expiry(ttl))

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def add(self, k, v, ttl):
        stored = self.c.add(k, v, ttl=ttl)
        assert stored == (self.fresh(k) is None)
        if stored:
            self.model[kb(k)] = (v, self.expiry(ttl))

    @rule(k=KEYS)
    def delete(self, k):
        assert self.c.delete(k) == (self.fresh(k) is not None)
        self.model.pop(kb(k), None)

    @rule(k=KEYS, ttl=TTLS)
    def touch(self, k, ttl):
        ok = self.c.touch(k, ttl=ttl)
        assert ok == (self.fresh(k) is not None)
        if ok:
            self.model[kb(k)] = (self.model[kb(k)][0], self.expiry(ttl))

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def get_or_set(self, k, v, ttl):
        want = self.fresh(k)
        got = self.c.get_or_set(k, lambda: v, ttl=ttl)
        if want is None:
            # An expired entry is refreshed (no other process holds the fill slot).
            assert got == v
            self.model[kb(k)] = (v, self.expiry(ttl))
        else:
            assert got == want

    @rule(k=KEYS)
    def get_stale(self, k):
        got = self.c.get_stale(k)
        e = self.model.get(kb(k))
        if e is None:
            assert got is None
        elif self.fresh(k) is not None:
            assert got == (e[0], False)
        else:
            assert got in (None, (e[0], True))

    @rule()
    def clear(self):
        n = self.c.clear()
        fresh = sum(1 for k in self.model if self.fresh(k) is not None)
        assert fresh <= n <= len(self.model)
        self.model.clear()

    @rule(secs=st.sampled_from([1, 2, 3]))
    def advance(self, secs):
        self.c.advance_clock(secs)
        self.now += secs

    @invariant()
    def reads_agree(self):
        for k in ["a", "b", "c", b"d", "\u00e9"]:
            want = self.fresh(k)
            assert self.c.get(k) == want
            assert (k in self.c) == (want is not None)


CacheModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestCacheModel = CacheModel.TestCase


def test_verify_after_model_runs(path):
    c = larder.Cache(path, capacity=4 << 20)
    for i in range(500):
        c.set(b"%d" % i, bytes(i % 97))
    assert c.verify() == []
    c.close()
