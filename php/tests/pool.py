"""php-fpm pools for the Python-driven suites (test_fpm.py, kill_compare.py, bench).

A Pool is one private php-fpm master started and stopped by fpm.sh (the one place that
knows how), talked to over its unix socket with fcgi.py. php-fpm daemonizes into a
session of its own, so no signal to the caller reaches it: a script's main runs under
run_main(), which stops every pool still running however the script ends (SIGTERM,
SIGINT and SIGHUP included).
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

import fcgi

HERE = os.path.dirname(os.path.abspath(__file__))
WWW = os.path.join(HERE, "www")
FPM_SH = os.path.join(HERE, "fpm.sh")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_LIVE = []  # the pools started (or starting) and not yet stopped


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM, SIGINT or SIGHUP under run_main(). A
    KeyboardInterrupt, so unittest passes it on (a SystemExit would be a test's error)."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


def stop_all():
    """Stops every pool still running (a failure is reported, then the next one stops)."""
    for pool in list(_LIVE):
        try:
            pool.stop()
        except Exception as e:  # noqa: BLE001 - the other pools must stop too
            print(f"stopping the pool in {pool.dir}: {e}", file=sys.stderr)


def run_main(main, cleanup=None):
    """Runs main(), then stops every pool and runs cleanup(), however main ends. SIGTERM,
    SIGINT and SIGHUP interrupt it (finally blocks run) and exit with 128 + the signal's
    number; once one arrived, or main ended, they are ignored so the cleanup completes
    (each of its waits has a deadline)."""

    def interrupt(signum, frame):
        ignore_signals()
        raise Interrupted(signum)

    def ignore_signals():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)

    for s in SIGNALS:
        signal.signal(s, interrupt)
    status = None
    try:
        main()
    except Interrupted as e:
        print(f"\ninterrupted by signal {e.signum}: stopping the pools", file=sys.stderr)
        status = 128 + e.signum
    finally:
        ignore_signals()
        stop_all()
        if cleanup is not None:
            cleanup()
    if status is not None:
        sys.exit(status)


def wait_until(condition, timeout, what):
    """Polls condition() until it is true; raises AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)  # poll interval; the deadline bounds the wait


def process_state(pid):
    """The state letter of a process (R, S, T, Z, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


class Pool:
    def __init__(self, workers, env=None, name="pool"):
        self.dir = tempfile.mkdtemp(prefix=f"larder-php-{name}-")
        self.socket = os.path.join(self.dir, "fpm.sock")
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=32)
        pairs = [f"{k}={v}" for k, v in (env or {}).items()]
        _LIVE.append(self)
        try:
            self._bash("fpm_start", self.dir, str(workers), *pairs)
        except BaseException:
            # The master may have daemonized before the failure (a timeout, a signal):
            # stop it, then remove its directory.
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def _bash(self, function, *args):
        script = f'source "{FPM_SH}" && {function} "$@"'
        r = subprocess.run(
            ["bash", "-c", script, "fpm.sh", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"{function} {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r.stdout

    def worker_pids(self):
        return [int(p) for p in self._bash("fpm_worker_pids", self.dir).split()]

    def stopped_workers(self):
        return [p for p in self.worker_pids() if process_state(p) == "T"]

    def stop(self):
        """Stops the master and its workers, then removes the directory. Stopping a
        stopped pool does nothing; one interrupted by a signal stays listed for stop_all."""
        if self not in _LIVE:
            return
        self._executor.shutdown(wait=False, cancel_futures=True)
        ended = False
        try:
            self._bash("fpm_stop", self.dir)
            ended = True
        except Exception:
            ended = True  # fpm_stop ran and failed: report it, nothing more to try
            raise
        finally:
            if ended:
                _LIVE.remove(self)
                shutil.rmtree(self.dir, ignore_errors=True)

    def raw(self, script, query, timeout=10.0):
        return fcgi.request(self.socket, os.path.join(WWW, script), query, timeout)

    def call(self, script, timeout=10.0, **query):
        """One request; the decoded JSON answer (ok false included)."""
        r = self.raw(script, urllib.parse.urlencode(query), timeout)
        try:
            return json.loads(r.body)
        except ValueError as e:
            raise AssertionError(
                f"{script} {query}: not JSON: {r.body[:500]!r} {r.stderr[:500]!r}"
            ) from e

    def submit(self, script, timeout=10.0, **query):
        """The same request in the background: a Future of its answer."""
        return self._executor.submit(self.call, script, timeout, **query)

    def active_processes(self):
        body = self.raw("/fpm-status", "", 5.0).body.decode()
        for line in body.splitlines():
            if line.startswith("active processes:"):
                return int(line.split(":")[1])
        raise AssertionError(f"no active processes in {body!r}")


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
