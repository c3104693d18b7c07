"""Settings for the Django-level tests: pooled backends on the test servers.

``DJANGO_POOL_TEST_PG_DRIVER=psycopg2`` hides psycopg 3, so that Django's
PostgreSQL backend picks psycopg2 (it prefers psycopg 3 when both import).
The ``mysql`` alias exists only when a MySQL/MariaDB server answers; the
``gis`` alias (PostGIS) only when GDAL and GEOS load and the server offers the
postgis extension (``GIS_UNAVAILABLE`` says why not); the ``bouncer_*``
aliases, on the default alias's test database through PgBouncers of the
tests' own (:mod:`tests.pgbouncer`), only when PgBouncer is installed
(``PGBOUNCER_UNAVAILABLE`` says why not).
"""

from __future__ import annotations

import ctypes.util
import os
import sys

from django_pool import testservers
from tests import pgbouncer

_pg = testservers.postgres_server()
_mysql = testservers.mysql_server()


def _gis_unavailable() -> str | None:
    missing = [lib for lib in ("gdal", "geos_c") if not ctypes.util.find_library(lib)]
    if missing:
        return f"libraries not found: {', '.join(missing)} (Debian: libgdal32 libgeos-c1v5)"
    rows = _pg.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'")
    if not rows:
        return "the PostgreSQL server has no postgis extension (Debian: postgresql-N-postgis-3)"
    return None


GIS_UNAVAILABLE = _gis_unavailable()

SECRET_KEY = "django-pool-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.djangoapp.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_pool",
    "tests.djangoapp",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE: list[str] = []
DATABASE_ROUTERS = ["tests.djangoapp.routers.GisRouter"]

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
if GIS_UNAVAILABLE is None:
    INSTALLED_APPS += ["django.contrib.gis", "tests.gisapp"]
    DATABASES["gis"] = {
        **DATABASES["default"],
        "ENGINE": "django_pool.backends.postgis",
        "NAME": "django_pool_gis",
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

PGBOUNCERS = pgbouncer.shared_bouncers(_pg)
PGBOUNCER_UNAVAILABLE = None
if PGBOUNCERS is None:
    PGBOUNCER_UNAVAILABLE = pgbouncer.unavailable_reason() or "started by a pytest process only"
if PGBOUNCERS is not None:
    _through = {
        # What the option is for: a transaction pooler, and django-pool told so.
        "bouncer_transaction": ("transaction", {"server_pooling": "transaction"}),
        # A pooler in session mode needs nothing.
        "bouncer_session": ("session", {}),
        # A transaction pooler django-pool was not told about: what goes wrong.
        "bouncer_unaware": ("transaction", {}),
    }
    for _alias, (_mode, _options) in _through.items():
        DATABASES[_alias] = {
            **DATABASES["default"],
            "HOST": "127.0.0.1",
            "PORT": PGBOUNCERS[_mode].port,
            "DISABLE_SERVER_SIDE_CURSORS": _mode == "transaction",
            "OPTIONS": {"pool": {**POOL, **_options}},
            "TEST": {"MIRROR": "default"},
        }

# release="transaction" twins of the pooled aliases, on the same test databases.
for _alias in [alias for alias in ("default", "mysql") if alias in DATABASES]:
    DATABASES[f"{_alias}_tx"] = {
        **DATABASES[_alias],
        "OPTIONS": {"pool": {**POOL, "release": "transaction"}},
        "TEST": {"MIRROR": _alias},
    }

if os.environ.get("DJANGO_POOL_TEST_PG_DRIVER") == "psycopg2":
    # Last, once the servers were found (testservers keeps its own psycopg).
    sys.modules["psycopg"] = None  # type: ignore[assignment]
