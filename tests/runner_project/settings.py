"""Settings of the runner project: one pooled PostgreSQL database, ``dp_runner_real``.

The server comes from :mod:`django_pool.testservers`, as for ``tests.djangoapp``;
the test module passes PGHOST/PGPORT/PGUSER/PGPASSWORD so that every subprocess
reaches the same server. Environment variables let the tests tag the sessions
(``DP_RUNNER_APPLICATION_NAME``) and size the pool (``DP_RUNNER_POOL_MIN``).
"""

from __future__ import annotations

import os

from django_pool import testservers

_pg = testservers.postgres_server()

REAL_DATABASE = "dp_runner_real"

SECRET_KEY = "django-pool-runner-project"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["tests.runner_project.runnerapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE: list[str] = []

_min_size = int(os.environ.get("DP_RUNNER_POOL_MIN", "1"))

DATABASES = {
    "default": {
        "ENGINE": "django_pool.backends.postgresql",
        "NAME": REAL_DATABASE,
        "USER": _pg.user,
        "PASSWORD": _pg.password,
        "HOST": _pg.host,
        "PORT": _pg.port,
        "OPTIONS": {
            "application_name": os.environ.get("DP_RUNNER_APPLICATION_NAME", "dp_runner"),
            "pool": {"min_size": _min_size, "max_size": max(4, _min_size), "timeout": 10},
        },
    },
}
