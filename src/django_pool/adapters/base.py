"""What the pool needs to know about a DB-API driver, and nothing more.

The engine never imports a driver. Everything driver-specific goes through an
:class:`Adapter`: a stateless object with a handful of small methods. Those
called on every return (:meth:`Adapter.state`) must not do I/O; the others
(:meth:`ping`, :meth:`rollback`) are called only when the pool decides a round
trip is worth it.
"""

from __future__ import annotations

from typing import Any

#: The connection is usable and no transaction is open: it can go back as is.
IDLE = 0
#: Settings the server reports to the client by itself (PostgreSQL's
#: ParameterStatus messages) that a borrower may change, however it did it.
REPORTED_SETTINGS = (
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "is_superuser",
    "session_authorization",
    "search_path",  # reported by PostgreSQL 18 and later
    "application_name",
)

#: A transaction (possibly failed) is open: roll back before lending it again.
IN_TRANSACTION = 1
#: The connection is closed or known to be broken: it must be discarded.
BROKEN = 2

# SQLSTATE classes and codes that mean the session is gone, whatever the driver:
# class 08 (connection exception), admin/crash shutdowns, "cannot connect now".
_PG_DISCONNECT_CLASSES = ("08",)
_PG_DISCONNECT_CODES = frozenset({"57P01", "57P02", "57P03", "53300"})


class Adapter:
    """Per-driver operations used by :class:`django_pool.Pool`.

    Subclasses override what their driver does differently. ``Any`` is used for
    connections because DB-API has no common type.
    """

    #: Short name shown in ``repr`` and error messages.
    name = "dbapi"

    def state(self, conn: Any) -> int:
        """Return :data:`IDLE`, :data:`IN_TRANSACTION` or :data:`BROKEN`, without I/O.

        The default cannot see the transaction status, so it always asks for a
        rollback: correct, at the cost of a round trip on every return.
        """
        return IN_TRANSACTION

    def ping(self, conn: Any) -> None:
        """Check the connection with one round trip; raise if it is unusable."""
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def close(self, conn: Any) -> None:
        conn.close()

    def is_disconnect(self, exc: BaseException) -> bool:
        """True when ``exc`` means the connection itself is gone (not a SQL error)."""
        return False

    def reported_settings(self, conn: Any) -> tuple[Any, ...] | None:
        """The current values of :data:`REPORTED_SETTINGS`, without I/O; None if unknown.

        The server sends them when they change, whatever changed them (a
        ``SET`` in a function, a ``DO`` block): a second signal beside the
        session scan, and a free one.
        """
        return None

    def fileno(self, conn: Any) -> int | None:
        """The connection's socket descriptor, or None when it cannot be known.

        Used only after ``os.fork()``, to detach the child from the parent's
        sockets without sending anything on them.
        """
        fileno = getattr(conn, "fileno", None)
        return fileno() if callable(fileno) else None


def is_pg_disconnect_code(sqlstate: str | None) -> bool:
    """True for PostgreSQL SQLSTATEs that mean the session is lost.

    ``None`` counts as a disconnect: libpq reports a dropped socket
    ("server closed the connection unexpectedly") without any SQLSTATE.
    """
    if sqlstate is None:
        return True
    return sqlstate.startswith(_PG_DISCONNECT_CLASSES) or sqlstate in _PG_DISCONNECT_CODES
