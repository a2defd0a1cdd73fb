#!/usr/bin/env python3
"""A small FastCGI client (stdlib only) for driving php-fpm over its unix socket.

As a command:

    python3 php/tests/fcgi.py [--timeout SECONDS] SOCKET SCRIPT_FILENAME QUERY_STRING

prints the response body to standard output. Exit status: 0 for a 2xx response, 1 for
another status (the body is printed all the same, and the status line on stderr), 2 when
the socket cannot be reached or the connection breaks, 3 when no complete response came
within the timeout (default 10 s).

As a module: request(socket_path, script_filename, query, timeout) -> Response.
"""

import argparse
import socket
import struct
import sys
import time

FCGI_VERSION = 1
FCGI_BEGIN_REQUEST = 1
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_RESPONDER = 1
REQUEST_ID = 1

EXIT_OK = 0
EXIT_STATUS = 1
EXIT_CONNECTION = 2
EXIT_TIMEOUT = 3


class FcgiError(Exception):
    """The socket could not be reached, or the connection broke mid-response."""


class FcgiTimeout(FcgiError):
    """No complete response within the deadline."""


class Response:
    def __init__(self, status, headers, body, stderr):
        self.status = status
        self.headers = headers
        self.body = body
        self.stderr = stderr

    def __repr__(self):
        return f"Response(status={self.status}, body={self.body[:200]!r})"


def _record(kind, content):
    """One record, or several when content is over a record's 65535 bytes."""
    out = b""
    for start in range(0, max(len(content), 1), 65535):
        part = content[start : start + 65535]
        out += struct.pack("!BBHHBx", FCGI_VERSION, kind, REQUEST_ID, len(part), 0) + part
    return out


def _length(n):
    return struct.pack("!B", n) if n < 128 else struct.pack("!I", n | 0x80000000)


def _params(params):
    out = b""
    for name, value in params.items():
        n, v = name.encode(), value.encode()
        out += _length(len(n)) + _length(len(v)) + n + v
    return out


def request(socket_path, script_filename, query="", timeout=10.0):
    """Sends one GET request; returns a Response or raises FcgiError/FcgiTimeout."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except socket.timeout as e:
            raise FcgiTimeout(f"connect {socket_path}: timed out after {timeout} s") from e
        except OSError as e:
            raise FcgiError(f"connect {socket_path}: {e}") from e
        script_name = "/" + script_filename.rsplit("/", 1)[-1]
        what = f"{script_name}?{query[:200]}"
        params = {
            "GATEWAY_INTERFACE": "FastCGI/1.0",
            "REQUEST_METHOD": "GET",
            "SCRIPT_FILENAME": script_filename,
            "SCRIPT_NAME": script_name,
            "REQUEST_URI": script_name + ("?" + query if query else ""),
            "DOCUMENT_URI": script_name,
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "fcgi.py",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": "0",
        }
        payload = (
            _record(FCGI_BEGIN_REQUEST, struct.pack("!HB5x", FCGI_RESPONDER, 0))
            + _record(FCGI_PARAMS, _params(params))
            + _record(FCGI_PARAMS, b"")
            + _record(FCGI_STDIN, b"")
        )
        try:
            sock.sendall(payload)
        except OSError as e:
            raise FcgiError(f"send to {socket_path}: {e}") from e
        stdout, stderr, buf = b"", b"", b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FcgiTimeout(f"{what}: no response within {timeout} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout as e:
                raise FcgiTimeout(f"{what}: no response within {timeout} s") from e
            except OSError as e:
                raise FcgiError(f"{what}: {e}") from e
            if not chunk:
                raise FcgiError(f"{what}: connection closed before the end of the response")
            buf += chunk
            while len(buf) >= 8:
                _, kind, _, clen, plen = struct.unpack("!BBHHB", buf[:7])
                if len(buf) < 8 + clen + plen:
                    break
                content = buf[8 : 8 + clen]
                buf = buf[8 + clen + plen :]
                if kind == FCGI_STDOUT:
                    stdout += content
                elif kind == FCGI_STDERR:
                    stderr += content
                elif kind == FCGI_END_REQUEST:
                    return _response(stdout, stderr)
    finally:
        sock.close()


def _response(stdout, stderr):
    head, sep, body = stdout.partition(b"\r\n\r\n")
    if not sep:
        head, body = b"", stdout
    headers = {}
    status = 200
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if not name:
            continue
        headers[name.strip().lower()] = value.strip()
        if name.strip().lower() == "status":
            status = int(value.split()[0])
    return Response(status, headers, body, stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Send one FastCGI GET request to php-fpm.")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("socket")
    parser.add_argument("script_filename")
    parser.add_argument("query_string", nargs="?", default="")
    args = parser.parse_args(argv)
    try:
        r = request(args.socket, args.script_filename, args.query_string, args.timeout)
    except FcgiTimeout as e:
        print(f"fcgi.py: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except FcgiError as e:
        print(f"fcgi.py: {e}", file=sys.stderr)
        return EXIT_CONNECTION
    sys.stdout.buffer.write(r.body)
    sys.stdout.flush()
    if r.stderr:
        sys.stderr.write(r.stderr.decode("utf-8", "replace"))
    if not 200 <= r.status < 300:
        print(f"fcgi.py: status {r.status}", file=sys.stderr)
        return EXIT_STATUS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
