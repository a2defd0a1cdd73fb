# Django's tests/cache package, vendored; see tests.py.
