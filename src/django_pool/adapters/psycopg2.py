"""Adapter for psycopg2."""

from __future__ import annotations

from typing import Any

import psycopg2
from psycopg2 import extensions

from .base import (
    BROKEN,
    IDLE,
    IN_TRANSACTION,
    REPORTED_SETTINGS,
    Adapter,
    is_pg_disconnect_code,
)

_IDLE = extensions.TRANSACTION_STATUS_IDLE
_ACTIVE = extensions.TRANSACTION_STATUS_ACTIVE
_UNKNOWN = extensions.TRANSACTION_STATUS_UNKNOWN


class Psycopg2Adapter(Adapter):
    name = "psycopg2"

    def state(self, conn: Any) -> int:
        if conn.closed:
            return BROKEN
        status = conn.info.transaction_status
        if status == _IDLE:
            return IDLE
        return BROKEN if status in (_ACTIVE, _UNKNOWN) else IN_TRANSACTION

    def ping(self, conn: Any) -> None:
        # psycopg2 refuses an empty query, and on a non-autocommit connection
        # any statement opens a transaction: close it again if we opened one.
        was_idle = conn.info.transaction_status == _IDLE
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        if was_idle and not conn.autocommit:
            conn.rollback()

    def reported_settings(self, conn: Any) -> tuple[Any, ...]:
        # map(): no Python frame per name; this runs at every return.
        return tuple(map(conn.get_parameter_status, REPORTED_SETTINGS))

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, psycopg2.InterfaceError):
            return "closed" in str(exc)
        return isinstance(exc, psycopg2.OperationalError) and is_pg_disconnect_code(exc.pgcode)
