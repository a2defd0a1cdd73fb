# Vendored from cachelib 0.17.0: tests/has.py of https://github.com/pallets-eco/cachelib
# at tag 0.17.0, taken from the release's source distribution
# https://pypi.org/project/cachelib/0.17.0/ (cachelib-0.17.0.tar.gz, sha256
# f3c7dc8d3c1132ab699681ffdf8a52d341d9425ac1401c538cf0b1d87b1677c8). BSD-3-Clause,
# Copyright 2018 Pallets. Changed: only the import of TestData (and under_uwsgi), from
# .data instead of conftest. See python/README-frameworks.md.
from .data import TestData


class HasTests(TestData):
    """Tests for the optional 'has' method specified by BaseCache"""

    def test_has(self):
        cache = self.cache_factory()
        assert cache.set_many(self.sample_pairs)
        for k in self.sample_pairs:
            assert cache.has(k)
        assert not cache.has("unknown")
