"""The ways of handling database connections that the demo compares.

Each mode is one ``DATABASES["default"]`` for the demo project; nothing else
differs between them. Every pooled mode gets the same pool size per server
process, so the comparison is of how the pools behave, not of how big they are.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .database import DatabaseURL, Vendor

#: Every mode, in report order.
MODES = ("no_pool", "persistent", "django_builtin", "dj_db_conn_pool", "django_pool")

#: What the orchestrator tells the demo project's settings, through the environment.
ENV_MODE = "DJANGO_POOL_DEMO_MODE"
ENV_DATABASE = "DJANGO_POOL_DEMO_DATABASE"
ENV_POOL = "DJANGO_POOL_DEMO_POOL"
ENV_APPLICATION_NAME = "DJANGO_POOL_DEMO_APPLICATION_NAME"
ENV = (ENV_MODE, ENV_DATABASE, ENV_POOL, ENV_APPLICATION_NAME)

LABELS = {
    "no_pool": "no pooling (CONN_MAX_AGE=0)",
    "persistent": "persistent (CONN_MAX_AGE=None)",
    "django_builtin": "Django's built-in pool",
    "dj_db_conn_pool": "django-db-connection-pool",
    "django_pool": "django-pool",
}


@dataclass(frozen=True)
class PoolSize:
    """Connections each server process's pool keeps (``min_size``) and may open.

    ``timeout`` (seconds a request may wait for a connection) is given to every
    pool that has one, so they give up equally soon; None keeps each pool's
    default. ``release`` is django-pool's own option and goes to it alone.
    """

    min_size: int
    max_size: int
    timeout: float | None = None
    release: str | None = None

    def __str__(self) -> str:
        text = f"min {self.min_size}, max {self.max_size}"
        return text if self.timeout is None else f"{text}, timeout {self.timeout:g} s"


def label(mode: str, pool: PoolSize) -> str:
    """The mode's name in reports, with django-pool's ``release`` when it is set."""
    if mode == "django_pool" and pool.release:
        return f'{LABELS[mode]} (release="{pool.release}")'
    return LABELS[mode]


def skip_reason(mode: str, vendor: Vendor, server: str) -> str | None:
    """Why ``mode`` cannot run on a ``vendor`` database under ``server``, or None."""
    if mode == "persistent" and server == "uvicorn":
        # Under ASGI each request's connection lives in the request's own async
        # context: never reused, and open until garbage-collected. Run anyway,
        # it would take every connection the database server allows.
        return (
            "Django's docs say to disable persistent connections under ASGI: each "
            "request would open a connection and leave it open"
        )
    if mode == "django_builtin":
        import django

        if vendor != "postgresql":
            return "Django's built-in pool is for PostgreSQL only"
        if django.VERSION < (5, 1):
            return f"needs Django 5.1 or later (this is Django {django.get_version()})"
        if not all(importlib.util.find_spec(name) for name in ("psycopg", "psycopg_pool")):
            return "needs psycopg 3 and psycopg-pool (pip install 'psycopg[binary]' psycopg-pool)"
    if mode == "dj_db_conn_pool" and importlib.util.find_spec("dj_db_conn_pool") is None:
        return "not installed (pip install django-db-connection-pool)"
    return None


def database_settings(
    mode: str, db: DatabaseURL, pool: PoolSize, application_name: str
) -> dict[str, Any]:
    """``DATABASES["default"]`` for ``mode``.

    On PostgreSQL every connection carries ``application_name``, which is how
    the monitor tells the demo's sessions from anyone else's.
    """
    settings: dict[str, Any] = {
        "ENGINE": f"django.db.backends.{db.vendor}",
        "NAME": db.name,
        "USER": db.user,
        "PASSWORD": db.password,
        "HOST": db.host,
        "PORT": str(db.port),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"application_name": application_name} if db.vendor == "postgresql" else {},
    }
    sizes: dict[str, Any] = {"min_size": pool.min_size, "max_size": pool.max_size}
    if pool.timeout is not None:
        sizes["timeout"] = pool.timeout
    if mode == "persistent":
        settings["CONN_MAX_AGE"] = None
    elif mode == "django_builtin":
        settings["OPTIONS"]["pool"] = sizes
    elif mode == "dj_db_conn_pool":
        # SQLAlchemy's QueuePool has no minimum: it opens up to POOL_SIZE on demand.
        settings["ENGINE"] = f"dj_db_conn_pool.backends.{db.vendor}"
        settings["POOL_OPTIONS"] = {"POOL_SIZE": pool.max_size, "MAX_OVERFLOW": 0}
        if pool.timeout is not None:
            settings["POOL_OPTIONS"]["TIMEOUT"] = pool.timeout
    elif mode == "django_pool":
        settings["ENGINE"] = f"django_pool.backends.{db.vendor}"
        settings["OPTIONS"]["pool"] = sizes
        if pool.release:
            settings["OPTIONS"]["pool"]["release"] = pool.release
    elif mode != "no_pool":
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    return settings


def environment(
    mode: str, db: DatabaseURL, pool: PoolSize, application_name: str
) -> dict[str, str]:
    """The variables from which the demo project's settings build ``DATABASES``."""
    return {
        ENV_MODE: mode,
        ENV_DATABASE: db.url(),
        ENV_POOL: json.dumps(asdict(pool)),
        ENV_APPLICATION_NAME: application_name,
    }


def settings_from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``DATABASES["default"]`` from the variables :func:`environment` set."""
    missing = [name for name in ENV if name not in environ]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not set: the demo project is served by `django-pool demo`, "
            "which sets them (see django_pool.demo.project)"
        )
    return database_settings(
        environ[ENV_MODE],
        DatabaseURL.parse(environ[ENV_DATABASE]),
        PoolSize(**json.loads(environ[ENV_POOL])),
        environ[ENV_APPLICATION_NAME],
    )
