"""The process's pools: one per database alias, shared by every thread and task.

A pool is keyed by its alias *and* by the alias's settings (name, host, user,
options...). When the test runner renames the database to ``test_...`` (in
place, on a live wrapper), or an override changes the settings (new
wrappers), the old pool is closed and a new one is made: a pool made for the
real database can never serve the tests' queries. A live wrapper's other
settings are not meant to change in place, and are compared only at its
first checkout.

Pools close at interpreter exit (after the exiting thread's connections are
returned), or through :func:`close_pools`. After
``os.fork()`` the child's Django connections that were lent by a pool are
forgotten (the engine has already detached their sockets), so the next query
in the child takes a fresh connection from the child's own pool.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed

from ..engine import Pool
from ..session import DIALECTS, Change
from . import server_pooling

if TYPE_CHECKING:
    from .base import PooledWrapperMixin

logger = logging.getLogger("django_pool")

# Attributes Django's backends set on the wrapper while connecting (the
# isolation level: PostgreSQL's get_new_connection, MySQL's
# get_connection_params). A checkout skips that work, so the values seen when
# the pool's connections were made are copied over.
WRAPPER_STATE = ("isolation_level",)
#: Seconds a connection the pool opens may take to connect, unless OPTIONS sets
#: ``connect_timeout`` (libpq and mysqlclient both take it): without one, a
#: connector on a network that has gone silent holds its place for minutes.
DEFAULT_CONNECT_TIMEOUT = 10


@dataclass
class PoolEntry:
    """A pool and what the Django layer keeps beside it."""

    # The alias's settings the pool was made with; never shown (the password).
    key: dict[str, Any] = field(repr=False)
    pool: Pool
    #: Django's per-connection setup (autocommit, time zone, role, isolation
    #: level...), run on each new connection and again after a session reset.
    set_up: Callable[[Any], None]
    wrapper_state: dict[str, Any] = field(default_factory=dict)
    # Set when the entry is closed or replaced: wrappers that kept it look again.
    closed: bool = False
    # key["NAME"], what a wrapper compares at each checkout (see
    # base.PooledWrapperMixin.get_new_connection): an attribute, so a checkout
    # reads this object only.
    database_name: str = field(init=False)
    # Returned connections whose session state was reset, or closed because it
    # could not be (see base.PooledWrapperMixin._close); rare, so one lock.
    sessions_reset: int = 0
    sessions_discarded: int = 0
    counters_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.database_name = self.key["NAME"]

    def count_session(self, reset: bool) -> None:
        with self.counters_lock:
            if reset:
                self.sessions_reset += 1
            else:
                self.sessions_discarded += 1

    def get_stats(self) -> dict[str, Any]:
        stats = self.pool.get_stats()
        with self.counters_lock:
            stats["sessions_reset"] = self.sessions_reset
            stats["sessions_discarded"] = self.sessions_discarded
        return stats


_entries: dict[str, PoolEntry] = {}
_lock = threading.Lock()
# Called with (alias, pool) for each pool made (see when_pool_made).
_made_hooks: list[Callable[[str, Pool], None]] = []


def entry_for(wrapper: PooledWrapperMixin) -> PoolEntry:
    """The pool entry for the wrapper's alias and settings, made on first use.

    Made once even when many threads ask at the same moment. Settings that
    differ in anything from those the alias's pool was made with make a new
    pool, which replaces it. A wrapper calls this at its first checkout, then
    only when its entry was closed or its database renamed (see
    ``PooledWrapperMixin.get_new_connection``).
    """
    entry = _entries.get(wrapper.alias)
    if entry is not None and entry.key == wrapper.settings_dict:
        return entry
    # Django checks these settings on every connect(); a pooled checkout, once per pool.
    wrapper.check_settings()  # type: ignore[attr-defined]
    # A copy, so that changes made in place are seen; OPTIONS too.
    key = {**wrapper.settings_dict, "OPTIONS": dict(wrapper.settings_dict["OPTIONS"])}
    replaced = None
    with _lock:
        entry = _entries.get(wrapper.alias)
        if entry is None or entry.key != key:
            replaced = entry
            entry = _new_entry(wrapper, key)
            _entries[wrapper.alias] = entry
            for hook in _made_hooks:
                hook(wrapper.alias, entry.pool)
    if replaced is not None:
        replaced.closed = True
        replaced.pool.close(timeout=0)
    return entry


def _new_entry(wrapper: PooledWrapperMixin, key: dict[str, Any]) -> PoolEntry:
    # The connections are made as without pooling: with OPTIONS["pool"],
    # Django's backends would make their own pool or pass it to the driver.
    options = {k: v for k, v in key["OPTIONS"].items() if k != "pool"}
    options.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    wrapper_options = wrapper.pool_options
    assert wrapper_options is not None
    if wrapper_options.behind_transaction_pooler:
        server_pooling.connection_options(options, wrapper.Database.__name__ == "psycopg")
    settings_dict = {**key, "OPTIONS": options}
    alias = wrapper.alias
    wrapper_class = type(wrapper)
    arguments = dict(wrapper_options.engine)
    wrapper_state: dict[str, Any] = {}

    def unpooled_wrapper() -> tuple[Any, dict[str, Any]]:
        # A throw-away unpooled wrapper runs Django's own connect steps, so the
        # connection is set up exactly as without pooling. Its connection
        # parameters are computed even when only set_up() follows: Django's
        # MySQL backend sets isolation_level there.
        maker: Any = wrapper_class(settings_dict, alias)
        return maker, maker.get_connection_params()

    def set_up_with(maker: Any, conn: Any) -> None:
        maker.connection = conn
        maker.set_autocommit(settings_dict["AUTOCOMMIT"])
        maker.init_connection_state()
        wrapper_state.update((a, maker.__dict__[a]) for a in WRAPPER_STATE if a in maker.__dict__)

    def set_up(conn: Any) -> None:
        set_up_with(unpooled_wrapper()[0], conn)

    def connect() -> Any:
        maker, params = unpooled_wrapper()
        conn = maker.get_new_connection(params)
        try:
            set_up_with(maker, conn)
        except BaseException:
            conn.close()
            raise
        return conn

    reset_all = DIALECTS[wrapper.vendor].reset_sql(Change.ALL)
    configure = arguments.get("configure")

    def reclaim(conn: Any) -> bool:
        # Its borrower's thread ended: what it left in the session is unknown.
        if wrapper_options.session_reset == "never" or wrapper_options.behind_transaction_pooler:
            return True  # behind a pooler, a reset would land on another session
        if reset_all is None:  # MySQL: cannot be reset in place
            return False
        with conn.cursor() as cursor:
            cursor.execute(reset_all)
        set_up(conn)
        if configure is not None:
            configure(conn)
        return True

    # Django's checks of the connection parameters (an invalid isolation
    # level...) raise here, to the first caller, not in a connector thread.
    unpooled_wrapper()
    password = settings_dict.get("PASSWORD") or ""
    pool = Pool(connect, secrets=[password] if password else (), reclaim=reclaim, **arguments)
    logger.info(
        "database %r: pool made in process %d (min_size=%d, max_size=%d, timeout=%g s)",
        alias,
        os.getpid(),
        pool.min_size,
        pool.max_size,
        pool.timeout,
    )
    return PoolEntry(key, pool, set_up, wrapper_state)


def when_pool_made(hook: Callable[[str, Pool], None]) -> None:
    """Call ``hook(alias, pool)`` for every pool of this process: those made already, now,
    and each one made later (at an alias's first query, or replacing one), before
    it lends anything. For exporters (see :mod:`django_pool.contrib`). A hook
    added twice is called once. It runs under the lock that makes pools, once
    per pool: it must be quick, and must not query or make a pool.
    """
    with _lock:
        if hook in _made_hooks:
            return
        _made_hooks.append(hook)
        for alias, entry in _entries.items():
            hook(alias, entry.pool)


def get_pool(alias: str = "default") -> Pool | None:
    """The pool currently serving ``alias`` in this process, if one was made."""
    entry = _entries.get(alias)
    return entry.pool if entry is not None else None


def active_pools() -> dict[str, Pool]:
    """Every pool of this process, by alias (made at each alias's first query)."""
    return {alias: entry.pool for alias, entry in list(_entries.items())}


def get_stats(alias: str | None = None) -> dict[str, Any]:
    """The stats of ``alias``'s pool, or of every pool by alias when ``alias`` is None.

    The keys are the engine's (``Pool.get_stats``) plus ``sessions_reset`` and
    ``sessions_discarded``. An alias whose pool was not made yet in this
    process (no query so far) gives ``{}``.
    """
    if alias is not None:
        entry = _entries.get(alias)
        return entry.get_stats() if entry is not None else {}
    return {name: entry.get_stats() for name, entry in list(_entries.items())}


def close_pools(alias: str | None = None, timeout: float = 5.0) -> None:
    """Close the pool of ``alias``, or every pool of this process.

    Idle connections close now, lent ones when they are returned. The next
    query makes a new pool.
    """
    _close_where(lambda name, _: alias is None or name == alias, timeout)


def close_database_pools(settings_dict: dict[str, Any], database_name: str) -> None:
    """Close every pool, whatever its alias, on ``database_name`` of that server.

    Before the test runner drops or clones a test database: aliases made
    during the tests (``connections.create_connection()``, a wrapper's
    ``copy()`` under a new alias) have pools on it too.
    """
    server = [settings_dict.get(setting) for setting in ("HOST", "PORT")]

    def on_database(_: str, entry: PoolEntry) -> bool:
        key = entry.key
        return key["NAME"] == database_name and [key.get("HOST"), key.get("PORT")] == server

    _close_where(on_database, timeout=0)


def _close_where(wanted: Callable[[str, PoolEntry], bool], timeout: float) -> None:
    with _lock:
        closing = [alias for alias, entry in _entries.items() if wanted(alias, entry)]
        entries = [_entries.pop(alias) for alias in closing]
    for entry in entries:
        logger.debug("pool %r: closing", entry.pool.name)
        entry.closed = True
        entry.pool.close(timeout=timeout)


def _time_zone_changed(setting: str, **kwargs: Any) -> None:
    """Replace every pooled connection when ``TIME_ZONE`` or ``USE_TZ`` change.

    A connection's session time zone is set when it is opened, and Django
    reads datetimes assuming it is the current one: after the change (an
    ``override_settings`` in tests) idle connections would return values
    shifted by hours. Lent ones are replaced when they come back; Django sets
    the zone on the caller's own connection itself.
    """
    if setting in ("TIME_ZONE", "USE_TZ"):
        for entry in list(_entries.values()):
            entry.pool.drain()


def _close_at_exit() -> None:
    """Return the exiting thread's Django connections, then close every pool.

    Without the first step the connection a script or management command still
    holds would only die with the socket (MySQL logs "Aborted connection").
    Other threads' connections are left alone: they may still be in use.
    """
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        connections.close_all()
    close_pools()


def _forget_inherited_connections() -> None:
    """In a forked child: drop the pooled wrappers the forking thread had, and their connections.

    The wrapper belongs to the forking thread. Under gevent (``gunicorn -k
    gevent --preload``) every greenlet of the child shares that thread's
    storage, would find it and fail Django's thread check; the next use makes
    a new one. Unpooled wrappers are left as they are: dropping one would let
    its driver close the parent's session when it is collected.
    """
    from django.db import connections

    for entry in _entries.values():  # as the engine's counters: this process's own
        entry.sessions_reset = entry.sessions_discarded = 0
        entry.counters_lock = threading.Lock()
    for wrapper in connections.all(initialized_only=True):
        forget: Callable[[], None] | None = getattr(wrapper, "forget_pooled_connection", None)
        if forget is not None and wrapper.pool_options is not None:
            forget()
            del connections[wrapper.alias]


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_forget_inherited_connections)
setting_changed.connect(_time_zone_changed, dispatch_uid="django_pool.time_zone_changed")
