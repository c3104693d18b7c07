"""What a pooled wrapper adds to Django's cursor wrappers: the session scan, and a count.

Each backend picks its cursor wrapper class inside ``make_cursor()`` and
``make_debug_cursor()``, so a pooled wrapper switches the instance it gets to
a subclass of that class which only adds:

* the session scan before every statement (``session_reset="detected"``,
  see :mod:`django_pool.session`), where ``execute()`` and ``executemany()``
  meet, in the plain and the debug wrapper alike (Django 4.2 to 6.1). An
  execute wrapper would see the same statements, but
  ``connection.execute_wrappers`` is a public list that code reads and
  expects to hold its own wrappers only;
* with ``release="transaction"``, the cursor's share of holding the
  connection: counted open when made, counted closed once, on ``close()``
  (which ``with`` and the ORM's result iterators call), so that the
  connection can go back as soon as no cursor needs it (see
  :mod:`django_pool.backends.release`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..session import Change
from .server_pooling import refusal, refused_changes

if TYPE_CHECKING:
    from .base import PooledWrapperMixin


class PooledCursor:
    """Put before a Django cursor wrapper class (see :func:`pooled_cursor_class`)."""

    db: PooledWrapperMixin
    cursor: Any
    # The checkout (db._borrows) this cursor counts against while open, or 0
    # (release="transaction").
    _holds_connection = 0
    # A server-side cursor (chunked_cursor(), behind .iterator()).
    _chunked = False

    def _execute_with_wrappers(self, sql: Any, params: Any, many: bool, executor: Any) -> Any:
        db = self.db
        if db._session_detect:
            try:  # a statement seen before: one lookup (see Dialect.known)
                db._session_changes |= db._session_known[sql]
            except (KeyError, TypeError):  # new, or not a string (unhashable sql.Composed)
                db._session_changes = db._session_dialect.after(db._session_changes, sql)
        return super()._execute_with_wrappers(sql, params, many, executor)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            borrow = self._holds_connection
            if borrow:  # counted once, however often it is closed
                self._holds_connection = 0
                self.db._cursor_closed(borrow, self._chunked)


_TRANSACTION = int(Change.TRANSACTION)


class ServerPooledCursor(PooledCursor):
    """The scan behind a transaction pooler (see :mod:`.server_pooling`): refuse, not record.

    Session state is refused before it is sent, so there is never any to
    reset; only a transaction opened by a statement is recorded (it is
    rolled back on return).
    """

    def _execute_with_wrappers(self, sql: Any, params: Any, many: bool, executor: Any) -> Any:
        db = self.db
        state = db._session_changes
        try:
            changes = state | db._session_known[sql]
        except (KeyError, TypeError):  # new, or not a string (unhashable sql.Composed)
            changes = db._session_dialect.after(state, sql)
        added = changes & ~state & ~_TRANSACTION
        if added:
            in_transaction = db.in_atomic_block or not db.autocommit or changes & _TRANSACTION
            refused = refused_changes(added, bool(in_transaction))
            if refused:
                raise refusal(db.alias, sql, refused)
        db._session_changes = changes & _TRANSACTION
        # Past PooledCursor's scan, to the Django cursor wrapper's.
        return super(PooledCursor, self)._execute_with_wrappers(  # type: ignore[misc]
            sql, params, many, executor
        )


@functools.cache
def pooled_cursor_class(wrapper_class: type[Any], behind_transaction_pooler: bool) -> type[Any]:
    """``wrapper_class`` (a Django cursor wrapper class) with :class:`PooledCursor` added.

    Behind a transaction pooler, :class:`ServerPooledCursor` instead.
    """
    scan = ServerPooledCursor if behind_transaction_pooler else PooledCursor
    return type(
        wrapper_class.__name__,
        (scan, wrapper_class),
        {"__module__": __name__, "__doc__": wrapper_class.__doc__},
    )
