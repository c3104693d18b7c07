"""Fork safety with real ``os.fork()`` and real servers, for every driver.

Without the fork handling, the child's ``pool.close()`` (or the drivers'
finalisers at garbage collection) would send a goodbye on the parent's sockets
and the server would end the parent's sessions; or the child would borrow an
idle connection and two processes would talk on one session.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from django_pool import Pool
from tests.drivers import MYSQL_DRIVERS, POSTGRES_DRIVERS, Driver

# Python 3.12+ warns that forking a threaded process may deadlock the child on a
# lock some other thread held. That is the case under test: the pool's threads
# exist by design, and its fork handler takes every pool lock before the fork.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def run_in_child(child: Callable[[], Any]) -> Any:
    """Fork, run ``child`` in the child, and return what it returned (as JSON)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            payload = {"result": child()}
        except BaseException as exc:
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(payload).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    payload = json.loads(data)
    assert "error" not in payload, payload.get("error")
    return payload["result"]


def check_fork_safety(driver: Driver, params: Any, alive: Callable[[], set[int]]) -> None:
    pool = Pool(lambda: driver.connect(params, True), min_size=3, timeout=10)
    try:
        pool.wait()
        held = pool.getconn()  # lent at fork time, like a preloaded app's connection
        parent_sessions = {driver.session_id(held)}
        idle = [pool.getconn() for _ in range(2)]
        parent_sessions |= {driver.session_id(c) for c in idle}
        for conn in idle:
            pool.putconn(conn)

        def child() -> list[int]:
            gc.collect()
            sessions = []
            for _ in range(3):
                with pool.connection() as conn:
                    sessions.append(driver.session_id(conn))
                    assert driver.query(conn, "SELECT 1") == [(1,)]
            pool.putconn(held)  # the inherited connection: accepted, not used
            held.close()  # even closing it by hand must not end the parent's session
            pool.close()
            gc.collect()
            return sessions

        child_sessions = set(run_in_child(child))
        gc.collect()
        assert not child_sessions & parent_sessions, "the child used a parent's connection"
        # Every parent session survived the child's life and death...
        assert parent_sessions <= alive()
        # ...and still works, from the parent, through the pool.
        assert driver.query(held, "SELECT 1") == [(1,)]
        pool.putconn(held)
        seen = set()
        for conn in [pool.getconn() for _ in range(3)]:
            seen.add(driver.session_id(conn))
            pool.putconn(conn)
        assert seen == parent_sessions
        assert pool.get_stats()["connections_lost"] == 0
    finally:
        pool.close(timeout=0)


@pytest.mark.postgres
@pytest.mark.parametrize("driver", POSTGRES_DRIVERS, ids=lambda d: d.name)
def test_fork_postgres(driver, pg_server, pg_conninfo):
    def alive() -> set[int]:
        return {row[0] for row in pg_server.execute("SELECT pid FROM pg_stat_activity")}

    check_fork_safety(driver, pg_conninfo, alive)


@pytest.mark.mysql
@pytest.mark.parametrize("driver", MYSQL_DRIVERS, ids=lambda d: d.name)
def test_fork_mysql(driver, mysql_server, mysql_connect_kwargs):
    def alive() -> set[int]:
        return {
            int(row[0])
            for row in mysql_server.execute("SELECT ID FROM information_schema.PROCESSLIST")
        }

    check_fork_safety(driver, mysql_connect_kwargs, alive)


@pytest.mark.postgres
def test_child_of_child_and_parent_all_keep_their_own(pg_server, pg_conninfo):
    driver = POSTGRES_DRIVERS[1]  # psycopg2: no fork protection of its own
    pool = Pool(lambda: driver.connect(pg_conninfo, True), min_size=1, timeout=10)
    try:
        pool.wait()
        with pool.connection() as conn:
            parent = driver.session_id(conn)

        def child() -> list[int]:
            with pool.connection() as conn:
                mine = driver.session_id(conn)
            grandchild = run_in_child(lambda: _session_via(pool, driver))
            with pool.connection() as conn:
                still_mine = driver.session_id(conn)
            pool.close()
            return [mine, grandchild, still_mine]

        mine, grandchild, still_mine = run_in_child(child)
        assert len({parent, mine, grandchild}) == 3
        assert still_mine == mine
        with pool.connection() as conn:
            assert driver.session_id(conn) == parent
    finally:
        pool.close(timeout=0)


def test_a_childs_pool_keeps_its_listeners(pg_conninfo):
    driver = POSTGRES_DRIVERS[0]
    heard: list[str] = []
    pool = Pool(lambda: driver.connect(pg_conninfo, True), min_size=1, timeout=10)
    try:
        pool.add_listener(lambda kind, seconds: heard.append(kind))
        pool.wait()
        pool.putconn(pool.getconn())
        assert heard == ["connect", "wait", "use"]

        def child() -> list[str]:
            heard.clear()
            pool.putconn(pool.getconn())  # a new connection: the child's own
            pool.close()
            return heard

        assert run_in_child(child) == ["connect", "wait", "use"]
    finally:
        pool.close(timeout=0)


def _session_via(pool: Pool, driver: Driver) -> int:
    with pool.connection() as conn:
        return driver.session_id(conn)


GEVENT_FORK_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json, os, sys, time

from django_pool import Pool
from tests.fakes import FakeAdapter, FakeConnector

# Connects take 0.3 s, so the pool's connector greenlets are under way at the fork.
connector = FakeConnector(delay=0.3)
pool = Pool(connector, FakeAdapter(), min_size=3, num_workers=3, max_idle=600)
time.sleep(0.05)
pid = os.fork()
if pid == 0:
    attempts_at_fork = connector.attempts
    time.sleep(3)  # the child asks for nothing
    print(json.dumps({
        "attempts": connector.attempts - attempts_at_fork,
        "connecting": pool._connecting,
        "nconns": pool._nconns,
    }))
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_under_gevent_nothing_the_parent_started_runs_in_the_child(tmp_path):
    """gunicorn -k gevent --preload: the pool's threads are greenlets, which survive
    os.fork(). In the child they must stop, and the child opens nothing it did
    not ask for (it opened ~245 connections a second before)."""
    pytest.importorskip("gevent")
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_FORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "src")])},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child == {"attempts": 0, "connecting": 0, "nconns": 0}, child
