"""The engine's behaviours against real servers, for every supported driver.

PostgreSQL through psycopg 3 and psycopg2, MariaDB/MySQL through mysqlclient and
PyMySQL. Each test runs once per driver; faults are real: sessions are killed
on the server while idle and while in use.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from django_pool import ConnectionFailed, Pool, PoolTimeout
from tests.drivers import MYSQL_DRIVERS, POSTGRES_DRIVERS, Driver
from tests.wire import WireCounter


@dataclass
class Server:
    """One driver on one server, with the admin operations the tests need."""

    driver: Driver
    params: Any  # conninfo string or connect kwargs
    admin: Callable[[str], Any]  # runs SQL as an administrator in the test database
    kill_sql: str  # format with {id}
    sessions_sql: str  # lists live session ids
    sleep_sql: str  # sleeps 10 ms
    # (params with one wrong setting, the server's words, a password they carry)
    wrong: list[tuple[Any, str, str]]
    # A proxy's protocol and the server's address; params to connect through
    # a proxy at (host, port) instead.
    protocol: Literal["postgresql", "mysql"]
    address: tuple[str, int]
    through: Callable[[str, int], Any]

    def connect(self, autocommit: bool = True, params: Any = None) -> Any:
        return self.driver.connect(self.params if params is None else params, autocommit)

    def kill(self, session_id: int) -> None:
        self.admin(self.kill_sql.format(id=session_id))
        deadline = time.monotonic() + 5
        while session_id in {int(row[0]) for row in self.admin(self.sessions_sql)}:
            assert time.monotonic() < deadline, "session did not end"
            time.sleep(0.01)


def _postgres(driver: Driver, request: pytest.FixtureRequest) -> Server:
    pg_server = request.getfixturevalue("pg_server")
    conninfo = request.getfixturevalue("pg_conninfo")
    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    return Server(
        driver=driver,
        params=conninfo,
        admin=lambda sql: pg_server.execute(sql, dbname="django_pool_test"),
        kill_sql="SELECT pg_terminate_backend({id})",
        sessions_sql="SELECT pid FROM pg_stat_activity",
        sleep_sql="SELECT pg_sleep(0.01)",
        protocol="postgresql",
        address=(pg_server.host, pg_server.port),
        through=lambda host, port: f"{conninfo} host={host} port={port}",
        wrong=[
            (
                f"{conninfo} dbname=dp_no_such_db password={secret}",
                'database "dp_no_such_db" does not exist',
                secret,
            ),
            (
                f"{conninfo} user=dp_no_such_user password={secret}",
                'role "dp_no_such_user" does not exist',
                secret,
            ),
        ],
    )


def _mysql(driver: Driver, request: pytest.FixtureRequest) -> Server:
    mysql_server = request.getfixturevalue("mysql_server")
    kwargs = request.getfixturevalue("mysql_connect_kwargs")
    password = f"s3cret-{uuid.uuid4().hex[:8]}"
    return Server(
        driver=driver,
        params=kwargs,
        admin=lambda sql: mysql_server.execute(sql, "django_pool_test"),
        kill_sql="KILL {id}",
        sessions_sql="SELECT ID FROM information_schema.PROCESSLIST",
        sleep_sql="SELECT SLEEP(0.01)",
        protocol="mysql",
        address=(mysql_server.host, mysql_server.port),
        through=lambda host, port: {**kwargs, "host": host, "port": port},
        wrong=[
            ({**kwargs, "database": "dp_no_such_db"}, "Unknown database 'dp_no_such_db'", ""),
            (
                {**kwargs, "user": "dp_no_such_user", "password": password},
                "Access denied for user 'dp_no_such_user'",
                password,
            ),
        ],
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
def server(request: pytest.FixtureRequest) -> Server:
    make, driver = request.param
    return make(driver, request)


@pytest.fixture
def make_pool(server: Server) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(autocommit: bool = True, params: Any = None, **options: Any) -> Pool:
        options.setdefault("timeout", 10.0)
        pool = Pool(lambda: server.connect(autocommit, params), **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(timeout=0)


def test_lends_the_hot_connection_and_runs_queries(make_pool, server):
    pool = make_pool(min_size=3)
    pool.wait()
    sessions = set()
    for _ in range(10):
        with pool.connection() as conn:
            sessions.add(server.driver.session_id(conn))
            assert server.driver.query(conn, "SELECT 41 + 1") == [(42,)]
    assert len(sessions) == 1
    assert pool.get_stats()["connections_num"] == 3


def test_open_transaction_is_rolled_back_on_return(make_pool, server):
    table = f"dp_rollback_{server.driver.name}"
    server.admin(f"DROP TABLE IF EXISTS {table}")
    server.admin(f"CREATE TABLE {table} (x int)")
    pool = make_pool(min_size=1, autocommit=False)
    pool.wait()
    conn = pool.getconn()
    server.driver.query(conn, f"INSERT INTO {table} VALUES (1)")
    pool.putconn(conn)
    assert server.admin(f"SELECT COUNT(*) FROM {table}")[0][0] == 0
    again = pool.getconn()
    assert again is conn
    assert server.driver.query(again, f"SELECT COUNT(*) FROM {table}")[0][0] == 0
    pool.putconn(again)
    server.admin(f"DROP TABLE {table}")


def test_session_killed_while_in_use_is_replaced(make_pool, server):
    pool = make_pool(min_size=1)
    pool.wait()
    conn = pool.getconn()
    victim = server.driver.session_id(conn)
    server.kill(victim)
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own class
        server.driver.query(conn, "SELECT 1")
    pool.putconn(conn)  # returned broken: seen without a round trip
    with pool.connection() as fresh:
        assert server.driver.session_id(fresh) != victim
    stats = pool.get_stats()
    assert stats["returns_bad"] == 1 and stats["connections_lost"] == 1


def test_session_killed_while_idle_is_never_lent(make_pool, server):
    pool = make_pool(min_size=1, validate_after=0.2)
    pool.wait()
    with pool.connection() as conn:
        victim = server.driver.session_id(conn)
    server.kill(victim)
    time.sleep(0.25)  # past validate_after: the pool pings before lending
    with pool.connection() as conn:
        assert server.driver.session_id(conn) != victim
    assert pool.get_stats()["connections_lost"] == 1


def test_validate_every_checkout_catches_a_kill_at_once(make_pool, server):
    pool = make_pool(min_size=1, validate_after=0)
    pool.wait()
    with pool.connection() as conn:
        victim = server.driver.session_id(conn)
    server.kill(victim)
    with pool.connection() as conn:
        assert server.driver.session_id(conn) != victim


def test_first_disconnect_makes_recent_idle_connections_suspect(make_pool, server):
    pool = make_pool(min_size=0, max_size=2, validate_after=60)
    first, second = pool.getconn(), pool.getconn()
    victims = {server.driver.session_id(first), server.driver.session_id(second)}
    pool.putconn(first)
    pool.putconn(second)
    for victim in victims:
        server.kill(victim)
    # The top connection was used a moment ago, so it is lent unchecked and fails...
    with pytest.raises(Exception), pool.connection() as conn:  # noqa: B017
        server.driver.query(conn, "SELECT 1")
    # ...but from then on the other one, just as recent, is checked first.
    with pool.connection() as conn:
        assert server.driver.session_id(conn) not in victims
    assert pool.get_stats()["connections_lost"] == 2


def test_wrong_settings_fail_fast_with_the_cause(make_pool, server):
    for params, cause, secret in server.wrong:
        pool = make_pool(params=params, min_size=1, open=False)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            pool.open(wait=True, timeout=30)
        assert time.monotonic() - started < 5
        assert cause in str(info.value)
        with pytest.raises(PoolTimeout) as timeout_info:
            pool.getconn(timeout=0.5)
        assert cause in str(timeout_info.value)
        stats = pool.get_stats()
        assert cause in stats["last_connection_error"]
        if secret:
            for text in (str(info.value), str(timeout_info.value), repr(stats), repr(pool)):
                assert secret not in text


def test_stats_follow_real_traffic(make_pool, server):
    pool = make_pool(min_size=2, max_size=2)
    pool.wait()

    def work() -> None:
        for _ in range(5):
            with pool.connection() as conn:
                server.driver.query(conn, server.sleep_sql)

    workers = [threading.Thread(target=work) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    stats = pool.get_stats()
    assert stats["requests_num"] == 20
    assert stats["requests_queued"] > 0
    assert stats["usage_ms"] >= 20 * 10
    assert stats["pool_size"] == 2 and stats["pool_available"] == 2
    assert stats["connections_num"] == 2 and stats["connections_errors"] == 0


@pytest.mark.timeout(60)  # a regression hangs in the driver: fail, don't hang the run
def test_a_network_that_stops_passing_bytes_never_holds_a_checkout_past_its_timeout(
    make_pool, server
):
    """The TCP connections stay open, nothing gets through: a proxy of the test's own."""
    with WireCounter(server.protocol, *server.address) as proxy:
        params = server.through(proxy.host, proxy.port)
        # Every checkout pings: the ping is what would hang.
        pool = make_pool(params=params, min_size=2, max_size=2, validate_after=0, timeout=3)
        pool.wait()
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn()
        waited = time.monotonic() - started
        assert waited < 3 + 1, f"a checkout with timeout=3 took {waited:.1f} s"
        assert pool.get_stats()["connections_lost"] >= 1  # the silent ones were dropped
        proxy.resume()
        conn = pool.getconn(timeout=10)  # new connections once bytes flow again
        try:
            assert server.driver.query(conn, "SELECT 1") == [(1,)]
        finally:
            pool.putconn(conn)


@pytest.mark.mysql
@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", MYSQL_DRIVERS, ids=lambda d: d.name)
def test_mysql_read_timeout_bounds_a_query_on_a_silent_network(
    driver, mysql_server, mysql_connect_kwargs
):
    """A query on a connection already lent: bounded by the driver's read_timeout."""
    with WireCounter("mysql", mysql_server.host, mysql_server.port) as proxy:
        params = {**mysql_connect_kwargs, "host": proxy.host, "port": proxy.port}
        pool = Pool(lambda: driver.connect({**params, "read_timeout": 2}, True), min_size=1)
        try:
            conn = pool.getconn(timeout=10)
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(Exception, match=r"(?i)lost connection|timed out|timeout"):
                driver.query(conn, "SELECT 1")
            assert time.monotonic() - started < 2 + 2
            pool.putconn(conn)  # broken: discarded
            proxy.resume()
        finally:
            pool.close(timeout=0)
