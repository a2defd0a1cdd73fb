"""Options at their limits: timeouts as long as a Python float holds never crash."""

import larder


def test_huge_timeouts_work_like_long_ones(path):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=1e19, fill_timeout=1e19)
    c.set("k", b"v", ttl=1e19)
    assert c.get("k") == b"v"
    assert c.get_or_set("f", lambda: b"filled", ttl=1e19) == b"filled"
    attached = larder.Cache(path, lock_timeout=1e19)
    assert attached.get("f") == b"filled"
    attached.close()
    c.close()
