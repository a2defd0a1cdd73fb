"""Flask-Caching over larder.cachelib.LarderCache: a Flask app's cached view and
memoized function, shared by processes through one file."""

import multiprocessing
import os

from flask import Flask
from flask_caching import Cache

from larder.cachelib import LarderCache

OPTIONS = {"capacity": 4 << 20, "lock_timeout": 5}


def make_app(path):
    """A tiny app whose answers name the process that computed them."""
    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="larder.cachelib.LarderCache",
        CACHE_ARGS=[path],
        # Flask-Caching calls a class whose path contains "cachelib" with CACHE_ARGS
        # and CACHE_OPTIONS only: the key prefix goes in CACHE_OPTIONS.
        CACHE_OPTIONS={**OPTIONS, "key_prefix": "tiny:"},
        CACHE_DEFAULT_TIMEOUT=300,
    )
    cache = Cache(app)

    @app.route("/page")
    @cache.cached()
    def page():
        return f"page by {os.getpid()}"

    @cache.memoize()
    def owner(name):
        return f"{name} by {os.getpid()}"

    @app.route("/owner/<name>")
    def owner_view(name):
        return owner(name)

    @app.route("/forget/<name>", methods=["POST"])
    def forget(name):
        cache.delete_memoized(owner, name)
        return "forgotten"

    return app


def get_pages(path, urls, results):
    """In a child process: the bodies of GET urls from its own instance of the app."""
    client = make_app(path).test_client()
    results.put([client.get(url).get_data(as_text=True) for url in urls])


def in_other_process(path, urls):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=get_pages, args=(path, urls, results))
    child.start()
    try:
        bodies = results.get(timeout=60)
        child.join(60)
        assert child.exitcode == 0
        return bodies, child.pid
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)


def test_views_and_memoized_results_are_shared_between_processes(path):
    app = make_app(path)
    client = app.test_client()
    me = os.getpid()
    assert client.get("/page").get_data(as_text=True) == f"page by {me}"

    # The other process is served this one's page, and computes the memoized owner.
    (page, owner), other = in_other_process(path, ["/page", "/owner/alice"])
    assert page == f"page by {me}"
    assert owner == f"alice by {other}"
    assert client.get("/owner/alice").get_data(as_text=True) == f"alice by {other}"

    # Forgotten here: computed again here, and that is what the other process sees.
    assert client.post("/forget/alice").get_data(as_text=True) == "forgotten"
    assert client.get("/owner/alice").get_data(as_text=True) == f"alice by {me}"
    (owner,), _ = in_other_process(path, ["/owner/alice"])
    assert owner == f"alice by {me}"


def test_flask_caching_builds_the_backend_from_its_config(path):
    app = make_app(path)
    (backend,) = app.extensions["cache"].values()
    assert type(backend) is LarderCache
    assert backend.default_timeout == 300
    assert backend._cache.path == path
    app.test_client().get("/page")
    assert backend._cache.get("tiny:view//page") is not None
