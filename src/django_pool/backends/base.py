"""What every pooled backend adds to Django's own wrapper: one mixin.

``DatabaseWrapper = pooled(django.db.backends.postgresql.base.DatabaseWrapper)``
is a whole backend. The mixin changes these steps of Django's connection life:

* ``__init__``: ``OPTIONS["pool"]`` is read and checked here (and again when
  it is replaced on a live wrapper, as Django reads it each time). The
  settings dict stays the one Django handed over; Django's own uses of the
  key (its built-in pool's ``pool`` and ``close_pool()``) are taken over
  here, and the pool's connections are made from settings without it;
* ``connect``: borrow from the process's pool for this database. Only the
  wrapper's own state is reset: the connection was set up (autocommit, time
  zone, role, isolation level, ``init_command``...) once, when it was opened,
  and goes back to the pool only in that state, so a checkout costs no more
  than a persistent connection's reuse;
* ``close_if_unusable_or_obsolete`` / ``_close``: at the end of every request
  (or, with ``release="transaction"``, between transactions: see
  :mod:`.release`) give the connection back instead of closing it, after
  restoring the configured autocommit and cleaning any session state the
  borrower left (``SET``, temporary tables, ``LISTEN``...: see
  :mod:`django_pool.session`), or close it when it is broken or its session
  cannot be cleaned.

Statements are scanned for session changes inside Django's cursor wrappers
(:mod:`.cursors`, ``session_reset="detected"``).

Without ``OPTIONS["pool"]`` every step is Django's own.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from threading import Thread, current_thread
from time import monotonic
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.signals import connection_created
from django.db.utils import DatabaseErrorWrapper

from ..errors import PoolError
from ..session import DIALECTS, Change, Dialect
from . import pools
from .cursors import pooled_cursor_class
from .errors import database_error
from .options import PoolOptions, pool_options
from .release import TransactionRelease

logger = logging.getLogger("django_pool")

_TRANSACTION = int(Change.TRANSACTION)
_SETTINGS = int(Change.SETTINGS)


class PooledWrapperMixin(TransactionRelease):
    """Mixed in before a Django ``DatabaseWrapper`` class (see :func:`pooled`)."""

    #: ``OPTIONS["pool"]``, checked; None when pooling is off.
    pool_options: PoolOptions | None
    # The pool entry that lent the current connection (None: not borrowed).
    _pool_entry: pools.PoolEntry | None = None
    # The entry this wrapper borrows from, checked against all its settings
    # once; its wrapper_state (see pools.WRAPPER_STATE) was copied here.
    _known_entry: pools.PoolEntry | None = None
    # OPTIONS["pool"] and the settings dict pool_options was made from (see
    # _current_pool_options).
    _pool_setting: Any = None
    _pool_settings_dict: dict[str, Any] | None = None
    # What the current borrower may have changed in the session (Change bits,
    # as an int: see session.Change), starting from what is undone on return
    # whatever it is (Change.ALL for session_reset="always").
    _session_changes = 0
    _session_undo_always = 0
    _session_detect = False
    # OPTIONS["pool"]["server_pooling"] == "transaction" (see .server_pooling).
    _behind_transaction_pooler = False
    _session_dialect: Dialect
    _session_known: dict[str, int]

    settings_dict: dict[str, Any]
    alias: str
    vendor: str
    Database: Any  # the driver module
    execute_wrappers: list[Any]
    connection: Any
    autocommit: bool
    errors_occurred: bool
    health_check_done: bool
    run_commit_hooks_on_set_autocommit_on: bool
    _thread_sharing_count: int
    _owner_thread: Thread

    def __init__(self, settings_dict: dict[str, Any], alias: str = "default") -> None:
        # The settings dict is kept as it is, not copied: the test runner
        # renames the database in it, in place, for --parallel workers, and the
        # wrappers that threads make later read that same dict. OPTIONS["pool"]
        # stays in it; Django's own uses of it go through the pool property
        # and close_pool() below, and the pool's connections are made without
        # it (pools._new_entry).
        if alias == NO_DB_ALIAS and "pool" in (settings_dict.get("OPTIONS") or {}):
            # Django's throw-away copy for server-level statements (creating
            # the test database...): never pooled, by Django's pool either.
            options = {k: v for k, v in settings_dict["OPTIONS"].items() if k != "pool"}
            settings_dict = {**settings_dict, "OPTIONS": options}
        self._use_pool_setting(self._pool_setting_in(settings_dict), settings_dict, alias)
        super().__init__(settings_dict, alias)  # type: ignore[call-arg]
        # Django lets a wrapper be used only in the thread that made it, unless
        # thread sharing is allowed: that thread is the one to give back what
        # it borrows (see get_new_connection).
        self._owner_thread = current_thread()

    @staticmethod
    def _pool_setting_in(settings_dict: dict[str, Any]) -> Any:
        return (settings_dict.get("OPTIONS") or {}).get("pool")

    def _use_pool_setting(self, setting: Any, settings_dict: dict[str, Any], alias: str) -> None:
        """Check ``OPTIONS["pool"]`` and set the wrapper up for it (or for no pooling)."""
        vendor = type(self).vendor
        options = pool_options(setting, settings_dict, alias, vendor)
        detect = False
        undo_always = 0
        if options is not None:
            self._session_dialect = DIALECTS[vendor]
            self._session_known = self._session_dialect.known
            mode = options.session_reset
            if mode == "always" and self._session_dialect.reset_sql(Change.ALL) is None:
                raise ImproperlyConfigured(
                    f"DATABASES[{alias!r}]['OPTIONS']['pool']: session_reset='always' "
                    f"would close every connection on return: {vendor} sessions cannot "
                    "be reset in place; use 'detected' or 'never'"
                )
            if mode == "always":
                undo_always = int(Change.ALL)
            detect = mode == "detected"
        self.pool_options = options
        self._pool_setting = setting
        self._pool_settings_dict = settings_dict
        self._session_detect = detect
        self._session_undo_always = undo_always
        self._behind_transaction_pooler = options is not None and options.behind_transaction_pooler
        self._set_release(options is not None and options.release == "transaction", detect)
        self._known_entry = None

    def _current_pool_options(self) -> PoolOptions | None:
        """``pool_options``, read again if ``OPTIONS["pool"]`` or the settings were replaced.

        Django reads that setting each time it is needed, and code (Django's
        own tests among it) switches pooling on and off on a live wrapper by
        replacing it: a checkout compares one value to follow that.
        """
        settings_dict = self.settings_dict
        setting = self._pool_setting_in(settings_dict)
        if setting is not self._pool_setting or settings_dict is not self._pool_settings_dict:
            self._use_pool_setting(setting, settings_dict, self.alias)
        return self.pool_options

    @property
    def pool(self) -> Any:
        """The pool lending this alias's connections, as Django names it; None unpooled.

        Django's PostgreSQL backend (5.1+) asks this property for its built-in
        pool; when the alias is pooled here, it gets django-pool's, so Django's
        own checks (no health check on checkout: the pool validates) apply.
        """
        if self._current_pool_options() is None:
            return getattr(super(), "pool", None)
        entry = self._known_entry
        if entry is None or entry.closed or entry.database_name != self.settings_dict["NAME"]:
            entry = pools.entry_for(self)
        return entry.pool

    def close_pool(self) -> None:
        """Close this alias's pool (Django 5.1+'s name; :func:`django_pool.close_pools`)."""
        if self._current_pool_options() is None:
            close = getattr(super(), "close_pool", None)
            if close is not None:
                close()
            return
        pools.close_pools(self.alias)

    @functools.cached_property
    def wrap_database_errors(self) -> DatabaseErrorWrapper:
        return _PoolErrorsPassWrapper(self)

    def make_cursor(self, cursor: Any) -> Any:
        return self._pooled_cursor(super().make_cursor(cursor))  # type: ignore[misc]

    def make_debug_cursor(self, cursor: Any) -> Any:
        return self._pooled_cursor(super().make_debug_cursor(cursor))  # type: ignore[misc]

    def _pooled_cursor(self, wrapped: Any) -> Any:
        """Switch a Django cursor wrapper to its pooled subclass (see :mod:`.cursors`)."""
        if self._session_detect:  # always so with release="transaction"
            wrapped.__class__ = pooled_cursor_class(
                wrapped.__class__, self._behind_transaction_pooler
            )
            if self._release_per_transaction:
                self._count_cursor(wrapped)
        return wrapped

    def chunked_cursor(self) -> Any:
        cursor = super().chunked_cursor()  # type: ignore[misc]
        if self._release_per_transaction:
            self._count_chunked(cursor)
        elif self._session_detect and self._pool_entry is not None:  # borrowed by now
            self._session_changes |= int(self._session_dialect.chunked_cursor_change)
        return cursor

    def get_connection_params(self) -> dict[str, Any]:
        if self.pool_options is None:
            params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
            # OPTIONS["pool"] switched off (False or None): not a driver option.
            params.pop("pool", None)
            return params
        # Borrowing needs no parameters: the pool's connections are made by an
        # unpooled wrapper with Django's own (see pools.entry_for).
        return {}

    # Not @async_unsafe, unlike Django's: its only caller, ensure_connection(),
    # checks already, and the check costs as much as a checkout.
    def connect(self) -> None:
        settings_dict = self.settings_dict
        if (
            settings_dict is not self._pool_settings_dict
            or settings_dict["OPTIONS"].get("pool") is not self._pool_setting
        ):
            self._current_pool_options()
        if self.pool_options is None:
            return super().connect()  # type: ignore[misc, no-any-return]
        if self._parked_conn is not None and self._unpark():
            return None
        # Django's connect(), less the steps done once per pool or per
        # connection: check_settings() (when the pool is made), connection
        # parameters, set_autocommit() and init_connection_state() (when the
        # connection is opened). The same in Django 4.2 to 6.1.
        self.in_atomic_block = False
        self.savepoint_ids: list[str] = []
        self.atomic_blocks: list[Any] = []
        self.needs_rollback = False
        self.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
        # CONN_MAX_AGE is 0 with pooling: the connection goes back at the end of
        # the request. One changed in place later (tests do) is honoured as
        # Django would: the connection is kept that long, then returned.
        max_age = settings_dict["CONN_MAX_AGE"]
        self.close_at = 0.0 if max_age == 0 else None if max_age is None else monotonic() + max_age
        self.closed_in_transaction = False
        self.errors_occurred = False
        self.connection = self.get_new_connection({})  # also starts _session_changes
        self.autocommit = settings_dict["AUTOCOMMIT"]
        if self.run_commit_hooks_on_set_autocommit_on or connection_created.receivers:
            # Neither may give the connection back (release="transaction")
            # before the statement this checkout is for.
            with self._held():
                if self.run_commit_hooks_on_set_autocommit_on:
                    # Django's connect() runs these through set_autocommit();
                    # the connection is in that mode already.
                    self.set_autocommit(self.autocommit)
                connection_created.send(sender=self.__class__, connection=self)
        self.run_on_commit: list[Any] = []
        return None

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.pool_options is None:
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        entry = self._known_entry
        # Comparing every setting at each checkout would cost as much as the
        # rest of it: that is done when this wrapper first borrows, or after its
        # pool was closed or its database renamed (the test runner does that
        # in place, making and cloning test databases).
        if entry is None or entry.closed or entry.database_name != self.settings_dict["NAME"]:
            entry = pools.entry_for(self)
            known = False
        else:
            known = True
        try:
            conn = entry.pool.getconn(owner=self._borrower())
        except PoolError as exc:
            raise database_error(exc, self.alias, self.vendor, self.settings_dict) from exc
        self._pool_entry = entry
        self._session_changes = self._session_undo_always
        self._start_borrow()
        if not known:  # complete now that the pool has opened a connection
            self.__dict__.update(entry.wrapper_state)
            self._known_entry = entry
        # The pool validated it (every checkout when CONN_HEALTH_CHECKS is on).
        self.health_check_done = True
        return conn

    def is_usable(self) -> bool:
        # Once given back, the wrapper holds no connection: not usable (Django's
        # PostgreSQL backend says so too; its MySQL one raises AttributeError).
        return self.connection is not None and bool(super().is_usable())  # type: ignore[misc]

    def close_if_health_check_failed(self) -> None:
        if self._pool_entry is None:
            if self.pool_options is not None:  # pooled, nothing borrowed: nothing to check
                return None
            return super().close_if_health_check_failed()  # type: ignore[misc, no-any-return]
        # Due only while CONN_MAX_AGE, changed in place, keeps a connection past
        # its request (a checkout is checked by the pool). Django's check, but
        # a connection that fails it is closed, not returned to be lent again.
        if self.health_check_enabled and not self.health_check_done:
            if not self.is_usable():
                with contextlib.suppress(Exception):
                    self.connection.close()
                self.close()  # type: ignore[attr-defined]
            self.health_check_done = True
        return None

    def close_if_unusable_or_obsolete(self) -> None:
        if self.connection is None:  # as at the start of every request
            return None
        if self._pool_entry is None or self.close_at != 0.0:
            # Unpooled, or CONN_MAX_AGE changed in place: Django's rules.
            return super().close_if_unusable_or_obsolete()  # type: ignore[misc, no-any-return]
        # CONN_MAX_AGE is 0, so Django would close it whatever its state, and
        # _close() sorts good connections from broken ones.
        if self.in_atomic_block:
            self.close()  # type: ignore[attr-defined]
            return None
        # What close() does outside an atomic block, less its thread and event
        # loop checks: close_old_connections() only sees this thread's wrappers.
        self.run_on_commit = []
        self._close()
        return None

    def _close(self) -> None:
        entry = self._pool_entry
        if entry is None:
            return super()._close()  # type: ignore[misc, no-any-return]
        self._pool_entry = None
        conn = self.connection
        discard = False
        if self._open_chunked:  # release="transaction": server-side cursors left open
            self._session_changes |= int(self._session_dialect.chunked_cursor_change)
        if self._session_detect and entry.pool.reported_settings_changed(conn):
            self._session_changes |= _SETTINGS  # changed where the scan could not see
        if (
            self.errors_occurred
            or self.autocommit != self.settings_dict["AUTOCOMMIT"]
            or self._session_changes
        ):
            discard = self._clean_for_return(conn, entry)
        self.connection = None
        # The pool handles the driver's errors itself (a failed rollback
        # discards the connection): nothing to wrap.
        entry.pool.putconn(conn, discard=discard)
        return None

    def _clean_for_return(self, conn: Any, entry: pools.PoolEntry) -> bool:
        """Restore autocommit and the session before a return; True to discard ``conn``.

        A broken connection is closed here, and the pool discards and
        replaces it when it comes back.
        """
        if (
            self.errors_occurred or self.autocommit != self.settings_dict["AUTOCOMMIT"]
        ) and not self._restore_for_reuse():
            with contextlib.suppress(Exception):
                conn.close()
            return False
        changes = self._session_changes
        if changes & _TRANSACTION:
            # Opened by a statement (BEGIN...): rolled back, which the pool
            # would not do on mysqlclient, whose connection does not say.
            try:
                conn.rollback()
            except Exception:
                return True
            changes &= ~_TRANSACTION
        if not changes:
            return False
        discard = not self._reset_session(changes, entry)
        entry.count_session(reset=not discard)
        logger.debug(
            "database %r: session changed (%s): %s",
            self.alias,
            Change(changes).name,
            "closed and replaced" if discard else "reset",
        )
        return discard

    def _reset_session(self, changes: int, entry: pools.PoolEntry) -> bool:
        """Undo ``changes`` on the borrowed connection, in one round trip; False if it can't.

        Settings come back to the connection's defaults, so Django's
        per-connection setup (time zone, role...) is run again after.
        """
        if self._behind_transaction_pooler:
            # It would run on whichever server session the pooler picks; a
            # client connection closes without a word to the server.
            return False
        sql = self._session_dialect.reset_sql(changes)
        if sql is None:
            return False
        conn = self.connection
        try:
            conn.rollback()  # no round trip unless a transaction is open
            with conn.cursor() as cursor:
                cursor.execute(sql)
            if changes & (Change.SETTINGS | Change.OTHER):
                # Settings are back to the connection's defaults: set up again
                # what Django and the ``configure`` hook set when it was opened.
                entry.set_up(conn)
                assert self.pool_options is not None  # borrowed, so pooled
                configure = self.pool_options.engine.get("configure")
                if configure is not None:
                    configure(conn)
            if not self.autocommit:
                conn.commit()
        except Exception:
            return False
        return True

    def _restore_for_reuse(self) -> bool:
        """Put the borrowed connection back in the state the pool lends, if it can be.

        The next checkout trusts its autocommit mode, so a connection left in
        another one (``set_autocommit(False)``, or closed inside ``atomic``)
        has its transaction rolled back (MySQL would commit it when autocommit
        is switched on) and the mode restored.
        """
        try:
            wanted = self.settings_dict["AUTOCOMMIT"]
            if self.autocommit != wanted:
                self.connection.rollback()
                self._set_autocommit(wanted)  # type: ignore[attr-defined]
            return not self.errors_occurred or self.is_usable()
        except Exception:
            return False

    def forget_pooled_connection(self) -> None:
        """Drop a borrowed connection without returning it (after fork, in the child)."""
        self._parked_conn = None
        if self._pool_entry is not None:
            self.connection = None
            self._pool_entry = None


class _PoolErrorsPassWrapper(DatabaseErrorWrapper):  # type: ignore[misc]
    """Django's error wrapper, letting django-pool's errors through as they are.

    They are Django ``OperationalError`` subclasses already; on psycopg 3 they
    are also psycopg_pool's (see :mod:`.errors`), so psycopg errors, which
    Django's wrapper would replace with a plain ``OperationalError``.
    """

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is None or issubclass(exc_type, PoolError):
            return
        super().__exit__(exc_type, exc_value, traceback)


class PooledCreationMixin:
    """Test databases: close the alias's pool before dropping or cloning one.

    PostgreSQL refuses to drop a database, or to use it as a clone's template
    (``--parallel``), while sessions are open on it; the pool's idle
    connections are such sessions, and so are those of any alias a test made
    on the same database (``connections.create_connection``, ``copy()``).
    """

    connection: PooledWrapperMixin

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        pools.close_database_pools(self.connection.settings_dict, test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        settings_dict = self.connection.settings_dict
        pools.close_database_pools(settings_dict, settings_dict["NAME"])
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
