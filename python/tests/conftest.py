import os
import sys
import uuid

import pytest

import larder

sys.path.insert(0, os.path.dirname(__file__))


def unique_path():
    return f"/dev/shm/larder-pytest-{os.getpid()}-{uuid.uuid4().hex}.larder"


def remove(path):
    try:
        larder.Cache.unlink(path)
    except FileNotFoundError:
        pass


@pytest.fixture
def path():
    """A unique cache path in /dev/shm, removed after the test even if it fails."""
    p = unique_path()
    yield p
    remove(p)


@pytest.fixture
def cache(path):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=0.5, fill_timeout=5)
    yield c
    c.close()


@pytest.fixture
def procs():
    """Child processes a test starts; any still running at teardown are killed."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
