"""What the Django backend's tests run in child processes: importable without Django's
settings (a spawned child has none)."""

import larder.django


def incr_many(location, params, n, start):
    """Increments the key "shared" n times, through the backend, once start is set."""
    if not start.wait(30):
        raise TimeoutError("the test never started the workers")
    cache = larder.django.LarderCache(location, params)
    for _ in range(n):
        cache.incr("shared")
