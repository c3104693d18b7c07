"""PostgreSQL-only faults, with psycopg 3 and with psycopg2: the server
restarted under load or down for a while, and the server at max_connections.

Tests that restart, stop or fill a server use the session's private one
(``private_pg``, embedded), never the one PGHOST names. The behaviours every
driver shares are in test_pool_servers.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg2
import pytest

from django_pool import Pool, PoolTimeout
from tests.conftest import TEST_DATABASE
from tests.drivers import POSTGRES_DRIVERS, Driver

pytestmark = pytest.mark.postgres

DISCONNECTED = (psycopg.OperationalError, psycopg2.OperationalError)


@pytest.fixture(params=POSTGRES_DRIVERS, ids=lambda d: d.name)
def driver(request: pytest.FixtureRequest) -> Driver:
    return request.param


@pytest.fixture
def private_conninfo(private_pg) -> str:
    return private_pg.conninfo(TEST_DATABASE)


@pytest.fixture
def make_pool(driver, pg_conninfo) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(conninfo: str | None = None, autocommit: bool = True, **options: Any) -> Pool:
        info = conninfo or pg_conninfo
        options.setdefault("timeout", 10.0)
        pool = Pool(lambda: driver.connect(info, autocommit), **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(timeout=0)


def terminate(pg_server, session_id: int) -> None:
    rows = pg_server.execute(f"SELECT pg_terminate_backend({session_id})")
    assert rows == [(True,)]
    # pg_terminate_backend only signals: wait until the backend is gone.
    deadline = time.monotonic() + 5
    while pg_server.execute(f"SELECT 1 FROM pg_stat_activity WHERE pid = {session_id}"):
        assert time.monotonic() < deadline, "backend did not exit"
        time.sleep(0.01)


def test_server_restart_under_load(make_pool, driver, private_pg, private_conninfo):
    pool = make_pool(private_conninfo, min_size=4, validate_after=60, timeout=30)
    pool.wait()
    stop = threading.Event()
    failures: list[str] = []
    successes_after_restart = [0]
    restarted = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                with pool.connection() as conn:
                    driver.query(conn, "SELECT 1")
                if restarted.is_set():
                    successes_after_restart[0] += 1
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    private_pg.restart()
    restarted.set()
    time.sleep(2.0)
    failures_before_settled = len(failures)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    # Each connection open at the restart may fail once, when it is first used
    # after it; none fails twice and no request fails once the pool has seen it.
    assert failures_before_settled <= 4 + 4, failures
    assert len(failures) == failures_before_settled, failures[failures_before_settled:]
    assert successes_after_restart[0] > 50


def test_server_at_max_connections_reports_the_cause_and_recovers(
    make_pool, driver, private_conninfo
):
    # The private server: filling the shared one would lock everybody else out.
    pool = make_pool(private_conninfo, min_size=0, max_size=2, name="crowded", validate_after=None)
    # Take every slot the server has, superuser-reserved ones included.
    hogs = []
    try:
        while len(hogs) < 1000:
            try:
                hogs.append(driver.connect(private_conninfo, True))
            except Exception as exc:
                assert "too many clients" in str(exc) or "reserved" in str(exc), exc
                break
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.5)
        message = str(info.value)
        assert "'crowded'" in message and "0 open" in message
        assert "too many clients" in message or "reserved" in message
        assert pool.get_stats()["connections_errors"] >= 1
    finally:
        for hog in hogs:
            hog.close()
    # Slots free again: the pool recovers within its back-off.
    with pool.connection(timeout=15) as conn:
        assert driver.query(conn, "SELECT 1") == [(1,)]


def test_a_connection_lent_across_a_restart_is_checked_before_it_is_lent_again(
    make_pool, driver, private_pg, private_conninfo
):
    pool = make_pool(private_conninfo, min_size=2, max_size=2, validate_after=60)
    pool.wait()
    across = pool.getconn()  # lent while the server restarts, never used
    private_pg.restart()
    first = pool.getconn()
    with pytest.raises(DISCONNECTED):  # idle across the restart
        driver.query(first, "SELECT 1")
    pool.putconn(first)  # broken: the pool has now seen a disconnect
    pool.putconn(across)  # returned without an error, but dead all the same
    for _ in range(2):  # whichever is lent now works
        conn = pool.getconn(timeout=10)
        try:
            assert driver.query(conn, "SELECT 1") == [(1,)]
        finally:
            pool.putconn(conn)


def test_waiting_requests_are_served_within_a_second_of_the_server_coming_back(
    make_pool, driver, private_pg, private_conninfo
):
    pool = make_pool(private_conninfo, min_size=1, max_size=2, timeout=30)
    pool.wait()
    served_at: list[float] = []

    def request() -> None:
        with pool.connection() as conn:
            driver.query(conn, "SELECT 1")
        served_at.append(time.monotonic())

    with private_pg.outage():
        pool.drain()  # the open connections are gone with the server
        # Long enough for the back-off to grow well past a second.
        threads = [threading.Thread(target=request) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(8)
        assert not served_at
    back_at = time.monotonic()
    for thread in threads:
        thread.join(30)
    assert len(served_at) == 3
    assert max(served_at) - back_at < 1.5, f"served {max(served_at) - back_at:.2f} s after"


NETWORK_CLIENT = r"""
import json, os, sys, time

