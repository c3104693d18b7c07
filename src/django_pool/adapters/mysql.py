"""Adapters for mysqlclient (``MySQLdb``) and PyMySQL.

Both speak the same protocol, so they share the error codes and the ping
(COM_PING: one round trip, no effect on the session); they differ in what they
expose of the connection's state.
"""

from __future__ import annotations

import select
from typing import Any

from .base import BROKEN, IDLE, IN_TRANSACTION, Adapter

# Client and server error numbers that mean the session is gone.
_DISCONNECT_ERRNOS = frozenset(
    {
        2002,  # CR_CONNECTION_ERROR
        2003,  # CR_CONN_HOST_ERROR
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST
        2055,  # CR_SERVER_LOST_EXTENDED
        1053,  # ER_SERVER_SHUTDOWN
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    }
)
_SERVER_STATUS_IN_TRANS = 1
_SERVER_STATUS_AUTOCOMMIT = 2


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class _MySQLAdapter(Adapter):
    def ping(self, conn: Any) -> None:
        conn.ping()

    def is_disconnect(self, exc: BaseException) -> bool:
        return _errno(exc) in _DISCONNECT_ERRNOS


def _readable(fd: int) -> bool:
    """True if the socket has data or EOF waiting: an idle session never does,
    so the server closed it (or sent its last error before closing)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class MySQLClientAdapter(_MySQLAdapter):
    """mysqlclient exposes neither a lost session nor the in-transaction flag.

    A lost session keeps ``open`` set and its socket (and a cursor's close
    clears the error number), so the socket itself is asked, without I/O on
    the session: a zero-timeout poll. With autocommit off a transaction may be
    open, so it is rolled back; with autocommit on (Django's default) only an
    explicit ``START TRANSACTION`` opens one, which the Django backend tracks.
    """

    name = "mysqlclient"

    def state(self, conn: Any) -> int:
        if not conn.open or _readable(conn.fileno()):
            return BROKEN
        return IDLE if conn.get_autocommit() else IN_TRANSACTION


class PyMySQLAdapter(_MySQLAdapter):
    """PyMySQL exposes the server's status flags, but the in-transaction flag
    is not set by a read-only SELECT, which still holds metadata locks until
    the transaction ends: so autocommit off always means "roll back"."""

    name = "pymysql"

    def state(self, conn: Any) -> int:
        if not conn.open:
            return BROKEN
        status = conn.server_status
        if status & _SERVER_STATUS_AUTOCOMMIT and not status & _SERVER_STATUS_IN_TRANS:
            return IDLE
        return IN_TRANSACTION

    def ping(self, conn: Any) -> None:
        conn.ping(reconnect=False)

    def fileno(self, conn: Any) -> int | None:
        sock = conn._sock
        return sock.fileno() if sock is not None else None
