"""Larder\\Cache under a real php-fpm (Debian's php8.2-fpm), driven over FastCGI.

Two pools share each cache: a healthy one, and a victim one whose workers run the
crash-points build with LARDER_CRASH_AT=set.mid_value and LARDER_CRASH_ACTION=stop, so a
store stops its worker in the middle of writing the value, holding the shard lock; the
test then SIGKILLs it. Every request has a deadline: the pool never hangs.

    LARDER_LIBRARY=target/crash-points/release/liblarder.so python3 php/tests/test_fpm.py
"""

import contextlib
import os
import shutil
import sys
import tempfile
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pool import Pool, kill, process_state, run_main, wait_until  # noqa: E402

DEADLINE = 10.0  # seconds any single request may take before the test fails
HEALTHY_WORKERS = 6
COUNTER = [0]
NAMES = []  # the caches and temporary directories of the tests, removed by tearDown or
TMPS = []  # at exit (a signal skips tearDown)


def cache_name():
    COUNTER[0] += 1
    name = f"php-fpm-test-{os.getpid()}-{COUNTER[0]}"
    NAMES.append(name)
    return name


def remove_test_files():
    while NAMES:
        name = NAMES.pop()
        for entry in os.listdir("/dev/shm"):
            if entry.startswith(name + ".larder"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join("/dev/shm", entry))
    while TMPS:
        shutil.rmtree(TMPS.pop(), ignore_errors=True)


