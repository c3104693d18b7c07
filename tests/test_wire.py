"""The statement-counting proxy of tests/wire.py, checked against the real servers.

Every driver the pool supports is run through the proxy, and what the proxy
records must be exactly what the driver sent: the same SQL, in the same order,
on the right connection. Fake upstream servers are used only for what the local
servers cannot show: a server that accepts TLS, and one that is not there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from django_pool.testservers import MySQLServer, PostgresServer
from tests.drivers import MYSQL_DRIVERS, POSTGRES_DRIVERS, Driver
from tests.wire import WireCounter

pytestmark = pytest.mark.timeout(120)


@dataclass
class Proxied:
    """One driver connecting through a proxy to its server."""

    driver: Driver
    proxy: WireCounter
    params: Any  # conninfo string or connect kwargs, pointing at the proxy
    kill_sql: str  # ends a session on the server; format with {id}
    admin: Callable[[str], Any]  # runs SQL on the server, not through the proxy

    def connect(self) -> Any:
        return self.driver.connect(self.params, True)

    def kill(self, conn: Any) -> None:
        self.admin(self.kill_sql.format(id=self.driver.session_id(conn)))


def _postgres(driver: Driver, request: pytest.FixtureRequest) -> Iterator[Proxied]:
    server: PostgresServer = request.getfixturevalue("pg_server")
    if server.host.startswith("/"):
        pytest.skip("the proxy speaks TCP, and PGHOST names a socket directory")
    conninfo = request.getfixturevalue("pg_conninfo")
    with WireCounter("postgresql", server.host, server.port) as proxy:
        yield Proxied(
            driver,
            proxy,
            f"{conninfo} host={proxy.host} port={proxy.port}",
            "SELECT pg_terminate_backend({id})",
            server.execute,
        )


def _mysql(driver: Driver, request: pytest.FixtureRequest) -> Iterator[Proxied]:
    server: MySQLServer = request.getfixturevalue("mysql_server")
    kwargs = request.getfixturevalue("mysql_connect_kwargs")
    with WireCounter("mysql", server.host, server.port) as proxy:
        yield Proxied(
            driver,
            proxy,
            {**kwargs, "host": proxy.host, "port": proxy.port},
            "KILL {id}",
            server.execute,
        )


@pytest.fixture(
    params=[
        *[
            pytest.param((_postgres, d), id=d.name, marks=pytest.mark.postgres)
            for d in POSTGRES_DRIVERS
        ],
        *[pytest.param((_mysql, d), id=d.name, marks=pytest.mark.mysql) for d in MYSQL_DRIVERS],
    ]
)
def proxied(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    make, driver = request.param
    yield from make(driver, request)


@pytest.fixture
def pg_proxied(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """psycopg 3 through a proxy."""
    yield from _postgres(POSTGRES_DRIVERS[0], request)


#: What the drivers say when their connection was closed under them.
LOST = r"(?i)terminat|lost|gone|closed|broken"


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # PyMySQL: "Already closed" once the link is lost
        conn.close()


def _wire_threads() -> set[threading.Thread]:
    """The proxies' threads: the pools of other tests start and end threads of their own."""
    return {t for t in threading.enumerate() if t.name.startswith("wire-")}


def _wait_for_threads(expected: set[threading.Thread]) -> None:
    deadline = time.monotonic() + 10
    while _wire_threads() != expected:
        assert time.monotonic() < deadline, f"threads left: {_wire_threads()}"
        time.sleep(0.01)


def test_records_each_statement_in_order(proxied: Proxied) -> None:
    proxy = proxied.proxy
    conn = proxied.connect()
    try:
        mark = proxy.mark()
        sqls = ["SELECT 1", "SELECT 'two'", "SELECT 3 + 4"]
        for sql in sqls:
            Driver.query(conn, sql)
        assert proxy.statements_since(mark) == [(0, sql) for sql in sqls]
        assert proxy.statements()[-3:] == proxy.statements_since(mark)
        assert proxy.connections_opened == 1
        assert proxy.connections_unreadable == 0
    finally:
        conn.close()


#: How each driver sends ``SELECT %s`` with the parameter 41.
PARAMETRIZED_SQL = {
    "psycopg": "SELECT $1",  # extended protocol: Parse with a placeholder, Bind, Execute
    "psycopg2": "SELECT 41",  # interpolated by the client, sent as a simple query
    "mysqlclient": "SELECT 41",
    "pymysql": "SELECT 41",
}


