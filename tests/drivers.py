"""The real drivers the engine is tested with, behind one small interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Driver:
    name: str
    # connect(params, autocommit) -> a new DB-API connection
    connect: Callable[[Any, bool], Any]
    # SQL returning the server-side id of the session
    session_id_sql: str

    def session_id(self, conn: Any) -> int:
        return int(self.query(conn, self.session_id_sql)[0][0])

    @staticmethod
    def query(conn: Any, sql: str) -> list[tuple[Any, ...]]:
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()


def _psycopg(conninfo: str, autocommit: bool) -> Any:
    import psycopg

    return psycopg.connect(conninfo, autocommit=autocommit)


def _psycopg2(conninfo: str, autocommit: bool) -> Any:
    import psycopg2

    conn = psycopg2.connect(conninfo)
    conn.autocommit = autocommit
    return conn


def _mysqlclient(kwargs: dict[str, Any], autocommit: bool) -> Any:
    import MySQLdb

    return MySQLdb.connect(**kwargs, autocommit=autocommit)


def _pymysql(kwargs: dict[str, Any], autocommit: bool) -> Any:
    import pymysql

    return pymysql.connect(**kwargs, autocommit=autocommit)


POSTGRES_DRIVERS = [
    Driver("psycopg", _psycopg, "SELECT pg_backend_pid()"),
    Driver("psycopg2", _psycopg2, "SELECT pg_backend_pid()"),
]
MYSQL_DRIVERS = [
    Driver("mysqlclient", _mysqlclient, "SELECT CONNECTION_ID()"),
    Driver("pymysql", _pymysql, "SELECT CONNECTION_ID()"),
]
