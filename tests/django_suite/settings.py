"""Settings for Django's ``tests/runtests.py``, chosen by environment variables.

``compare.py`` sets them; one module serves every run so that the stock and
the pooled runs differ in nothing but the ENGINE and ``OPTIONS["pool"]``:

* ``DJANGO_SUITE_VENDOR``: ``postgresql`` or ``mysql``;
* ``DJANGO_SUITE_POOLED``: ``1`` for django-pool's backend, ``0`` for Django's;
* ``DJANGO_SUITE_POOL``: ``OPTIONS["pool"]`` as JSON (default ``true``);
* ``DJANGO_SUITE_HOST``, ``_PORT``, ``_USER``, ``_PASSWORD``: the server;
* ``DJANGO_SUITE_PREFIX``: prefixes the database names, so that two runs can
  share a server at the same time.
"""

import json
import os

_vendor = os.environ["DJANGO_SUITE_VENDOR"]
_pooled = os.environ.get("DJANGO_SUITE_POOLED") == "1"
_prefix = os.environ.get("DJANGO_SUITE_PREFIX", "django")


def _database(name: str) -> dict[str, object]:
    options: dict[str, object] = {}
    if _pooled:
        options["pool"] = json.loads(os.environ.get("DJANGO_SUITE_POOL", "true"))
    return {
        "ENGINE": f"{'django_pool' if _pooled else 'django.db'}.backends.{_vendor}",
        "NAME": f"{_prefix}_{name}",
        "HOST": os.environ["DJANGO_SUITE_HOST"],
        "PORT": os.environ["DJANGO_SUITE_PORT"],
        "USER": os.environ["DJANGO_SUITE_USER"],
        "PASSWORD": os.environ.get("DJANGO_SUITE_PASSWORD", ""),
        "OPTIONS": options,
        # The test databases' names: Django's default would be test_<NAME>.
        "TEST": {"NAME": f"test_{_prefix}_{name}"},
    }


DATABASES = {"default": _database("default"), "other": _database("other")}
SECRET_KEY = "django_tests_secret_key"
# Faster than the default hasher, as in Django's own CI settings.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "tests.django_suite.runner.RecordingRunner"
