# Vendored from cachelib 0.17.0: tests/common.py of https://github.com/pallets-eco/cachelib
# at tag 0.17.0, taken from the release's source distribution
# https://pypi.org/project/cachelib/0.17.0/ (cachelib-0.17.0.tar.gz, sha256
# f3c7dc8d3c1132ab699681ffdf8a52d341d9425ac1401c538cf0b1d87b1677c8). BSD-3-Clause,
# Copyright 2018 Pallets. Changed: only the import of TestData (and under_uwsgi), from
# .data instead of conftest. See python/README-frameworks.md.
from datetime import timedelta
from time import sleep

import pytest
from .data import TestData
from .data import under_uwsgi


class CommonTests(TestData):
    """A base set of tests to be run for all cache types"""

    def test_set_get(self):
        cache = self.cache_factory()
        for k, v in self.sample_pairs.items():
            assert cache.set(k, v)
            assert cache.get(k) == v

    def test_set_get_many(self):
        cache = self.cache_factory()
        result = cache.set_many(self.sample_pairs)
        assert result == list(self.sample_pairs.keys())
        values = cache.get_many(*self.sample_pairs)
        assert values == list(self.sample_pairs.values())

    def test_get_dict(self):
        cache = self.cache_factory()
        cache.set_many(self.sample_pairs)
        d = cache.get_dict(*self.sample_pairs)
        assert d == self.sample_pairs

    def test_delete(self):
        cache = self.cache_factory()
        for k, v in self.sample_pairs.items():
            cache.set(k, v)
            assert cache.delete(k)
            assert not cache.get(k)

    def test_delete_many(self):
        cache = self.cache_factory()
        cache.set_many(self.sample_pairs)
        result = cache.delete_many(*self.sample_pairs)
        assert result == list(self.sample_pairs.keys())
        assert not any(cache.get_many(*self.sample_pairs))

    def test_delete_many_ignore_errors(self):
        cache = self.cache_factory()
        cache.set("bacon", "spam")
        cache.delete_many("eggs", "bacon")
        assert cache.get("bacon") is None

    def test_delete_many_raise_errors_nonexistent_key(self):
        cache = self.cache_factory(ignore_delete_many_errors=False)
        cache.set("bacon", "spam")
        # nonexistent keys are considered deleted and must not raise
        result = cache.delete_many("eggs", "bacon")
        assert result == ["eggs", "bacon"]
        assert cache.get("bacon") is None

    def test_add(self):
        cache = self.cache_factory()
        cache.set_many(self.sample_pairs)
        for k in self.sample_pairs:
            assert not cache.add(k, "updated")
        assert cache.get_many(*self.sample_pairs) == list(self.sample_pairs.values())
        for k, v in self.sample_pairs.items():
            assert cache.add(f"{k}-new", v)
            assert cache.get(f"{k}-new") == v

    def test_inc_dec(self):
        cache = self.cache_factory()
        for n in self.sample_numbers:
            assert not cache.get(f"{n}-key-inc")
            assert cache.inc(f"{n}-key-inc", n) == n
            assert cache.get(f"{n}-key-inc") == n
            assert cache.dec(f"{n}-key-dec", n) == -n
            assert cache.get(f"{n}-key-dec") == -n
            assert cache.dec(f"{n}-key-inc", 5) == n - 5

    def test_inc_dec_after_set(self):
        cache = self.cache_factory()
        assert cache.set("count", 10)
        assert cache.inc("count", 5) == 15
        assert cache.dec("count", 3) == 12
        assert cache.get("count") == 12

    def test_bool_roundtrip(self):
        cache = self.cache_factory()
        assert cache.set("true-key", True)
        assert cache.get("true-key") is True
        assert cache.set("false-key", False)
        assert cache.get("false-key") is False

    def test_expiration(self):
        if under_uwsgi():
            pytest.skip(
                "uwsgi uses a separate sweeper thread to clean"
                " expired cache entries, thus the testing"
                " of such feature must be handled differently"
                " from other cache types."
            )
        cache = self.cache_factory()
        for k, v in self.sample_pairs.items():
            cache.set(f"{k}-t0", v, timeout=0)
            cache.set(f"{k}-t1", v, timeout=1)
            # timedeltas are equivalent to the same amount of seconds
            cache.set(f"{k}-td0", v, timeout=timedelta())
            cache.set(f"{k}-td1", v, timeout=timedelta(seconds=1))
        sleep(4)
        for k, v in self.sample_pairs.items():
            assert cache.get(f"{k}-t0") == v
            assert not cache.get(f"{k}-t1")
            assert cache.get(f"{k}-td0") == v
            assert not cache.get(f"{k}-td1")
