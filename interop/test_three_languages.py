"""One cache file used at once by this Python process, php-fpm workers and nginx workers.

interop/run-tests.sh starts the servers (php/tests/fpm.sh, lua/t/nginx.sh) and runs this
file with LARDER_INTEROP_DIR naming the directory that holds them:

- php/        a php-fpm pool serving php/tests/www/op.php;
- php-victim/ a pool of one worker whose library stops the worker (SIGSTOP) inside its
              first write, in the middle of the value, holding the shard's lock;
- nginx/      nginx with resty.larder behind /op (raw mode: values byte for byte);
- nginx-victim/ the same, its workers stopping inside their first write.

Every test uses a cache of its own; the three languages open it with the same
creation options and share every rule of the file, which lives in the core alone.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import larder
import pytest

ROOT = Path(__file__).resolve().parent.parent
DIR = Path(os.environ["LARDER_INTEROP_DIR"])
CAPACITY = 8 << 20
DEADLINE = 10.0  # seconds: the longest any step may take before the test fails

sys.path.insert(0, str(ROOT / "php" / "tests"))
import fcgi  # noqa: E402  (php/tests/fcgi.py, the suite's FastCGI client)

_names = itertools.count()


@pytest.fixture
def name():
    """A cache name of this test's own; the file is removed however the test ends."""
    n = f"interop-{os.getpid()}-{next(_names)}"
    yield n
    larder.Cache.unlink(n)


@pytest.fixture
def cache(name):
    c = larder.Cache(name, capacity=CAPACITY)
    yield c
    c.close()


def php(server: str, cache: str, op: str, **query) -> dict:
    """One request to op.php in the php-fpm pool under DIR/server."""
    qs = urllib.parse.urlencode({"cache": cache, "op": op, "capacity": CAPACITY, **query})
    response = fcgi.request(
        str(DIR / server / "fpm.sock"),
        str(ROOT / "php" / "tests" / "www" / "op.php"),
        qs,
        timeout=DEADLINE,
    )
    assert response.status == 200, response
    return json.loads(response.body)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def nginx(server: str, cache: str, op: str, **query) -> dict:
    """One request to /op of the nginx under DIR/server."""
    qs = urllib.parse.urlencode({"cache": cache, "op": op, "capacity": CAPACITY, **query})
    conn = _UnixHTTPConnection(str(DIR / server / "nginx.sock"), DEADLINE)
    try:
        conn.request("GET", f"/op?{qs}")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, (response.status, body)
    return json.loads(body)


def php_value(cache: str, key: str):
    r = php("php", cache, "fetch", key=key)
    assert r["ok"], r
    return r["value"] if r["found"] else None


def nginx_value(cache: str, key: str):
    r = nginx("nginx", cache, "get", key=key)
    assert r["ok"], r
    return r["value"] if r["found"] else None


def py_value(c: larder.Cache, key: str):
    v = c.get(key)
    return None if v is None else bytes(v).decode()


def worker_pids(kind: str, server: str) -> list[int]:
    """The worker pids of a server, through its script's own function."""
    script, fn = {
        "php": ("php/tests/fpm.sh", "fpm_worker_pids"),
        "nginx": ("lua/t/nginx.sh", "nginx_worker_pids"),
    }[kind]
    out = subprocess.run(
        ["bash", "-c", f'source "$1"; {fn} "$2"', "-", str(ROOT / script), str(DIR / server)],
        check=True,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    ).stdout
    return [int(p) for p in out.split()]


def state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_until(what: str, predicate, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.005)


def stopped_one_of(pids_of) -> int:
    """The pid, among those pids_of() lists, that stopped itself at its crash point."""
    return wait_until(
        "a worker stopped at its crash point",
        lambda: next((p for p in pids_of() if state(p) == "T"), None),
    )


def kill_and_reap(pid: int):
    os.kill(pid, signal.SIGKILL)
    wait_until(f"{pid} gone", lambda: state(pid) in (None, "Z"))


class Background:
    """A request sent on a thread of its own: it never returns if its worker is stopped
    and then killed (the server answers with an error or closes), so only its end is
    awaited, with a deadline."""

    def __init__(self, fn, *args, **kwargs):
        self.error = None

        def run():
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 (the worker was killed on purpose)
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self):
        self.thread.join(DEADLINE + 1)
        assert not self.thread.is_alive(), "a request to a killed worker never ended"


