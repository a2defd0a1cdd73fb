# cachelib's reusable test classes, vendored; see data.py.
