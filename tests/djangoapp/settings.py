"""Settings for the Django-level tests: pooled backends on the test servers.

``DJANGO_POOL_TEST_PG_DRIVER=psycopg2`` hides psycopg 3, so that Django's
PostgreSQL backend picks psycopg2 (it prefers psycopg 3 when both import).
The ``mysql`` alias exists only when a MySQL/MariaDB server answers.
"""

from __future__ import annotations

import os
import sys

from django_pool import testservers

if os.environ.get("DJANGO_POOL_TEST_PG_DRIVER") == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]

_pg = testservers.postgres_server()
_mysql = testservers.mysql_server()

SECRET_KEY = "django-pool-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.djangoapp.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "tests.djangoapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE: list[str] = []

POOL = {"min_size": 1, "max_size": 4, "timeout": 10}

DATABASES = {
    "default": {
        "ENGINE": "django_pool.backends.postgresql",
        "NAME": "django_pool_app",
        "USER": _pg.user,
        "PASSWORD": _pg.password,
        "HOST": _pg.host,
        "PORT": _pg.port,
        "OPTIONS": {"pool": POOL},
    },
}
if _mysql is not None:
    DATABASES["mysql"] = {
        "ENGINE": "django_pool.backends.mysql",
        "NAME": "django_pool_app",
        "USER": _mysql.user,
        "PASSWORD": _mysql.password,
        "HOST": _mysql.host,
        "PORT": _mysql.port,
        "OPTIONS": {"pool": POOL},
    }
