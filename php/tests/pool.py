"""php-fpm pools for the Python-driven suites (test_fpm.py, kill_compare.py, bench).

A Pool is one private php-fpm master started and stopped by fpm.sh (the one place that
knows how), talked to over its unix socket with fcgi.py.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import fcgi

HERE = os.path.dirname(os.path.abspath(__file__))
WWW = os.path.join(HERE, "www")
FPM_SH = os.path.join(HERE, "fpm.sh")


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
        try:
            self._bash("fpm_start", self.dir, str(workers), *pairs)
        except Exception:
            shutil.rmtree(self.dir, ignore_errors=True)
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
        self._executor.shutdown(wait=False, cancel_futures=True)
        try:
            self._bash("fpm_stop", self.dir)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def raw(self, script, query, timeout=10.0):
        return fcgi.request(self.socket, os.path.join(WWW, script), query, timeout)

    def call(self, script, timeout=10.0, **query):
        """One request; the decoded JSON answer (ok false included)."""
        r = self.raw(script, urllib.parse.urlencode(query), timeout)
        try:
            return json.loads(r.body)
        except ValueError as e:
            raise AssertionError(f"{script} {query}: not JSON: {r.body[:500]!r} {r.stderr[:500]!r}") from e

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
