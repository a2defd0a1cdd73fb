# Vendored from cachelib 0.17.0: tests/delete_many_with_prefix.py of
# https://github.com/pallets-eco/cachelib at tag 0.17.0, taken from the release's source
# distribution https://pypi.org/project/cachelib/0.17.0/ (cachelib-0.17.0.tar.gz, sha256
# f3c7dc8d3c1132ab699681ffdf8a52d341d9425ac1401c538cf0b1d87b1677c8). BSD-3-Clause,
# Copyright 2018 Pallets. Changed: only the import of TestData (and under_uwsgi), from
# .data instead of conftest. See python/README-frameworks.md.
from .data import TestData


class DeleteManyWithPrefixTests(TestData):
    """Tests for the 'delete_many' method when a key prefix is used"""

    def test_delete_many_with_prefix(self):
        cache = self.cache_factory(key_prefix="test_prefix:")
        cache.set_many({"foo": 1, "bar": 2, "baz": 3})
        result = cache.delete_many("foo", "bar", "baz")
        assert result == ["foo", "bar", "baz"]
        assert not any(cache.get_many("foo", "bar", "baz"))
