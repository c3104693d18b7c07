"""Settings for the real-server tests (gunicorn, uvicorn): tagged sessions.

The servers run in their own processes against the real ``django_pool_app``
database. Every connection they open carries ``application_name`` taken from
``DJANGO_POOL_TEST_APP_NAME``, so a test can count exactly its own server's
sessions in ``pg_stat_activity``, whatever else uses the database.
"""

from __future__ import annotations

import copy
import os

from .settings import *  # noqa: F403
from .settings import DATABASES as _BASE_DATABASES

DATABASES = copy.deepcopy(_BASE_DATABASES)
DATABASES["default"]["OPTIONS"]["application_name"] = os.environ.get(
    "DJANGO_POOL_TEST_APP_NAME", "django_pool_serving"
)
# The release mode and the checkout timeout of the server under test.
DATABASES["default"]["OPTIONS"]["pool"] = {
    **DATABASES["default"]["OPTIONS"]["pool"],
    "release": os.environ.get("DJANGO_POOL_TEST_RELEASE", "request"),
    "timeout": float(os.environ.get("DJANGO_POOL_TEST_POOL_TIMEOUT", "10")),
}
