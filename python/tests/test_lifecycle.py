"""The file's lifecycle as a Python user meets it: error messages in Python's terms,
the constructor's lifecycle arguments (allowed owners)."""

import os
import shutil
import time

import pytest

import larder

from conftest import remove

RUST_CALLS = ("Cache::", "Options::")


def python_words(exc):
    text = str(exc.value)
    for api in RUST_CALLS:
        assert api not in text, text
    return text


def test_error_messages_name_python_calls_not_rust_ones(path, cache):
    with pytest.raises(larder.Incompatible) as e:
        larder.Cache(path, capacity=8 << 20)
    text = python_words(e)
    assert f"larder.Cache({path!r}".replace("'", '"') in text, text
    assert "larder.Cache.unlink(" in text, text

    with pytest.raises(larder.NotFound) as e:
        larder.Cache(path + ".none")
    assert "capacity=" in python_words(e)

    with pytest.raises(larder.TooLarge) as e:
        cache.set("k" * 300, b"")
    assert "max_key_len=" in python_words(e)

    corrupt = path + ".corrupt"
    try:
        shutil.copyfile(path, corrupt)
        with open(corrupt, "r+b") as f:
            f.seek(176 + 3)  # a reserved header byte, covered by the checksum
            f.write(b"\x42")
        with pytest.raises(larder.Corrupt) as e:
            larder.Cache(corrupt)
        assert "cache.repair()" in python_words(e)
    finally:
        remove(corrupt)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_file_of_another_owner_is_refused_until_its_uid_is_allowed(path, cache):
    foreign = path + ".foreign"
    try:
        shutil.copyfile(path, foreign)
        os.chown(foreign, 12345, -1)
        with pytest.raises(larder.UnsafeFile) as e:
            larder.Cache(foreign)
        assert "allow_uids=[12345]" in python_words(e)
        c = larder.Cache(foreign, allow_uids=[12345])
        c["k"] = b"v"
        assert c["k"] == b"v"
        c.close()
    finally:
        remove(foreign)


def test_a_detached_handle_says_what_happened_in_python_terms(path, cache):
    cache["k"] = b"v"
    larder.Cache.unlink(path)
    with open(path, "wb") as f:
        f.write(b"\x55" * 8192)  # not a cache: the handle cannot attach to it
    deadline = time.monotonic() + 10
    while True:
        try:
            cache.get("k")
        except larder.Detached as exc:
            text = str(exc)
            break
        assert time.monotonic() < deadline, "the handle never noticed the replacement"
        time.sleep(0.01)
    for api in RUST_CALLS:
        assert api not in text, text
    assert "not a larder cache" in text, text
    os.unlink(path)


NO_PROC_CHILD = r"""
import sys, larder
try:
    larder.Cache(sys.argv[1] + ".fresh", capacity=4 << 20)
except larder.ProcUnavailable as e:
    assert isinstance(e, OSError) and "mount /proc" in str(e), str(e)
else:
    raise SystemExit("created a cache without /proc")
try:
    larder.Cache(sys.argv[1])
except larder.ProcUnavailable as e:
    assert "Cache::" not in str(e), str(e)
else:
    raise SystemExit("attached without /proc")
print("refused")
"""


def test_without_proc_opens_are_refused_naming_proc(path, cache):
    import subprocess
    import sys

    probe = subprocess.run(
        ["unshare", "--mount", "--fork", "true"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount is refused here: {probe.stderr.decode().strip()}")
    cache["k"] = b"v"
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--fork",
            "sh",
            "-c",
            'mount -t tmpfs none /proc && exec "$0" -c "$1" "$2"',
            sys.executable,
            NO_PROC_CHILD,
            path,
        ],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == b"refused", out
    assert cache["k"] == b"v"


def test_group_gives_a_created_file_its_group(path):
    group = 4240 if os.geteuid() == 0 else os.getegid()
    c = larder.Cache(path, capacity=4 << 20, mode=0o660, group=group)
    st = os.stat(c.path)
    assert (st.st_gid, st.st_mode & 0o7777) == (group, 0o660)
    c.close()


def test_on_mismatch_attaches_or_replaces_only_an_older_file(path):
    old = larder.Cache(path, capacity=4 << 20)
    old["k"] = b"v"
    with pytest.raises(larder.Incompatible):
        larder.Cache(path, capacity=8 << 20)
    attached = larder.Cache(path, capacity=8 << 20, on_mismatch="attach")
    assert attached.limits()["capacity"] == 4 << 20
    grown = larder.Cache(path, capacity=8 << 20, on_mismatch="replace")
    assert grown.limits()["capacity"] == 8 << 20 and "k" not in grown
    grown["new"] = b"1"
    deadline = time.monotonic() + 10
    while old.get("new") != b"1":  # the old handle follows within its check period
        assert time.monotonic() < deadline, "the old handle did not follow"
        time.sleep(0.01)
    kept = larder.Cache(path, capacity=4 << 20, on_mismatch="replace")
    assert kept.limits()["capacity"] == 8 << 20, "a smaller file of the same generation"
    shrunk = larder.Cache(path, capacity=4 << 20, on_mismatch="replace", generation=1)
    assert shrunk.limits()["capacity"] == 4 << 20
    with pytest.raises(ValueError):
        larder.Cache(path, capacity=4 << 20, on_mismatch="sometimes")
    for c in (old, attached, grown, kept, shrunk):
        c.close()