def test_records_a_parametrized_statement(proxied: Proxied) -> None:
    conn = proxied.connect()
    try:
        cursor = conn.cursor()
        mark = proxied.proxy.mark()
        cursor.execute("SELECT %s", (41,))
        assert cursor.fetchall()[0][0] == 41
        cursor.close()
        sql = PARAMETRIZED_SQL[proxied.driver.name]
        assert proxied.proxy.statements_since(mark) == [(0, sql)]
    finally:
        conn.close()


#: A cheap liveness check per driver, and how the proxy records it.
PINGS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "psycopg": (lambda conn: conn.execute(""), ""),  # psycopg_pool's check
    "psycopg2": (lambda conn: Driver.query(conn, "SELECT 1"), "SELECT 1"),  # no empty query
    "mysqlclient": (lambda conn: conn.ping(), "PING"),
    "pymysql": (lambda conn: conn.ping(), "PING"),
}


def test_records_a_ping(proxied: Proxied) -> None:
    ping, recorded = PINGS[proxied.driver.name]
    conn = proxied.connect()
    try:
        mark = proxied.proxy.mark()
        ping(conn)
        ping(conn)
        assert proxied.proxy.statements_since(mark) == [(0, recorded), (0, recorded)]
    finally:
        conn.close()


def test_tells_concurrent_connections_apart(proxied: Proxied) -> None:
    proxy = proxied.proxy
    first, second = proxied.connect(), proxied.connect()
    try:
        mark = proxy.mark()
        Driver.query(first, "SELECT 'a1'")
        Driver.query(second, "SELECT 'b1'")
        Driver.query(first, "SELECT 'a2'")
        assert proxy.statements_since(mark) == [
            (0, "SELECT 'a1'"),
            (1, "SELECT 'b1'"),
            (0, "SELECT 'a2'"),
        ]

        mark = proxy.mark()
        sent: dict[int, list[str]] = {0: [], 1: []}

        def run(index: int, conn: Any) -> None:
            for n in range(100):
                sql = f"SELECT {index * 1000 + n}"
                sent[index].append(sql)
                Driver.query(conn, sql)

        threads = [threading.Thread(target=run, args=item) for item in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        recorded = proxy.statements_since(mark)
        assert len(recorded) == 200
        for index in (0, 1):
            assert [s.sql for s in recorded if s.connection == index] == sent[index]
        assert proxy.connections_opened == 2
    finally:
        first.close()
        second.close()


def test_records_a_statement_longer_than_one_read(proxied: Proxied) -> None:
    conn = proxied.connect()
    try:
        sql = f"SELECT length('{'x' * 1_000_000}')"
        mark = proxied.proxy.mark()
        assert Driver.query(conn, sql)[0][0] == 1_000_000
        assert proxied.proxy.statements_since(mark) == [(0, sql)]
    finally:
        conn.close()


def test_either_side_closing_ends_the_connection(proxied: Proxied) -> None:
    idle = _wire_threads()
    conn = proxied.connect()
    Driver.query(conn, "SELECT 1")
    assert len(_wire_threads() - idle) == 2  # one thread per direction
    conn.close()  # the client leaves
    _wait_for_threads(idle)

    conn = proxied.connect()
    proxied.kill(conn)  # the server leaves
    _wait_for_threads(idle)
    with pytest.raises(Exception, match=LOST):
        Driver.query(conn, "SELECT 1")
    _close_quietly(conn)


def test_closing_the_proxy_ends_open_connections_and_threads(proxied: Proxied) -> None:
    before = _wire_threads()
    with WireCounter(proxied.proxy.protocol, *proxied.proxy.upstream) as proxy:
        params = proxied.params
        if isinstance(params, dict):
            params = {**params, "port": proxy.port}
        else:
            params = f"{params} port={proxy.port}"
        conns = [proxied.driver.connect(params, True) for _ in range(3)]
        for conn in conns:
            Driver.query(conn, "SELECT 1")
        assert len(_wire_threads() - before) == 1 + 2 * 3
    assert _wire_threads() == before
    for conn in conns:
        with pytest.raises(Exception, match=LOST):
            Driver.query(conn, "SELECT 1")
        _close_quietly(conn)


@pytest.mark.postgres
@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
def test_psycopg_simple_and_extended_protocol(pg_proxied: Proxied, sslmode: str) -> None:
    """With sslmode=prefer libpq asks for TLS first, and goes on in the clear on 'N'."""
    proxy = pg_proxied.proxy
    conn = pg_proxied.driver.connect(f"{pg_proxied.params} sslmode={sslmode}", False)
    try:
        assert proxy.statements() == []  # connecting runs no statement
        conn.execute("SELECT 1")  # no parameters: simple query
        conn.execute("SELECT %s::int + 1", [41])  # parameters: Parse, Bind, Execute
        conn.execute("SELECT 2", binary=True)  # binary results need the extended protocol
        for n in range(2):  # a named prepared statement: parsed once, executed twice
            conn.execute("SELECT %s::text", [str(n)], prepare=True)
        conn.commit()
        assert proxy.statements() == [
            (0, "BEGIN"),
            (0, "SELECT 1"),
            (0, "SELECT $1::int + 1"),
            (0, "SELECT 2"),
            (0, "SELECT $1::text"),
            (0, "SELECT $1::text"),
            (0, "COMMIT"),
        ]
        assert proxy.connections_unreadable == 0
    finally:
        conn.close()


@pytest.mark.mysql
@pytest.mark.parametrize("driver", MYSQL_DRIVERS, ids=lambda d: d.name)
def test_mysql_statement_split_over_two_packets(
    driver: Driver, mysql_server: MySQLServer, mysql_connect_kwargs: dict[str, Any]
) -> None:
    """A payload of 0xffffff bytes is sent as a full packet and an empty one."""
    with WireCounter("mysql", mysql_server.host, mysql_server.port) as proxy:
        conn = driver.connect({**mysql_connect_kwargs, "port": proxy.port}, True)
        try:
            head, tail = "SELECT length('", "')"
            sql = head + "x" * (0xFFFFFF - 1 - len(head) - len(tail)) + tail
            mark = proxy.mark()
            Driver.query(conn, sql)
            Driver.query(conn, "SELECT 1")
            assert proxy.statements_since(mark) == [(0, sql), (0, "SELECT 1")]
        finally:
            conn.close()


def _fake_server(answer: bytes, received: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A server that answers its client's first bytes, then records all it gets."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            chunks = [conn.recv(65536)]
            conn.sendall(answer)
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            received.append(b"".join(chunks))

    thread = threading.Thread(target=serve)
    thread.start()
    return listener, thread


def _mysql_packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


# What a naive reader would take for a statement, sent once the stream is encrypted.
_PG_QUERY = b"Q\x00\x00\x00\x0dSELECT 1\x00"
_MYSQL_QUERY = _mysql_packet(0, b"\x03SELECT 1")


@pytest.mark.parametrize(
    ("protocol", "hello", "answer", "then"),
    [
        pytest.param(
            "postgresql",
            (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"),  # SSLRequest
            b"S",
            b"\x16\x03\x01\x00\x05hello" + _PG_QUERY,
            id="postgresql-ssl-accepted",
        ),
        pytest.param(
            "postgresql",
            (8).to_bytes(4, "big") + (80877104).to_bytes(4, "big"),  # GSSENCRequest
            b"G",
            (5).to_bytes(4, "big") + b"token" + _PG_QUERY,
            id="postgresql-gss-accepted",
        ),
        pytest.param(
            "mysql",
            _mysql_packet(1, (0x800 | 0x200).to_bytes(4, "little") + bytes(28)),  # SSL request
            b"",
            b"\x16\x03\x01\x00\x05hello" + _MYSQL_QUERY,
            id="mysql-ssl",
        ),
    ],
)
def test_an_encrypted_stream_is_forwarded_but_not_read(
    protocol: Any, hello: bytes, answer: bytes, then: bytes
) -> None:
    received: list[bytes] = []
    listener, server = _fake_server(answer, received)
    with listener, WireCounter(protocol, *listener.getsockname()[:2]) as proxy:
        with socket.create_connection((proxy.host, proxy.port)) as client:
            client.sendall(hello)
            if answer:
                assert client.recv(1) == answer
            client.sendall(then)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""  # the server's close reaches the client
        server.join(10)
        assert received == [hello + then]
        assert proxy.statements() == []
        assert proxy.connections_unreadable == 1


def test_a_missing_server_closes_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    before = _wire_threads()
    with WireCounter("postgresql", "127.0.0.1", port) as proxy:
        with socket.create_connection((proxy.host, proxy.port)) as client:
            client.settimeout(10)
            assert client.recv(1) == b""
        assert proxy.connections_opened == 1
    assert _wire_threads() == before
