"""Driver adapters: one small class per DB-API driver.

:func:`adapter_for` picks the right one from a connection or driver module, so
``Pool(connect)`` works without naming the driver.
"""

from __future__ import annotations

import types
from typing import Any

from .base import BROKEN, IDLE, IN_TRANSACTION, Adapter

__all__ = ["BROKEN", "IDLE", "IN_TRANSACTION", "Adapter", "adapter_for"]


def adapter_for(conn_or_module: Any) -> Adapter:
    """Return the adapter for a connection object, or for a driver module.

    Raises ``TypeError`` naming the unsupported driver.
    """
    if isinstance(conn_or_module, types.ModuleType):
        root = conn_or_module.__name__.split(".")[0]
    else:
        root = type(conn_or_module).__module__.split(".")[0]
    if root == "psycopg":
        from .psycopg import PsycopgAdapter

        return PsycopgAdapter()
    if root == "psycopg2":
        from .psycopg2 import Psycopg2Adapter

        return Psycopg2Adapter()
    if root == "MySQLdb":
        from .mysql import MySQLClientAdapter

        return MySQLClientAdapter()
    if root == "pymysql":
        from .mysql import PyMySQLAdapter

        return PyMySQLAdapter()
    raise TypeError(
        f"no django_pool adapter for driver {root!r}; "
        "supported: psycopg, psycopg2, MySQLdb (mysqlclient), pymysql"
    )
