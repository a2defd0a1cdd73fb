"""Revocation fencing: a value computed from state read before a revocation of its key is
never stored after it, through get_or_set, memoize and tickets alike."""

import os
import subprocess
import sys
import threading
import time

import pytest

import _workers
import larder

TTL = 300

# (name, whether the key is cached before, the revocation, what the key holds after)
REVOCATIONS = [
    ("delete of an uncached key", False, lambda c: c.delete("token:abc"), None),
    ("delete", True, lambda c: c.delete("token:abc"), None),
    ("set", False, lambda c: c.set("token:abc", b"revoked", ttl=TTL), b"revoked"),
    ("add", False, lambda c: c.add("token:abc", b"revoked", ttl=TTL), b"revoked"),
    ("replace", True, lambda c: c.replace("token:abc", b"revoked"), b"revoked"),
    ("replace of an uncached key", False, lambda c: c.replace("token:abc", b"x"), None),
    ("incr", False, lambda c: c.incr("token:abc"), (1).to_bytes(8, "little")),
    ("clear", True, lambda c: c.clear(), None),
]
IDS = [r[0] for r in REVOCATIONS]


def wait_for(path, deadline=60):
    end = time.monotonic() + deadline
    while not os.path.exists(path):
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.001)  # poll interval; the deadline bounds the wait


@pytest.mark.parametrize("name,cached,revoke,after", REVOCATIONS, ids=IDS)
def test_a_ticket_is_fenced_off_by_every_revocation(cache, name, cached, revoke, after):
    if cached:
        cache.set("token:abc", b"old claims", ttl=TTL)
    ticket = cache.ticket("token:abc")
    revoke(cache)
    assert cache.set_with_ticket("token:abc", b"claims:alice", ticket, ttl=TTL) is False
    assert cache.get("token:abc") == after
    # A ticket taken after the revocation stores.
    ticket = cache.ticket("token:abc")
    assert cache.set_with_ticket("token:abc", b"claims:alice", ticket, ttl=TTL) is True
    assert cache.get("token:abc") == b"claims:alice"


def test_a_ticket_is_for_its_key(cache):
    ticket = cache.ticket("token:one")
    with pytest.raises(larder.InvalidArgument, match="another key"):
        cache.set_with_ticket("token:two", b"x", ticket)
    with pytest.raises(TypeError, match="larder.Ticket"):
        cache.set_with_ticket("token:one", b"x", "not a ticket")
    assert repr(ticket) == "<larder.Ticket>"
    assert isinstance(ticket, larder.Ticket)


# Every revoking write, of a key with no fresh entry (so that the other process fills).
UNCACHED = [r for r in REVOCATIONS if not r[1] or r[0] == "clear"]


@pytest.mark.parametrize("name,cached,revoke,after", UNCACHED, ids=[r[0] for r in UNCACHED])
def test_get_or_set_in_another_process_never_stores_over_a_revocation(
    cache, procs, tmp_path, name, cached, revoke, after
):
    """The issue's scenario: another process's fill reads the token's state, then pauses
    (until a marker file appears, never a sleep race) while this one revokes."""
    argv = [sys.executable, _workers.__file__, "paused-fill", cache.path, "token:abc"]
    p = subprocess.Popen([*argv, str(tmp_path)], stdout=subprocess.PIPE)
    procs.append(p)
    wait_for(tmp_path / "in-fill")
    revoke(cache)
    (tmp_path / "revoked").touch()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    assert out == b"claims:alice", "the filler's caller lost its value"
    assert cache.get("token:abc") == after, "the fill undid the revocation"
    assert cache.stats()["fills_fenced"] == 1


def test_memoize_invalidate_fences_a_call_in_flight(cache):
    """fn.invalidate during a call of fn with the same arguments: the call returns its
    result, which is not cached."""
    in_call, go = threading.Event(), threading.Event()
    results = []

    @cache.memoize(ttl=TTL)
    def perms(uid):
        in_call.set()
        assert go.wait(60), "the test never released the call"
        return b"admin"

    t = threading.Thread(target=lambda: results.append(perms(7)))
    t.start()
    try:
        assert in_call.wait(60), "the call never started"
        assert perms.invalidate(7) is False  # nothing cached yet: it still revokes
    finally:
        go.set()
        t.join(60)
    assert results == [b"admin"]
    assert cache.get(perms.cache_key(7)) is None
    assert cache.stats()["fills_fenced"] == 1
