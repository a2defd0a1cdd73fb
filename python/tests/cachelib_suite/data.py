# Vendored from cachelib 0.17.0: tests/conftest.py of https://github.com/pallets-eco/cachelib
# at tag 0.17.0, taken from the release's source distribution
# https://pypi.org/project/cachelib/0.17.0/ (cachelib-0.17.0.tar.gz, sha256
# f3c7dc8d3c1132ab699681ffdf8a52d341d9425ac1401c538cf0b1d87b1677c8). BSD-3-Clause,
# Copyright 2018 Pallets. Only its under_uwsgi and TestData, unchanged: the rest of that
# conftest starts servers for other backends. See python/README-frameworks.md.
def under_uwsgi():
    try:
        import uwsgi  # noqa: F401
    except ImportError:
        return False
    else:
        return True


class TestData:
    """This class centralizes all data samples used in tests"""

    sample_numbers = [0, 10, 1024000, 9, 5000000000000, 99, 738, 2000000]
    sample_pairs = {
        "128": False,
        "beef": True,
        "crevettes": {},
        "1024": "spam",
        "bacon": "eggs",
        "sausage": 2048,
        "3072": [],
        "brandy": [{}, "fried eggs"],
        "lobster": ["baked beans", [512]],
        "4096": {"sauce": [], 256: "truffle"},
    }
