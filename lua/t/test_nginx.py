"""resty.larder under a real nginx with the Lua module (run by lua/run-tests.sh)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from nginxctl import (
    Nginx,
    kill_stopped_workers,
    process_state,
    remove_cache_files,
    unique_name,
    wait_until,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CacheTestCase(unittest.TestCase):
    """One nginx for the class; a fresh cache name per test, its files removed after."""

    env = ()

    @classmethod
    def setUpClass(cls):
        cls.nginx = Nginx(env=cls.env)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.close()

    def new_cache(self, what="t"):
        name = unique_name(what)
        self.addCleanup(remove_cache_files, name)
        return name

    def assert_no_failures(self, result):
        self.assertEqual(result["failures"], [], result)
        self.assertGreater(result["passed"], 0)


class TestHeaderBlock(unittest.TestCase):
    def test_embedded_declarations_are_the_headers(self):
        with open(os.path.join(REPO, "capi", "include", "larder.h")) as f:
            header = f.read()
        block = header.split("/* LARDER_FFI_BEGIN */\n", 1)[1].split("/* LARDER_FFI_END */", 1)[0]
        with open(os.path.join(REPO, "lua", "lib", "resty", "larder.lua")) as f:
            lua = f.read()
        embedded = re.search(r"local CDEF = \[=\[\n(.*?)\]=\]", lua, re.S).group(1)
        self.assertEqual(embedded, block)


class TestDictConventions(CacheTestCase):
    def test_shared_dict_passes_the_assertions(self):
        self.assert_no_failures(self.nginx.request("/t/conformance", {"backend": "shared"}))

    def test_larder_passes_the_same_assertions(self):
        shared = self.nginx.request("/t/conformance", {"backend": "shared"})
        ours = self.nginx.request(
            "/t/conformance", {"backend": "larder", "cache": self.new_cache()}
        )
        self.assert_no_failures(ours)
        self.assertEqual(ours["passed"], shared["passed"])

    def test_larder_differences_extras_and_bad_input(self):
        self.assert_no_failures(self.nginx.request("/t/larder_only", {"cache": self.new_cache()}))

    def test_mixed_sizes_never_give_no_memory_while_mostly_empty(self):
        shared = self.nginx.request("/t/mixed", {"backend": "shared"})
        ours = self.nginx.request("/t/mixed", {"backend": "larder", "cache": self.new_cache()})
        print(
            "\nmixed sizes, %d sets: lua_shared_dict %d 'no memory', larder %d"
            % (ours["sets"], shared["no_memory"], ours["no_memory"])
        )
        self.assertEqual(ours["other_errors"], [])
        self.assertEqual(ours["no_memory"], 0)
        self.assertLess(ours["live_max"], ours["capacity"] / 4, "the cache was mostly empty")


class TestSharedFile(CacheTestCase):
    def test_group_mode_and_allowed_uids(self):
        # A path, so that the test knows the file's name (new_cache's cleanup removes it).
        cache = "/dev/shm/" + self.new_cache("uids")
        root = os.geteuid() == 0
        # Root may give the file any group; another user, its own.
        gid = 54321 if root else os.getegid()
        self.assert_no_failures(
            self.nginx.request("/t/shared_file", {"cache": cache, "group": gid})
        )
        path = cache
        st = os.stat(path)
        self.assertEqual(st.st_gid, gid)
        self.assertEqual(st.st_mode & 0o777, 0o660)
        if not root:
            print("\nanother uid's file: skipped, it needs root to chown")
            return
        os.chown(path, 65534, -1)
        self.assert_no_failures(
            self.nginx.request("/t/shared_file", {"cache": cache, "owner": 65534})
        )


class TestSingleFlightAcrossWorkers(CacheTestCase):
    def test_fn_runs_once_while_concurrent_requests_wait(self):
        cache = self.new_cache("fill")
        params = {"cache": cache, "key": "token:abc", "ms": 300}
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(lambda _: self.nginx.request("/t/fill", params), range(12)))
        self.assertEqual({a["value"] for a in answers}, {"value of token:abc"}, answers)
        self.assertEqual(sorted(a["how"] for a in answers).count("filled"), 1, answers)
        runs = self.nginx.request("/t/fill", params)["runs"]
        self.assertEqual(runs, 1)


class TestOpInterface(CacheTestCase):
    """The /op location of nginx.sh, which the three-language test uses."""

    def op(self, **params):
        return self.nginx.request("/op", params)

    def test_ops_in_raw_mode(self):
        c = self.new_cache("op")
        cap = 4 << 20
        self.assertEqual(
            self.op(cache=c, op="get", key="k", capacity=cap), {"ok": True, "found": False}
        )
        self.assertEqual(self.op(cache=c, op="set", key="k", value="héllo", ttl=60), {"ok": True})
        got = self.op(cache=c, op="get", key="k")
        self.assertEqual(got["value"], "héllo")
        self.assertEqual(bytes.fromhex(got["value_hex"]), "héllo".encode())
        self.assertEqual(
            self.op(cache=c, op="add", key="k", value="x"), {"ok": False, "error": "exists"}
        )
        self.assertEqual(self.op(cache=c, op="add", key="k2", value=""), {"ok": True})
        self.assertEqual(self.op(cache=c, op="get", key="k2")["value"], "")
        self.assertEqual(self.op(cache=c, op="delete", key="k"), {"ok": True})
        self.assertFalse(self.op(cache=c, op="get", key="k")["found"])
        self.assertEqual(self.op(cache=c, op="incr", key="n"), {"ok": True, "value": "1"})
        self.assertEqual(
            self.op(cache=c, op="incr", key="n", value=-5), {"ok": True, "value": "-4"}
        )
        counter = self.op(cache=c, op="get", key="n")
        self.assertTrue(counter["binary"])
        self.assertEqual(
            bytes.fromhex(counter["value_hex"]), (-4).to_bytes(8, "little", signed=True)
        )
        self.assertEqual(self.op(cache=c, op="stats")["stats"]["entries"], 2)
        binary = bytes(range(256))
        self.assertEqual(
            self.nginx.request("/op", {"cache": c, "op": "set", "key": "b"}, body=binary),
            {"ok": True},
        )
        self.assertEqual(bytes.fromhex(self.op(cache=c, op="get", key="b")["value_hex"]), binary)
        self.assertFalse(self.op(cache=c, op="nope", key="k")["ok"])
        self.assertFalse(self.op(op="get", key="k")["ok"])


class TestWorkersKilledMidWrite(CacheTestCase):
    """Each worker stops itself inside a write (holding the shard lock) at its 26th
    set; the test SIGKILLs it, the master respawns it, and the others carry on."""

    env = (
        ("LARDER_CRASH_AT", "set.mid_value"),
        ("LARDER_CRASH_ACTION", "stop"),
        ("LARDER_CRASH_SKIP", "25"),
    )
    kills_wanted = 3
    recovery_deadline = 15.0

    def test_survivors_carry_on_and_values_are_never_torn(self):
        cache = self.new_cache("crash")
        params = {"cache": cache, "n": 10, "keys": 16, "max": 20000, "lock_timeout_ms": 200}
        stop = threading.Event()
        lock = threading.Lock()
        results = []  # (monotonic time, answer or None)

        def client():
            while not stop.is_set():
                try:
                    answer = self.nginx.request("/t/churn", params, timeout=2.0)
                except (OSError, RuntimeError):
                    answer = None
                with lock:
                    results.append((time.monotonic(), answer))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        kill_times = []
        try:
            deadline = time.monotonic() + 60
            while len(kill_times) < self.kills_wanted:
                self.assertLess(time.monotonic(), deadline, "workers did not reach the crash point")
                for _ in range(kill_stopped_workers(self.nginx)):
                    kill_times.append(time.monotonic())
                time.sleep(0.02)
            # Requests keep succeeding after the last kill.
            last = kill_times[-1]
            wait_until(
                lambda: any(
                    t > last and a is not None and not a["errors"] for t, a in list(results)
                ),
                self.recovery_deadline,
                "a clean request after the last kill",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
        # Every kill was followed by successful requests within the deadline.
        for k in kill_times:
            self.assertTrue(
                any(k < t <= k + self.recovery_deadline and a is not None for t, a in results),
                "no request succeeded within %ss of a kill" % self.recovery_deadline,
            )
        answers = [a for _, a in results if a is not None]
        self.assertEqual(sum(a["torn"] for a in answers), 0, "a torn value was read")
        self.assertGreater(sum(a["written"] for a in answers), 0)
        # Only the lock waits of the stopped worker's time may have failed.
        errors = {e for a in answers for e in a["errors"]}
        self.assertLessEqual(errors, {"set: timeout", "get: timeout"}, errors)

        # Let no stopped worker hold a lock, then read everything back.
        wait_until(
            lambda: kill_stopped_workers(self.nginx) == 0
            and len(self.nginx.worker_pids()) == 2
            and all(process_state(p) != "T" for p in self.nginx.worker_pids()),
            10,
            "two running workers",
        )
        final = self.nginx.request("/t/verify", {"cache": cache, "keys": 16})
        self.assertEqual(final["torn"], 0)
        self.assertEqual(final["errors"], [])
        self.assertGreater(final["read"], 0)
        self.assertGreaterEqual(final["stats"]["recoveries"], 1, final["stats"])
        self.assertIn("exited on signal 9", self.nginx.error_log())
        print(
            "\nkilled %d workers mid-write; %d requests answered, %d timed out; "
            "%d repairs; 0 torn values"
            % (
                len(kill_times),
                len(answers),
                len(results) - len(answers),
                final["stats"]["recoveries"],
            )
        )


# Opens the cache argv[2] (attach_only) through liblarder (argv[1]) and sets argv[3]: run
# with LARDER_CRASH_AT=set.mid_value and LARDER_CRASH_ACTION=stop, the process stops
# itself inside the write, holding the key's shard lock.
HOLDER = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
opts = ctypes.create_string_buffer(256)
lib.larder_options_init(opts)
ctypes.c_uint32.from_buffer(opts, 52).value = 1  # attach_only
c = ctypes.c_void_p()
st = lib.larder_open(sys.argv[2].encode(), opts, ctypes.byref(c))
if st != 0:
    sys.exit("open: %d" % st)
key = sys.argv[3].encode()
st = lib.larder_set(c, key, len(key), b"held", 4, ctypes.c_uint64(0))
sys.exit("set returned %d: the crash point did not stop it" % st)
"""


