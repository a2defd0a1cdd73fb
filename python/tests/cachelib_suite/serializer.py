# Vendored from cachelib 0.17.0: tests/serializer.py of https://github.com/pallets-eco/cachelib
# at tag 0.17.0, taken from the release's source distribution
# https://pypi.org/project/cachelib/0.17.0/ (cachelib-0.17.0.tar.gz, sha256
# f3c7dc8d3c1132ab699681ffdf8a52d341d9425ac1401c538cf0b1d87b1677c8). BSD-3-Clause,
# Copyright 2018 Pallets. Changed: only the import of TestData (and under_uwsgi), from
# .data instead of conftest. See python/README-frameworks.md.
from .data import TestData

from cachelib.serializers import JSONSerializer


class SerializerTests(TestData):
    """A set of tests to run on serializers used by caches"""

    def test_serializer_injection_roundtrip(self):
        cache = self.cache_factory()
        cache.serializer = JSONSerializer()
        assert cache.set("key", {"a": 1, "b": [1, 2, 3]})
        assert cache.get("key") == {"a": 1, "b": [1, 2, 3]}

    def test_serializer_injection_set_many(self):
        cache = self.cache_factory()
        cache.serializer = JSONSerializer()
        pairs = {"k1": "hello", "k2": 42, "k3": [True, None]}
        assert cache.set_many(pairs)
        assert cache.get_many(*pairs) == list(pairs.values())

    def test_serializer_is_stored_on_instance(self):
        serializer = JSONSerializer()
        cache = self.cache_factory()
        cache.serializer = serializer
        assert isinstance(cache.serializer, JSONSerializer)

    def test_serializer_injection_add(self):
        cache = self.cache_factory()
        cache.serializer = JSONSerializer()
        assert cache.add("key", {"a": 1})
        assert cache.get("key") == {"a": 1}
        assert not cache.add("key", {"b": 2})

    def test_serializer_injection_get_dict(self):
        cache = self.cache_factory()
        cache.serializer = JSONSerializer()
        pairs = {"k1": "hello", "k2": 42}
        cache.set_many(pairs)
        assert cache.get_dict(*pairs) == pairs

    def test_no_serializer_uses_default(self):
        cache = self.cache_factory()
        assert cache.set("key", b"raw bytes")
        assert cache.get("key") == b"raw bytes"