class FpmSuite(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.healthy = Pool(HEALTHY_WORKERS, name="healthy")
        try:
            cls.victim = Pool(
                2,
                {"LARDER_CRASH_AT": "set.mid_value", "LARDER_CRASH_ACTION": "stop"},
                name="victim",
            )
        except Exception:
            cls.healthy.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.victim.stop()
        finally:
            cls.healthy.stop()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="larder-php-test-")
        TMPS.append(self.tmp)

    def tearDown(self):
        remove_test_files()

    def new_cache(self, **options):
        return dict(cache=cache_name(), capacity=str(4 << 20), **options)

    def op(self, pool, cache, **query):
        return pool.call("op.php", DEADLINE, **cache, **query)

    def test_worker_killed_inside_a_store_never_stops_the_others(self):
        # One shard: the stopped worker's lock is on every key's path.
        cache = self.new_cache(shards="1")
        values = {f"k{i}": f"value {i}" for i in range(10)}
        for key, value in values.items():
            self.assertTrue(self.op(self.healthy, cache, op="store", key=key, value=value)["ok"])
        for round_ in range(3):
            with self.subTest(round=round_):
                victim = self.victim.submit(
                    "op.php", DEADLINE, **cache, op="store", key="victim", value="x" * 3000
                )
                stopped = wait_until(
                    self.victim.stopped_workers, DEADLINE, "a victim worker stops inside its store"
                )
                # While it is stopped (alive, holding the lock) every request answers within
                # the deadline: a value, or a TimeoutException after lock_timeout_ms.
                during = [
                    self.op(self.healthy, cache, op="fetch", key="k1"),
                    self.op(self.healthy, cache, op="store", key="k2", value=values["k2"]),
                ]
                for answer in during:
                    self.assertTrue(answer["ok"] or answer["status"] == "LARDER_E_TIMEOUT", answer)
                for pid in stopped:
                    kill(pid)
                wait_until(
                    lambda: all(process_state(p) in (None, "Z") for p in stopped),
                    DEADLINE,
                    "the victim dies",
                )
                # The killed request's connection breaks; that is all it gets.
                with self.assertRaises(Exception):
                    victim.result(DEADLINE)
                # Right after the kill: the next writer repairs the shard and everyone serves.
                self.assertTrue(
                    self.op(self.healthy, cache, op="store", key="after", value=str(round_))["ok"]
                )
                for key, value in values.items():
                    answer = self.op(self.healthy, cache, op="fetch", key=key)
                    self.assertEqual(
                        (answer["ok"], answer["found"], answer.get("value")),
                        (True, True, value),
                        key,
                    )
                answer = self.op(self.healthy, cache, op="fetch", key="victim")
                self.assertEqual(
                    (answer["ok"], answer["found"]),
                    (True, False),
                    "the half-written entry was dropped",
                )
                wait_until(
                    lambda: len(self.victim.worker_pids()) == 2,
                    DEADLINE,
                    "the victim pool respawns its worker",
                )
        stats = self.op(self.healthy, cache, op="stats")["stats"]
        self.assertGreaterEqual(stats["recoveries"], 3, stats)

    def delete_while_held(self, cache, op, what):
        """Runs lab.php's ``op`` on "token" in a healthy worker, which stops once it has
        begun (``what``) until released; deletes "token" from another worker meanwhile,
        releases it, and returns its answer."""
        started, gate = os.path.join(self.tmp, "started"), os.path.join(self.tmp, "gate")
        open(gate, "w").close()
        held = self.healthy.submit(
            "lab.php",
            DEADLINE,
            **cache,
            op=op,
            key="token",
            value="claims",
            started=started,
            gate=gate,
        )
        wait_until(lambda: os.path.exists(started), DEADLINE, what)
        self.assertTrue(self.op(self.healthy, cache, op="delete", key="token")["ok"])
        os.unlink(gate)
        return held.result(DEADLINE)

    def test_delete_during_entry_is_never_undone(self):
        cache = self.new_cache()
        answer = self.delete_while_held(cache, "hold_entry", "the generator starts")
        self.assertEqual(
            (answer["ok"], answer["value"], answer["generated"]), (True, "claims", True), answer
        )
        answer = self.op(self.healthy, cache, op="fetch", key="token")
        self.assertEqual((answer["ok"], answer["found"]), (True, False), "the revocation stands")
        self.assertGreaterEqual(
            self.op(self.healthy, cache, op="stats")["stats"]["fills_fenced"], 1
        )

    def test_delete_before_a_ticket_store_is_never_undone(self):
        cache = self.new_cache()
        answer = self.delete_while_held(cache, "hold_ticket", "the ticket is taken")
        self.assertEqual(answer["stored"], False)
        self.assertFalse(self.op(self.healthy, cache, op="fetch", key="token")["found"])

    def test_entry_runs_its_generator_once_while_the_others_wait(self):
        # The waiters wait as long as the test may poll, so load cannot time them out.
        cache = self.new_cache(fill_timeout_ms=str(int(DEADLINE * 1000)))
        started, gate = os.path.join(self.tmp, "started"), os.path.join(self.tmp, "gate")
        open(gate, "w").close()
        n = HEALTHY_WORKERS - 2
        futures = [
            self.healthy.submit(
                "lab.php",
                DEADLINE,
                **cache,
                op="hold_entry",
                key="k",
                value="computed",
                started=started,
                gate=gate,
            )
            for _ in range(n)
        ]
        wait_until(lambda: os.path.exists(started), DEADLINE, "one generator starts")
        # Every request is inside a worker (the status request is one more active process).
        wait_until(
            lambda: self.healthy.active_processes() >= n + 1, DEADLINE, f"{n} requests in workers"
        )
        os.unlink(gate)
        answers = [f.result(DEADLINE) for f in futures]
        self.assertEqual({a["value"] for a in answers}, {"computed"}, answers)
        self.assertEqual(sum(a["generated"] for a in answers), 1, answers)
        self.assertEqual(len({a["pid"] for a in answers}), n, "each request had its own worker")
        self.assertEqual(
            self.op(self.healthy, cache, op="inc", key="runs:k", value="0")["value"], "1"
        )

    def test_filler_killed_in_its_generator_hands_the_key_over(self):
        # The waiter waits as long as the test may poll, so load cannot time it out.
        cache = self.new_cache(fill_timeout_ms=str(int(DEADLINE * 1000)))
        before = set(self.healthy.stopped_workers())
        self.healthy.submit("lab.php", DEADLINE, **cache, op="stop_entry", key="k", value="first")
        filler = wait_until(
            lambda: set(self.healthy.stopped_workers()) - before, DEADLINE, "the filler stops"
        )
        waiter = self.healthy.submit(
            "op.php", DEADLINE, **cache, op="entry", key="k", value="second"
        )
        wait_until(
            lambda: self.healthy.active_processes() >= 3, DEADLINE, "the waiter is in a worker"
        )
        self.assertFalse(waiter.done(), "the waiter waits for the fill")
        for pid in filler:
            kill(pid)
        answer = waiter.result(DEADLINE)
        self.assertEqual(
            (answer["ok"], answer["value"], answer["generated"]), (True, "second", True), answer
        )
        self.assertGreaterEqual(
            self.op(self.healthy, cache, op="stats")["stats"]["fill_handovers"], 1
        )
        wait_until(
            lambda: len(self.healthy.worker_pids()) == HEALTHY_WORKERS,
            DEADLINE,
            "the pool respawns",
        )

    def test_fatal_error_in_a_generator_hands_the_key_over(self):
        # The fatal error skips finally blocks; unless its shutdown handler abandoned the fill,
        # the worker (alive) keeps holding it, and each entry() below waits fill_timeout_ms
        # and answers ok false with LARDER_E_TIMEOUT.
        cache = self.new_cache()
        query = urllib.parse.urlencode(dict(cache, op="fatal_entry", key="k"))
        r = self.healthy.raw("lab.php", query, DEADLINE)
        self.assertEqual(r.status, 500, r)
        self.assertIn(b"Allowed memory size", r.stderr)
        for _ in range(HEALTHY_WORKERS):
            answer = self.op(self.healthy, cache, op="entry", key="k", value="v")
            self.assertEqual((answer["ok"], answer["value"]), (True, "v"), answer)

    def test_op_php_interface(self):
        cache = self.new_cache()
        self.assertEqual(self.op(self.healthy, cache, op="fetch", key="a")["found"], False)
        self.assertEqual(
            self.op(self.healthy, cache, op="store", key="a", value="1", ttl="60")["stored"], True
        )
        self.assertEqual(
            self.op(self.healthy, cache, op="add", key="a", value="2")["stored"], False
        )
        self.assertEqual(self.op(self.healthy, cache, op="fetch", key="a")["value"], "1")
        self.assertEqual(self.op(self.healthy, cache, op="inc", key="n", value="5")["value"], "5")
        self.assertEqual(
            self.op(self.healthy, cache, op="entry", key="e", value="g")["generated"], True
        )
        self.assertEqual(self.op(self.healthy, cache, op="delete", key="a")["deleted"], True)
        self.assertEqual(self.op(self.healthy, cache, op="stats")["stats"]["entries"], 2)
        bad = self.op(self.healthy, cache, op="fetch", key="")
        self.assertEqual((bad["ok"], bad["error"]), (False, "Larder\\InvalidArgumentException"))
        big = self.op(self.healthy, cache, op="store", key="k" * 300, value="v")
        self.assertEqual((big["ok"], big["status"]), (False, "LARDER_E_TOO_LARGE"))

    def test_zz_every_worker_still_answers(self):
        # Last (unittest runs tests by name): after the kills above, the whole pool serves.
        cache = self.new_cache()
        futures = [
            self.healthy.submit("op.php", DEADLINE, **cache, op="store", key=f"k{i}", value="v")
            for i in range(HEALTHY_WORKERS * 3)
        ]
        self.assertTrue(all(f.result(DEADLINE)["ok"] for f in futures))


if __name__ == "__main__":
    run_main(lambda: unittest.main(verbosity=2), cleanup=remove_test_files)
