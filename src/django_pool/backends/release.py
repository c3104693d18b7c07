"""``OPTIONS["pool"]["release"]``: when a borrowed connection goes back to the pool.

``"request"`` (the default) keeps it until the request ends, as Django's
built-in pool does. ``"transaction"`` gives it back as soon as nothing on it
has to survive until the next statement, and the next statement borrows
again: an async view that awaits an outside call, or a sync view that blocks
on one, holds no connection meanwhile.

With ``"request"``, a connection borrowed *outside* a request (between
``request_started`` and ``request_finished`` in that thread) by a thread other
than the main one follows the ``"transaction"`` rules too, when the session is
tracked (``session_reset="detected"``, the default): nothing ever ends a
"request" there, so nothing would give it back. Those are asyncio's worker
threads (``sync_to_async(thread_sensitive=False)``), the threads that run
tasks left running after the response, and threads a view starts. The main
thread (scripts, management commands, tests) keeps its connection until it
is closed, as without pooling.

The rules, all here: the connection is kept while any of these holds, and
given back when the last of them ends (the check runs when a cursor is
closed and when autocommit is switched back on, which is how every
``atomic`` block ends):

* an ``atomic`` block is open, or autocommit is off (``set_autocommit(False)``,
  or ``AUTOCOMMIT=False``);
* the driver reports a transaction in progress, or a statement opened one
  (``BEGIN``, ``START TRANSACTION``: the session scan sees those, which
  matters on mysqlclient, whose connection does not say);
* a cursor made by the wrapper is still open: a server-side cursor
  (``.iterator()``) until it is exhausted or closed, a raw
  ``connection.cursor()`` until it is closed;
* the session scan saw a change to the session (``SET``, temporary tables,
  ``LISTEN``, advisory locks, ``PREPARE``...): the connection is then pinned
  until the request ends, and cleaned as usual when it goes back. A change
  only the server's reports show (a setting changed inside a function) does
  not pin it, but keeps it from any other request (see ``Pool.park``);
* ``CONN_MAX_AGE`` was changed in place (persistent, by request).

``transaction.on_commit`` callbacks run as Django runs them: after the
outermost ``atomic`` commits, before the connection goes back. What can
differ from ``"request"`` is only which physical connection serves the next
statement: ``pg_backend_pid()``, ``CONNECTION_ID()``, and session changes
made where the scan cannot see them (inside server-side functions) apply to
the connection they ran on. See ``docs/configuration.md``.

Giving back is a *park* (:meth:`django_pool.Pool.park`): the connection is
available to every other request at once, but unless one takes it, the
wrapper's next statement takes it back (:meth:`~django_pool.Pool.unpark`)
without a checkout's work, so a request of many short transactions costs
little more than with ``"request"``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from threading import Thread, main_thread
from typing import Any

from django.core.signals import request_finished, request_started
from django.db.backends.signals import connection_created

# ``active`` is True in a thread between request_started and request_finished:
# Django sends both in the thread that serves the request (under ASGI, the
# request's thread-sensitive thread, where its ORM calls run).
_requests = threading.local()


def _request_started(**kwargs: Any) -> None:
    _requests.active = True


def _request_finished(**kwargs: Any) -> None:
    _requests.active = False


request_started.connect(_request_started, dispatch_uid="django_pool.request_started")
request_finished.connect(_request_finished, dispatch_uid="django_pool.request_finished")


class TransactionRelease:
    """The part of :class:`~django_pool.backends.base.PooledWrapperMixin` that
    gives a connection back between transactions (``release="transaction"``)."""

    #: True while the current checkout follows the "transaction" rules.
    _release_per_transaction = False
    # release="transaction"; release="request" with the session tracked (the
    # rules then apply outside requests, in threads but the main one).
    _release_always = False
    _release_outside_requests = False
    # Numbers the checkouts: a cursor counts against the one it was made in,
    # so a cursor left open past a return cannot count against the next.
    _borrows = 0
    # Cursors of the current checkout still open, and how many of them are
    # server-side ones.
    _open_cursors = 0
    _open_chunked = 0
    # Blocks that keep the connection as a cursor would (see _held).
    _holds = 0
    # The connection this wrapper parked last (see Pool.park), to take back.
    _parked_conn: Any = None

    connection: Any
    autocommit: bool
    in_atomic_block: bool
    close_at: float | None
    errors_occurred: bool
    health_check_done: bool
    health_check_enabled: bool
    settings_dict: dict[str, Any]
    _session_changes: int
    _session_undo_always: int
    _pool_entry: Any
    _known_entry: Any
    _pool_settings_dict: dict[str, Any] | None
    _pool_setting: Any
    _thread_sharing_count: int
    _owner_thread: Thread

    def _count_cursor(self, cursor: Any) -> None:
        """``cursor`` (a :class:`~.cursors.PooledCursor`) holds the connection until closed."""
        cursor._holds_connection = self._borrows
        self._open_cursors += 1

    def _count_chunked(self, cursor: Any) -> None:
        if cursor._holds_connection:
            cursor._chunked = True
            self._open_chunked += 1

    def _cursor_closed(self, borrow: int, chunked: bool) -> None:
        if borrow != self._borrows:  # made during an earlier checkout
            return
        self._open_cursors -= 1
        if chunked:
            self._open_chunked -= 1
        if not self._open_cursors:
            self._release_if_unused()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Keep the connection for the block, as an open cursor would."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1

    def _set_release(self, per_transaction: bool, session_tracked: bool) -> None:
        self._release_always = per_transaction
        self._release_outside_requests = session_tracked and not per_transaction
        self._release_per_transaction = per_transaction

    def _cursor(self, name: str | None = None) -> Any:
        # Django's _cursor() borrows (ensure_connection) then makes the cursor;
        # whatever runs in between (a subclass's set-up queries) must not give
        # the connection back. (Not a bound method stored on the instance: that
        # would be a reference cycle, and Django 6.1 frees wrappers without
        # the garbage collector.)
        if not self._release_per_transaction:
            return super()._cursor(name)  # type: ignore[misc]
        if self.connection is None and self._parked_conn is not None:
            self._unpark()
        # What _held() does, written out: this runs for every statement.
        self._holds += 1
        try:
            return super()._cursor(name)  # type: ignore[misc]
        finally:
            self._holds -= 1

    def _start_borrow(self) -> None:
        self._borrows += 1
        self._open_cursors = self._open_chunked = 0
        self._release_per_transaction = self._release_always or (
            self._release_outside_requests
            and not getattr(_requests, "active", False)
            and not self._thread_sharing_count
            and self._owner_thread is not main_thread()
        )

    def set_autocommit(
        self, autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        super().set_autocommit(  # type: ignore[misc]
            autocommit, force_begin_transaction_with_broken_autocommit
        )
        if autocommit and self._release_per_transaction:
            self._release_if_unused()

    def _release_if_unused(self) -> None:
        entry = self._pool_entry
        if (
            entry is None
            or self._open_cursors
            or self._holds
            or self.in_atomic_block
            or not self.autocommit
            or self._session_changes
            or self.close_at != 0.0
        ):
            return
        conn = self.connection
        if self.errors_occurred:  # checked as any return is (see base._close)
            if not entry.pool.in_transaction(conn):
                self._close()  # type: ignore[attr-defined]
            return
        # The settings the server reports are compared by the pool only if
        # the connection goes to another request (see Pool.park); at the end
        # of the request by _close(), as every return.
        if not entry.pool.park(conn):  # a transaction, or changed settings for a waiter
            return
        self._pool_entry = None
        self.connection = None
        self._parked_conn = conn

    def _unpark(self) -> bool:
        """Take back the connection parked last, if still free: the checkout's fast path.

        Only when nothing a checkout would redo has changed since: the
        wrapper's state is as ``connect()`` leaves it (a park happens only
        outside any transaction, with autocommit on and nothing pinned).
        """
        conn = self._parked_conn
        self._parked_conn = None
        entry = self._known_entry
        settings_dict = self.settings_dict
        if (
            entry is None
            or entry.closed
            or entry.database_name != settings_dict["NAME"]
            or settings_dict is not self._pool_settings_dict
            or settings_dict["OPTIONS"].get("pool") is not self._pool_setting
            or settings_dict["CONN_MAX_AGE"] != 0
            or connection_created.receivers  # Django sends it at each connect()
            or not entry.pool.unpark(conn, self._borrower())
        ):
            return False
        self.connection = conn
        self._pool_entry = entry
        self._session_changes = self._session_undo_always
        self._start_borrow()
        self.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
        self.health_check_done = True
        return True

    def _borrower(self) -> Thread | None:
        """The thread that gives back what this wrapper borrows (Pool.getconn's ``owner``).

        So that the pool takes the connection back if the thread ends with it
        (a thread doing ORM work that nobody closes); None when the wrapper is
        shared across threads (Django's allow_thread_sharing reads the same
        count, under a lock).
        """
        return None if self._thread_sharing_count else self._owner_thread
