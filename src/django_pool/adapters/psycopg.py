"""Adapter for psycopg 3."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq

from .base import (
    BROKEN,
    IDLE,
    IN_TRANSACTION,
    REPORTED_SETTINGS,
    Adapter,
    is_pg_disconnect_code,
)

_IDLE = int(pq.TransactionStatus.IDLE)
_OPEN_TRANSACTION = frozenset({pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR})
_BAD = pq.ConnStatus.BAD
_REPORTED = tuple(name.encode() for name in REPORTED_SETTINGS)


class PsycopgAdapter(Adapter):
    name = "psycopg"

    def state(self, conn: Any) -> int:
        # libpq reports IDLE only for a good connection (UNKNOWN once it is
        # closed or lost), so the usual answer takes one look.
        status = conn.pgconn.transaction_status
        if status == _IDLE:
            return IDLE
        if status in _OPEN_TRANSACTION:
            return IN_TRANSACTION
        # UNKNOWN (closed or lost), or ACTIVE: a query is still running (an
        # unconsumed COPY, a result being streamed), and there is no safe way
        # to reuse such a session.
        return BROKEN

    def ping(self, conn: Any) -> None:
        # An empty query at the libpq level: one round trip, and unlike
        # conn.execute() it never opens a transaction on a non-autocommit
        # connection.
        pgconn = conn.pgconn
        result = pgconn.exec_(b"")
        if pgconn.status == _BAD or result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or pgconn.error_message).decode(errors="replace")
            raise psycopg.OperationalError(message.strip() or "connection is broken")

    def reported_settings(self, conn: Any) -> tuple[Any, ...]:
        # map(): no Python frame per name; this runs at every return.
        return tuple(map(conn.pgconn.parameter_status, _REPORTED))

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and is_pg_disconnect_code(exc.sqlstate)

    def fileno(self, conn: Any) -> int | None:
        return int(conn.pgconn.socket)
