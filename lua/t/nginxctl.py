"""Starts and stops nginx through lua/t/nginx.sh and talks to it over its unix socket
(shared by test_nginx.py and bench.sh)."""

import glob
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
NGINX_SH = os.path.join(HERE, "nginx.sh")
_names = itertools.count()


def unique_name(what):
    """A cache name no other test or run uses at the same time."""
    return "lt-%s-%d-%d" % (what, os.getpid(), next(_names))


def remove_cache_files(name):
    for path in glob.glob("/dev/shm/%s.*" % glob.escape(name)) + glob.glob(
        "/dev/shm/%s" % glob.escape(name)
    ):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Nginx:
    """An nginx of lua/t/nginx.sh in a temporary directory, with the test locations."""

    def __init__(self, env=(), test_locations=True, workers=2):
        self.dir = tempfile.mkdtemp(prefix="larder-nginx-")
        self.workers = workers
        if test_locations:
            os.makedirs(os.path.join(self.dir, "conf.d", "server"))
            os.makedirs(os.path.join(self.dir, "conf.d", "http"))
            shutil.copy(
                os.path.join(HERE, "tests.conf"), os.path.join(self.dir, "conf.d", "server")
            )
            shutil.copy(
                os.path.join(HERE, "tests-http.conf"), os.path.join(self.dir, "conf.d", "http")
            )
        try:
            self._sh("nginx_start", *["%s=%s" % kv for kv in env])
        except BaseException:
            # nginx may have daemonized before the start failed (or was interrupted):
            # close stops it whenever its pid file is there.
            self.close()
            raise

    def _sh(self, fn, *args):
        out = subprocess.run(
            ["bash", "-c", 'source "$0" && %s "$@"' % fn, NGINX_SH, self.dir, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, NGINX_WORKERS=str(self.workers)),
        )
        if out.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (fn, out.stdout, out.stderr))
        return out.stdout

    @property
    def socket_path(self):
        return os.path.join(self.dir, "nginx.sock")

    def master_pid(self):
        with open(os.path.join(self.dir, "nginx.pid")) as f:
            return int(f.read())

    def worker_pids(self):
        return [int(p) for p in self._sh("nginx_worker_pids").split()]

    def request(self, path, params=None, timeout=10.0, body=None):
        """GET (or POST with a body) path?params; returns the decoded JSON answer."""
        if params:
            path += "?" + urllib.parse.urlencode(params)
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            conn.request("POST" if body is not None else "GET", path, body=body)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError("%s: HTTP %d: %r" % (path, resp.status, data[:300]))
        return json.loads(data)

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def close(self):
        try:
            if os.path.exists(os.path.join(self.dir, "nginx.pid")):
                self._sh("nginx_stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def process_state(pid):
    """The one-letter state of a process (R, S, T, Z...), or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def wait_until(cond, seconds, what):
    deadline = time.monotonic() + seconds
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (seconds, what))
        time.sleep(0.02)


def kill_stopped_workers(nginx):
    """SIGKILLs every worker stopped by a crash point; returns how many."""
    killed = 0
    for pid in nginx.worker_pids():
        if process_state(pid) == "T":
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed
