"""System checks for pooled databases (``manage.py check``).

Registered by :class:`django_pool.apps.DjangoPoolConfig`, when ``"django_pool"``
is in ``INSTALLED_APPS``:

* ``django_pool.E001``: ``OPTIONS["pool"]`` of a pooled database is invalid
  (unknown key, wrong type, ``min_size`` above ``max_size``, pooling with
  ``CONN_MAX_AGE`` other than 0...). Without the check the same error is
  raised at the first query.
* ``django_pool.W001``, with ``manage.py check --database ALIAS`` only, since
  it asks the live server: the pools of every pooled alias on that server
  (same vendor, ``HOST`` and ``PORT``), in every process, together may need
  more connections than the server accepts. Processes are counted from
  ``DJANGO_POOL_PROCESSES`` (every process using these settings: web workers,
  Celery workers...) when set, else ``WEB_CONCURRENCY`` (gunicorn's and
  uvicorn's variable), else 1. Aliases with ``server_pooling`` set are left
  out: a pooler between them and the server has limits of its own.
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
from .options import PoolOptions, pool_options


def _pooled_aliases(aliases: Iterable[str]) -> list[tuple[str, type[PooledWrapperMixin]]]:
    pooled = []
    for alias in aliases:
        engine = settings.DATABASES[alias].get("ENGINE", "")
        try:
            wrapper_class = load_backend(engine).DatabaseWrapper
        except ImproperlyConfigured:
            continue  # Django's own checks report an unknown ENGINE
        if issubclass(wrapper_class, PooledWrapperMixin):
            pooled.append((alias, wrapper_class))
    return pooled


def _checked_options(alias: str, wrapper_class: type[PooledWrapperMixin]) -> PoolOptions | None:
    """The alias's ``OPTIONS["pool"]``, checked; raises ImproperlyConfigured."""
    settings_dict = {"CONN_MAX_AGE": 0, **settings.DATABASES[alias]}
    setting = (settings_dict.get("OPTIONS") or {}).get("pool")
    return pool_options(setting, settings_dict, alias, wrapper_class.vendor)


def check_pool_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``django_pool.E001``: every pooled database's ``OPTIONS["pool"]`` is valid."""
    errors: list[checks.CheckMessage] = []
    for alias, wrapper_class in _pooled_aliases(settings.DATABASES):
        try:
            _checked_options(alias, wrapper_class)
        except ImproperlyConfigured as exc:
            errors.append(
                checks.Error(str(exc), obj=f"DATABASES[{alias!r}]", id="django_pool.E001")
            )
    return errors


def check_server_capacity(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``django_pool.W001``: every process's pools on a server fit in its connection limit."""
    asked = set(databases or ())
    if not asked:
        return []
    # Pooled aliases by the server they connect to: each one's pool counts.
    servers: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for alias, wrapper_class in _pooled_aliases(settings.DATABASES):
        try:
            options = _checked_options(alias, wrapper_class)
        except ImproperlyConfigured:
            continue  # django_pool.E001
        if options is None or options.server_pooling is not None:
            continue  # a pooler's own limits apply, not the server's
        settings_dict = settings.DATABASES[alias]
        server = (
            wrapper_class.vendor,
            str(settings_dict.get("HOST") or ""),
            str(settings_dict.get("PORT") or ""),
        )
        servers.setdefault(server, []).append((alias, options.max_size))
    processes = _processes()
    warnings: list[checks.CheckMessage] = []
    for members in servers.values():
        on_this_server = [alias for alias, _ in members if alias in asked]
        if not on_this_server:
            continue
        wrapper = connections[on_this_server[0]]
        available = _server_capacity(wrapper)
        wrapper.close()
        per_process = sum(size for _, size in members)
        needed = per_process * processes
        if needed <= available:
            continue
        pools_listed = " + ".join(f"{alias!r} max_size={size}" for alias, size in members)
        warnings.append(
            checks.Warning(
                f"the pools on the server of DATABASES[{on_this_server[0]!r}] may open "
                f"{needed} connections (({pools_listed}) x {processes} process(es)), more "
                f"than the {available} it accepts for ordinary users",
                hint="lower max_size or the number of processes, raise the server's "
                "max_connections, or put PgBouncer/ProxySQL in front (and set "
                "'server_pooling'); processes are counted from DJANGO_POOL_PROCESSES, "
                "else WEB_CONCURRENCY",
                obj=f"DATABASES[{on_this_server[0]!r}]",
                id="django_pool.W001",
            )
        )
    return warnings


def _processes() -> int:
    for variable in ("DJANGO_POOL_PROCESSES", "WEB_CONCURRENCY"):
        try:
            return max(1, int(os.environ[variable]))
        except (KeyError, ValueError):
            continue
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