name, dsn, mode = os.environ["DJP_DRIVER"], os.environ["DJP_DSN"], os.environ["DJP_MODE"]
if name == "psycopg":
    import psycopg as driver
    conn = driver.connect(dsn, autocommit=True)
else:
    import psycopg2 as driver
    conn = driver.connect(dsn)
    conn.autocommit = True
print("connected", flush=True)
sys.stdin.readline()  # the test says when
cursor = conn.cursor()
try:
    # keepalive: the query is on the server when the link goes; tcp: it is sent after.
    cursor.execute("SELECT pg_sleep(60)" if mode == "keepalive" else "SELECT 1")
    print(json.dumps({"error": None}), flush=True)
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""

NETWORK_OPTIONS = {
    # Data sent on a dead route is never acknowledged.
    "tcp": "tcp_user_timeout=2000",
    # Waiting for an answer from a peer that has gone: probes go unanswered.
    "keepalive": "keepalives=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=2",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", list(NETWORK_OPTIONS))
def test_libpq_options_bound_a_query_on_a_lost_route(driver, pg_server, pg_conninfo, mode):
    """docs/configuration.md's PostgreSQL examples, on a route that silently loses
    every packet: a host of the test's own in a network namespace, its link cut."""
    from tests import netns
    from tests.wire import WireCounter

    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a network namespace of its own: {reason}")
    with (
        netns.IsolatedHost() as host,
        WireCounter(
            "postgresql", pg_server.host, pg_server.port, host=netns.HOST_ADDRESS
        ) as proxy,
    ):
        dsn = f"{pg_conninfo} host={proxy.host} port={proxy.port} {NETWORK_OPTIONS[mode]}"
        env = {**os.environ, "DJP_DRIVER": driver.name, "DJP_DSN": dsn, "DJP_MODE": mode}
        client = host.python(NETWORK_CLIENT, env)
        try:
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline().strip() == "connected", client.stderr
            if mode == "keepalive":
                client.stdin.write("go\n")
                client.stdin.flush()
                time.sleep(0.5)  # the query has reached the server
                host.cut()
            else:
                host.cut()
                client.stdin.write("go\n")
                client.stdin.flush()
            cut = time.monotonic()
            result = json.loads(client.stdout.readline())
            waited = time.monotonic() - cut
        finally:
            client.kill()
            client.wait(10)
    assert result["error"] is not None, result
    # Without the option the query would wait for TCP's own limits (minutes).
    assert waited < 15, f"the query failed only {waited:.1f} s after the link went"
