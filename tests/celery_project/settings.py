"""Settings of the Celery project: one pooled PostgreSQL database, made by the test.

The server comes from :mod:`django_pool.testservers` (PGHOST/PGPORT/PGUSER/
PGPASSWORD, passed on by the test). Environment variables name the database
(``DP_CELERY_DATABASE``), tag its sessions (``DP_CELERY_APPLICATION_NAME``),
size the pool (``DP_CELERY_POOL_MAX``) and pick the Redis database
(``DP_CELERY_REDIS``).
"""

from __future__ import annotations

import os

from django_pool import testservers

_pg = testservers.postgres_server()

SECRET_KEY = "django-pool-celery-project"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["tests.celery_project"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE: list[str] = []

POOL_MAX_SIZE = int(os.environ.get("DP_CELERY_POOL_MAX", "2"))

DATABASES = {
    "default": {
        "ENGINE": "django_pool.backends.postgresql",
        "NAME": os.environ.get("DP_CELERY_DATABASE", "dp_celery"),
        "USER": _pg.user,
        "PASSWORD": _pg.password,
        "HOST": _pg.host,
        "PORT": _pg.port,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            "application_name": os.environ.get("DP_CELERY_APPLICATION_NAME", "dp_celery"),
            "pool": {"min_size": 1, "max_size": POOL_MAX_SIZE, "timeout": 10},
        },
    },
}

CELERY_BROKER_URL = os.environ.get("DP_CELERY_REDIS", "redis://127.0.0.1:6379/11")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
