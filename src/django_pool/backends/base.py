"""What every pooled backend adds to Django's own wrapper: one mixin.

``DatabaseWrapper = pooled(django.db.backends.postgresql.base.DatabaseWrapper)``
is a whole backend. The mixin changes four steps of Django's connection life:

* ``__init__``: ``OPTIONS["pool"]`` is read and checked here, then removed from
  the wrapper's copy of the settings, so Django's own code (including its
  built-in pool, and psycopg2's "pooling requires psycopg 3") never sees it;
* ``get_connection_params`` / ``get_new_connection``: borrow from the
  process's pool for this database (no parameters to build);
* ``init_connection_state``: skipped on a borrowed connection, which was set up
  (time zone, role, isolation level, ``init_command``...) when it was opened;
* ``_close``: give the connection back instead of closing it.

Without ``OPTIONS["pool"]`` every step is Django's own.
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import pools
from .options import pool_arguments


class PooledWrapperMixin:
    """Mixed in before a Django ``DatabaseWrapper`` class (see :func:`pooled`)."""

    #: Engine arguments from ``OPTIONS["pool"]``; None when pooling is off.
    pool_arguments: dict[str, Any] | None
    # The pool entry that lent the current connection (None: not borrowed).
    _pool_entry: pools.PoolEntry | None = None

    settings_dict: dict[str, Any]
    alias: str
    connection: Any
    errors_occurred: bool
    health_check_done: bool

    def __init__(self, settings_dict: dict[str, Any], alias: str = "default") -> None:
        options = settings_dict.get("OPTIONS") or {}
        self.pool_arguments = pool_arguments(options.get("pool"), settings_dict, alias)
        if "pool" in options:
            settings_dict = {
                **settings_dict,
                "OPTIONS": {k: v for k, v in options.items() if k != "pool"},
            }
        super().__init__(settings_dict, alias)  # type: ignore[call-arg]

    def get_connection_params(self) -> dict[str, Any]:
        if self.pool_arguments is None:
            return super().get_connection_params()  # type: ignore[misc, no-any-return]
        # Borrowing needs no parameters: the pool's connections are made by an
        # unpooled wrapper with Django's own (see pools.entry_for).
        return {}

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.pool_arguments is None:
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        entry = pools.entry_for(self)
        conn = entry.pool.getconn()
        self._pool_entry = entry
        self.__dict__.update(entry.wrapper_state)
        # The pool validated it (every checkout when CONN_HEALTH_CHECKS is on).
        self.health_check_done = True
        return conn

    def init_connection_state(self) -> None:
        if self._pool_entry is None:
            super().init_connection_state()  # type: ignore[misc]

    def _close(self) -> None:
        entry = self._pool_entry
        if entry is None:
            return super()._close()  # type: ignore[misc, no-any-return]
        conn, self.connection, self._pool_entry = self.connection, None, None
        if conn is None:
            return None
        if self.errors_occurred and not self._usable(conn):
            # Broken: close it, and the pool discards and replaces it.
            with contextlib.suppress(Exception):
                conn.close()
        with self.wrap_database_errors:  # type: ignore[attr-defined]
            entry.pool.putconn(conn)
        return None

    def _usable(self, conn: Any) -> bool:
        self.connection = conn
        try:
            return bool(self.is_usable())  # type: ignore[attr-defined]
        finally:
            self.connection = None

    def forget_pooled_connection(self) -> None:
        """Drop a borrowed connection without returning it (after fork, in the child)."""
        if self._pool_entry is not None:
            self.connection = None
            self._pool_entry = None


class PooledCreationMixin:
    """Test databases: close the alias's pool before dropping or cloning one.

    PostgreSQL refuses to drop a database, or to use it as a clone's template
    (``--parallel``), while sessions are open on it; the pool's idle
    connections are such sessions.
    """

    connection: PooledWrapperMixin

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        pools.close_pools(self.connection.alias, timeout=0)
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        pools.close_pools(self.connection.alias, timeout=0)
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]


def pooled(wrapper_class: type[Any]) -> type[Any]:
    """Return a pooled subclass of a Django ``DatabaseWrapper`` class.

    For a third-party backend that subclasses one of Django's (django-tenants,
    django-prometheus...), a backend module of your own with a ``base.py`` of::

        from django_pool.backends.base import pooled
        from django_tenants.postgresql_backend.base import DatabaseWrapper as Base

        DatabaseWrapper = pooled(Base)
    """
    creation_class = type(
        "DatabaseCreation", (PooledCreationMixin, wrapper_class.creation_class), {}
    )
    return type(
        "DatabaseWrapper",
        (PooledWrapperMixin, wrapper_class),
        {
            "__module__": __name__,
            "__doc__": wrapper_class.__doc__,
            "creation_class": creation_class,
        },
    )
