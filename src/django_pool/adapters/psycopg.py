"""Adapter for psycopg 3."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq

from .base import BROKEN, IDLE, IN_TRANSACTION, Adapter, is_pg_disconnect_code

_IDLE = pq.TransactionStatus.IDLE
_ACTIVE = pq.TransactionStatus.ACTIVE
_BAD = pq.ConnStatus.BAD


class PsycopgAdapter(Adapter):
    name = "psycopg"

    def state(self, conn: Any) -> int:
        pgconn = conn.pgconn
        # Closed and broken (connection lost) both leave libpq's status BAD.
        if pgconn.status == _BAD:
            return BROKEN
        status = pgconn.transaction_status
        if status == _IDLE:
            return IDLE
        # ACTIVE means a query is still running (e.g. an unconsumed COPY or a
        # result being streamed): there is no safe way to reuse such a session.
        return BROKEN if status == _ACTIVE else IN_TRANSACTION

    def ping(self, conn: Any) -> None:
        # An empty query at the libpq level: one round trip, and unlike
        # conn.execute() it never opens a transaction on a non-autocommit
        # connection.
        pgconn = conn.pgconn
        result = pgconn.exec_(b"")
        if pgconn.status == _BAD or result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or pgconn.error_message).decode(errors="replace")
            raise psycopg.OperationalError(message.strip() or "connection is broken")

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and is_pg_disconnect_code(exc.sqlstate)

    def fileno(self, conn: Any) -> int | None:
        return int(conn.pgconn.socket)