def test_a_value_set_by_one_is_read_by_the_others(name, cache):
    cache.set("from:python", b"py-value")
    assert php_value(name, "from:python") == "py-value"
    assert nginx_value(name, "from:python") == "py-value"

    assert php("php", name, "store", key="from:php", value="php-value")["ok"]
    assert py_value(cache, "from:php") == "php-value"
    assert nginx_value(name, "from:php") == "php-value"

    assert nginx("nginx", name, "set", key="from:nginx", value="nginx-value")["ok"]
    assert py_value(cache, "from:nginx") == "nginx-value"
    assert php_value(name, "from:nginx") == "nginx-value"

    # One counter, counted by all three.
    assert cache.incr("hits") == 1
    assert php("php", name, "inc", key="hits")["value"] in (2, "2")
    assert nginx("nginx", name, "incr", key="hits", value="1")["value"] in (3, "3")
    assert cache.incr("hits") == 4


def test_a_revocation_by_one_is_seen_by_all(name, cache):
    # A fill that began before a revocation never stores its (stale) value.
    ticket = cache.ticket("token:abc")
    assert php("php", name, "delete", key="token:abc")["ok"]
    assert not cache.set_with_ticket("token:abc", b"stale claims", ticket)
    assert py_value(cache, "token:abc") is None
    assert php_value(name, "token:abc") is None
    assert nginx_value(name, "token:abc") is None

    ticket = cache.ticket("token:def")
    assert nginx("nginx", name, "delete", key="token:def")["ok"]
    assert not cache.set_with_ticket("token:def", b"stale claims", ticket)
    assert php_value(name, "token:def") is None

    # A stored value revoked by one language is gone for the other two.
    assert php("php", name, "store", key="token:ghi", value="claims")["ok"]
    assert nginx_value(name, "token:ghi") == "claims"
    assert nginx("nginx", name, "delete", key="token:ghi")["ok"]
    assert py_value(cache, "token:ghi") is None
    assert php_value(name, "token:ghi") is None

    cache.set("token:jkl", b"claims")
    assert cache.delete("token:jkl")
    assert php_value(name, "token:jkl") is None
    assert nginx_value(name, "token:jkl") is None


KEY, OLD, NEW = "token:abc", "old", "new" * 100


def check_repaired(name: str, cache: larder.Cache, before: dict):
    """After a writer died holding KEY's shard lock halfway through NEW: every language
    reads OLD or NEW (never a torn value), writes go on, the lock was recovered and the
    file verifies."""
    assert py_value(cache, KEY) in (OLD, NEW)
    assert php_value(name, KEY) in (OLD, NEW)
    assert nginx_value(name, KEY) in (OLD, NEW)
    assert php("php", name, "store", key=KEY, value="after-php")["ok"]
    assert nginx_value(name, KEY) == "after-php"
    assert nginx("nginx", name, "set", key=KEY, value="after-nginx")["ok"]
    assert py_value(cache, KEY) == "after-nginx"
    assert cache.stats()["recoveries"] > before["recoveries"]
    assert cache.verify() == []


@pytest.mark.parametrize(
    "server, op", [("php", "store"), ("nginx", "set")], ids=["php-fpm", "nginx"]
)
def test_a_server_worker_killed_mid_write_is_repaired_by_the_others(name, cache, server, op):
    cache.set(KEY, OLD.encode())
    before = cache.stats()
    send = {"php": php, "nginx": nginx}[server]
    request = Background(send, f"{server}-victim", name, op, key=KEY, value=NEW)
    kill_and_reap(stopped_one_of(lambda: worker_pids(server, f"{server}-victim")))
    request.join()
    check_repaired(name, cache, before)


def test_a_python_process_killed_mid_write_is_repaired_by_the_others(name, cache):
    cache.set(KEY, OLD.encode())
    before = cache.stats()
    env = dict(os.environ, LARDER_CRASH_AT="set.mid_value", LARDER_CRASH_ACTION="stop")
    code = (
        "import larder, sys; "
        "larder.Cache(sys.argv[1], capacity=int(sys.argv[2])).set(sys.argv[3], sys.argv[4].encode())"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, name, str(CAPACITY), KEY, NEW], env=env)
    try:
        wait_until("the writer stopped at its crash point", lambda: state(proc.pid) == "T")
    finally:
        proc.kill()
        proc.wait(DEADLINE)
    check_repaired(name, cache, before)
