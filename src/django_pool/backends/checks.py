"""System checks for pooled databases (``manage.py check``).

Registered by :class:`django_pool.apps.DjangoPoolConfig`, when ``"django_pool"``
is in ``INSTALLED_APPS``:

* ``django_pool.E001``: ``OPTIONS["pool"]`` of a pooled database is invalid
  (unknown key, wrong type, ``min_size`` above ``max_size``, pooling with
  ``CONN_MAX_AGE`` other than 0...). Without the check the same error is
  raised at the first query.
* ``django_pool.W001``, with ``manage.py check --database ALIAS`` only, since
  it asks the live server: the pools of every process together may need more
  connections than the server accepts. Processes are counted from
  ``WEB_CONCURRENCY`` (gunicorn's and uvicorn's variable) when set, else 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.utils import load_backend

from .base import PooledWrapperMixin
from .options import pool_options
from .pools import get_pool


def _pooled_aliases(aliases: Iterable[str]) -> list[str]:
    pooled = []
    for alias in aliases:
        engine = settings.DATABASES[alias].get("ENGINE", "")
        try:
            wrapper_class = load_backend(engine).DatabaseWrapper
        except ImproperlyConfigured:
            continue  # Django's own checks report an unknown ENGINE
        if issubclass(wrapper_class, PooledWrapperMixin):
            pooled.append(alias)
    return pooled


def check_pool_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``django_pool.E001``: every pooled database's ``OPTIONS["pool"]`` is valid."""
    errors: list[checks.CheckMessage] = []
    for alias in _pooled_aliases(settings.DATABASES):
        settings_dict = {"CONN_MAX_AGE": 0, **settings.DATABASES[alias]}
        try:
            pool_options((settings_dict.get("OPTIONS") or {}).get("pool"), settings_dict, alias)
        except ImproperlyConfigured as exc:
            errors.append(
                checks.Error(str(exc), obj=f"DATABASES[{alias!r}]", id="django_pool.E001")
            )
    return errors


def check_server_capacity(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``django_pool.W001``: the pools fit in the server's connection limit."""
    warnings: list[checks.CheckMessage] = []
    processes = _processes()
    for alias in _pooled_aliases(databases or ()):
        wrapper = connections[alias]
        if wrapper.pool_options is None:
            continue
        available = _server_capacity(wrapper)  # made the pool, if it was not yet
        wrapper.close()
        pool = get_pool(alias)
        assert pool is not None
        max_size = pool.max_size
        needed = max_size * processes
        if needed > available:
            warnings.append(
                checks.Warning(
                    f"pools of DATABASES[{alias!r}] may open {needed} connections "
                    f"(max_size={max_size} x {processes} process(es)), more than the "
                    f"{available} the server accepts for ordinary users",
                    hint="lower max_size or the number of worker processes, raise the "
                    "server's max_connections, or put PgBouncer/ProxySQL in front",
                    obj=f"DATABASES[{alias!r}]",
                    id="django_pool.W001",
                )
            )
    return warnings


def _processes() -> int:
    try:
        return max(1, int(os.environ.get("WEB_CONCURRENCY", "1")))
    except ValueError:
        return 1


def _server_capacity(wrapper: Any) -> int:
    """Connections the server accepts from non-superusers."""
    with wrapper.cursor() as cursor:
        if wrapper.vendor == "postgresql":
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
            )
        else:
            cursor.execute("SELECT @@max_connections")
        return int(cursor.fetchone()[0])
