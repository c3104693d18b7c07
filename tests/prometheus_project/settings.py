"""One pooled PostgreSQL alias, on the server and database the test names.

The test passes PGHOST/PGPORT/PGUSER/PGPASSWORD (the session's server),
``DP_PROM_DATABASE`` and ``DP_PROM_APPLICATION_NAME``, which tags every
session the project opens so the test can count them in ``pg_stat_activity``.
"""

from __future__ import annotations

import os

SECRET_KEY = "django-pool-prometheus-project"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.prometheus_project.urls"
INSTALLED_APPS = ["tests.prometheus_project"]
MIDDLEWARE: list[str] = []

DATABASES = {
    "default": {
        "ENGINE": "django_pool.backends.postgresql",
        "NAME": os.environ["DP_PROM_DATABASE"],
        "USER": os.environ["PGUSER"],
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "HOST": os.environ["PGHOST"],
        "PORT": os.environ["PGPORT"],
        "OPTIONS": {
            "application_name": os.environ["DP_PROM_APPLICATION_NAME"],
            "pool": {"min_size": 1, "max_size": 2, "timeout": 10},
        },
    },
}
