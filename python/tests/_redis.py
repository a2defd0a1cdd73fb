"""Test helpers for the near-cache and ``larder listen`` tests: a private redis-server
per test (on a unix socket in the test's temp dir, no persistence), a minimal RESP
client to play "another client", and ``larder listen`` (the wheel's console script) as
a child whose stderr lines arrive on a queue. Every wait has a deadline; everything
started is stopped in a ``finally``."""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sysconfig
import threading
import time

# Generous: a loaded CI machine with several suites at once.
DEADLINE = 30.0


def larder_command():
    """The ``larder`` console script the wheel installed beside this interpreter."""
    path = os.path.join(sysconfig.get_path("scripts"), "larder")
    assert os.access(path, os.X_OK), f"the wheel installed no larder command at {path}"
    return path


class RespError(Exception):
    pass


class Client:
    """A RESP2 client over one unix-socket connection: another client of Redis."""

    def __init__(self, sock_path, timeout=DEADLINE):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(sock_path)
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""

    def close(self):
        self.sock.close()

    def __call__(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else bytes(a)
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RespError(f"unexpected reply {line!r}")


class RedisServer:
    """A redis-server of the test's own, on a unix socket under ``tmp``."""

    def __init__(self, tmp):
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (python/run-tests.sh installs it)"
        self.socket = os.path.join(str(tmp), "redis.sock")
        self.url = f"unix://{self.socket}"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--unixsocket",
                self.socket,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + DEADLINE
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                c = Client(self.socket, timeout=1.0)
                try:
                    if c("PING") == "PONG":
                        return
                finally:
                    c.close()
            except (OSError, RespError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer within {DEADLINE} s")
            time.sleep(0.01)  # a poll interval, not synchronisation

    def client(self):
        return Client(self.socket)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


class Listening:
    """A running ``larder listen``; its stderr lines arrive on a queue as it writes
    them. ``stop()`` kills it if it still runs."""

    def __init__(self, cache_path, url, prefixes, *extra):
        args = [larder_command(), "listen", cache_path, "--redis", url]
        for p in prefixes:
            args += ["--prefix", p]
        self.proc = subprocess.Popen(
            [*args, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        self.seen = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text, deadline=DEADLINE):
        """The first line (from now) that holds ``text``; fails, with every line
        seen, if none comes within ``deadline`` seconds or the listener ends."""
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0))
            except queue.Empty:
                raise AssertionError(
                    f"larder listen printed no line with {text!r} in {deadline} s: " f"{self.seen}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"larder listen ended ({self.proc.wait(timeout=DEADLINE)}) before "
                    f"printing {text!r}: {self.seen}"
                )
            self.seen.append(line)
            if text in line:
                return line

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self):
        return self.proc.wait(timeout=DEADLINE)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self._reader.join(timeout=DEADLINE)
        self.proc.stderr.close()
