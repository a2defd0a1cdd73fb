"""Django for the backend's tests: minimal settings, the vendored ``cache`` test app
(Django's tests/cache, whose models some tests store) and its tables in an in-memory
SQLite database of each pytest-xdist worker."""

import os
import sys

import django
from django.conf import settings

sys.path.insert(0, os.path.dirname(__file__))

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["cache"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        SECRET_KEY="larder-tests",
        USE_TZ=True,
    )
    django.setup()

    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    # What Django's test runner does first (ALLOWED_HOSTS gains "testserver", ...).
    setup_test_environment()
    call_command("migrate", run_syncdb=True, verbosity=0)