class TestWaiting(CacheTestCase):
    """Another process is stopped holding a key's shard lock. The worker (one only, so
    that every request meets the same event loop) never waits for it on its thread:
    in the content phase each method sleeps and retries until the lock timeout, while
    the worker serves other requests; in set_by_lua each answers "busy" at once."""

    workers = 1
    lock_timeout_ms = 300

    @classmethod
    def setUpClass(cls):
        cls.nginx = Nginx(workers=cls.workers)

    def hold_lock(self, cache, key):
        library = os.environ.get("LARDER_LIBRARY")
        if not library:
            self.skipTest("LARDER_LIBRARY (a build with crash points) is not set")
        env = dict(os.environ, LARDER_CRASH_AT="set.mid_value", LARDER_CRASH_ACTION="stop")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, library, cache, key],
            env=env,
            stderr=subprocess.PIPE,
        )

        def end_holder():
            holder.kill()
            holder.wait(timeout=10)
            holder.stderr.close()

        self.addCleanup(end_holder)
        wait_until(
            lambda: process_state(holder.pid) == "T" or holder.poll() is not None,
            20,
            "the holder to stop inside its write",
        )
        if holder.poll() is not None:
            self.fail("the holder exited: %s" % holder.stderr.read())
        return holder

    def params(self, cache, key):
        return {
            "cache": cache,
            "key": key,
            "lock_timeout_ms": self.lock_timeout_ms,
            "fill_timeout_ms": self.lock_timeout_ms,
        }

    METHODS = {
        "get",
        "get_stale",
        "set",
        "add",
        "replace",
        "delete",
        "incr",
        "incr_float",
        "ttl",
        "expire",
        "flush_all",
        "get_or_fill",
    }

    def test_content_phase_sleeps_until_the_timeout_and_the_worker_serves_others(self):
        cache, key = self.new_cache("wait"), "held-key"
        params = self.params(cache, key)
        first = self.nginx.request("/t/pid", params)  # creates the cache
        holder = self.hold_lock(cache, key)
        with ThreadPoolExecutor(max_workers=1) as pool:
            blocked = pool.submit(self.nginx.request, "/t/blocked", params, 60)
            # The same worker answers while /t/blocked is inside its waits.
            seen = wait_until(
                lambda: (lambda a: a if a["waiting"] else None)(
                    self.nginx.request("/t/pid", params)
                ),
                20,
                "/t/blocked to begin",
            )
            self.assertFalse(blocked.done(), "the blocked request ended before the check")
            self.assertEqual(seen["pid"], first["pid"])
            ping = self.nginx.request("/t/pid", {})
            self.assertFalse(blocked.done(), "the blocked request ended before the check")
            self.assertEqual(ping["pid"], first["pid"])
            answer = blocked.result(timeout=60)
        self.assertEqual(answer["pid"], first["pid"])
        self.assertEqual(set(answer["errors"]), self.METHODS)
        self.assertEqual(answer["errors"], {m: "timeout" for m in self.METHODS}, answer)
        print(
            "\n%d methods, each sleeping until its %d ms lock timeout: %.2f s in all, "
            "the worker answering meanwhile"
            % (len(self.METHODS), self.lock_timeout_ms, answer["seconds"])
        )
        # Once the holder is gone (killed: its write is repaired), the key works again.
        holder.kill()
        holder.wait(timeout=10)
        after = self.nginx.request("/t/blocked", params, timeout=60)["errors"]
        self.assertEqual({m for m, e in after.items() if e in ("timeout", "busy")}, set(), after)

    def test_set_phase_answers_busy_at_once(self):
        cache, key = self.new_cache("busy"), "held-key"
        params = self.params(cache, key)
        self.nginx.request("/t/pid", params)
        self.hold_lock(cache, key)
        answer = self.nginx.request("/t/busy", params)
        self.assertEqual(answer["phase"], "set")
        self.assertEqual(answer["errors"], {m: "busy" for m in self.METHODS}, answer)


if __name__ == "__main__":
    # A SIGTERM (a CI timeout, a Ctrl-C'd wrapper) unwinds like an exception, so that
    # the finally blocks and tearDowns stop nginx and remove the cache files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    unittest.main(verbosity=2)
