"""The ``larder`` command the wheel installs (``larder._cli:main``): the command of
``cli/``, driven as a user would, with its exit statuses and one-line errors."""

import json
import os
import signal
import subprocess

import larder
import pytest
from _redis import DEADLINE, Listening, RedisServer, larder_command


def run(*args):
    return subprocess.run(
        [larder_command(), *args],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def assert_one_line_error(r, code, text):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("larder: "), r.stderr
    assert text in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_create_stats_and_rm_manage_a_cache_python_uses(path):
    r = run("create", path, "--capacity", "4MiB", "--max-key", "64")
    assert r.returncode == 0, r.stderr
    with larder.Cache(path) as c:
        assert c.limits()["max_key_len"] == 64
        c.set("k", b"v")
    r = run("stats", path, "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["entries"] == 1, stats
    r = run("get", path, "k")
    assert (r.returncode, r.stdout.strip()) == (0, "v"), r.stderr
    r = run("rm", path)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(path)


def test_a_missing_cache_is_one_line_and_status_1(tmp_path):
    missing = str(tmp_path / "nothing-here")
    assert_one_line_error(run("stats", missing), 1, "nothing-here")
    assert_one_line_error(run("rm", missing), 1, "nothing-here")


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a cache" * 1000)
    assert_one_line_error(run("stats", str(junk)), 1, "not a larder cache")


def test_usage_errors_are_one_line_and_verify_says_2():
    assert_one_line_error(run("frobnicate"), 1, "frobnicate")
    assert_one_line_error(run("verify"), 2, "usage")


def test_help_lists_the_commands_and_exits_0():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for command in ("create", "stats", "rm", "listen"):
        assert command in r.stdout


def test_the_wheel_leaves_bench_out_with_a_one_line_error():
    # `larder bench` starts its workers by running the current executable again,
    # which in a wheel is the Python interpreter: the wheel's command leaves it out.
    r = run("bench", "--secs", "1")
    assert_one_line_error(r, 1, "bench is not in this build")
    assert "cargo install --path cli" in r.stderr
    assert "bench" not in run("--help").stdout


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_listen_takes_the_lease_and_ctrl_c_ends_it_as_the_binary(path, redis_server):
    assert run("create", path, "--capacity", "4MiB").returncode == 0
    listener = Listening(path, redis_server.url, ["k:"])
    try:
        line = listener.wait_for("connected to Redis")
        assert "took the lease on" in line, listener.seen
        listener.signal(signal.SIGINT)
        # Killed by SIGINT, as the standalone binary (no Python traceback).
        assert listener.wait() == -signal.SIGINT
    finally:
        listener.stop()
    assert "Traceback" not in "\n".join(listener.seen)
