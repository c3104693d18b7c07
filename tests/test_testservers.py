"""Tests of django_pool.testservers and of the fixtures built on it.

They talk to real servers: the rest of the suite trusts these helpers to hand
out working addresses, so a broken helper should fail here, plainly, rather
than as a confusing failure in a pool test.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg2
import pytest
from psycopg.conninfo import conninfo_to_dict

from django_pool import testservers
from django_pool.testservers import MySQLServer, PostgresServer, ServerUnavailable

TEST_DATABASE = "django_pool_test"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port held bound but not listening, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# ----------------------------------------------------------------- pure parts


def test_repr_never_shows_the_password() -> None:
    pg = PostgresServer("127.0.0.1", 5432, "u", "s3cret-pw", "external")
    my = MySQLServer("127.0.0.1", 3306, "u", "s3cret-pw")
    for text in (repr(pg), str(pg), repr(my), str(my)):
        assert "s3cret-pw" not in text
    assert "127.0.0.1" in repr(pg)
    assert "kind='external'" in repr(pg)


def test_conninfo_quotes_awkward_values() -> None:
    pg = PostgresServer("/run/my sockets", 6543, "we ird", "p'a\\ss w", "external")
    assert conninfo_to_dict(pg.conninfo("d b")) == {
        "host": "/run/my sockets",
        "port": "6543",
        "user": "we ird",
        "password": "p'a\\ss w",
        "dbname": "d b",
    }


def test_conninfo_and_url_leave_out_an_empty_password() -> None:
    pg = PostgresServer("127.0.0.1", 5432, "postgres", "", "external")
    assert "password" not in pg.conninfo()
    assert pg.url("x") == "postgres://postgres@127.0.0.1:5432/x"


@pytest.mark.parametrize(
    ("host", "password"),
    [("127.0.0.1", "p@ss:w/rd?"), ("::1", "x"), ("/var/run/postgresql", "")],
)
def test_url_means_the_same_as_conninfo(host: str, password: str) -> None:
    pg = PostgresServer(host, 5433, "us er", password, "external")
    assert conninfo_to_dict(pg.url("my db")) == conninfo_to_dict(pg.conninfo("my db"))


def test_external_server_is_never_stopped() -> None:
    with pytest.raises(ServerUnavailable, match="refusing to stop"):
        PostgresServer("127.0.0.1", 5432, "postgres", "", "external").stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "db.example.invalid"])
def test_an_external_server_is_never_restarted_or_taken_down(host: str) -> None:
    # It may be the developer's own database, with other work using it.
    server = PostgresServer(host, 5432, "postgres", "", "external")
    with pytest.raises(ServerUnavailable, match="refusing to restart"):
        server.restart()
    with pytest.raises(ServerUnavailable, match="refusing to stop"), server.outage():
        pass


# ----------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_pg_conninfo_connects_to_the_test_database(pg_conninfo: str) -> None:
    with psycopg.connect(pg_conninfo) as conn:
        row = conn.execute("SELECT current_database(), 1 + 1").fetchone()
    assert row == (TEST_DATABASE, 2)


@pytest.mark.postgres
def test_pg_conninfo_works_with_psycopg2(pg_conninfo: str) -> None:
    conn = psycopg2.connect(pg_conninfo)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == (TEST_DATABASE,)
    finally:
        conn.close()


@pytest.mark.postgres
def test_pg_url_connects(pg_server: PostgresServer) -> None:
    with psycopg.connect(pg_server.url(TEST_DATABASE)) as conn:
        row = conn.execute("SELECT current_database(), current_user").fetchone()
    assert row == (TEST_DATABASE, pg_server.user)


@pytest.mark.postgres
def test_pg_execute_returns_rows_or_none(pg_server: PostgresServer) -> None:
    assert pg_server.execute("SELECT 1, 'a'") == [(1, "a")]
    assert pg_server.execute("SELECT current_database()", dbname=TEST_DATABASE) == [
        (TEST_DATABASE,)
    ]
    assert pg_server.execute("SET application_name = 'x'") is None


@pytest.mark.postgres
def test_pg_ensure_database_is_idempotent(pg_server: PostgresServer) -> None:
    name = f"django_pool_tmp_{uuid.uuid4().hex[:8]}-Mixed"
    try:
        pg_server.ensure_database(name)
        pg_server.ensure_database(name)
        rows = pg_server.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", params=[name]
        )
        assert rows == [(1,)]
        assert pg_server.execute("SELECT current_database()", dbname=name) == [(name,)]
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.mark.postgres
def test_postgres_server_is_cached_per_process(pg_server: PostgresServer) -> None:
    assert testservers.postgres_server() is pg_server


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_embedded_fallback_starts_restarts_and_stops(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(closed_port))
    server = testservers.postgres_server(cached=False)
    try:
        assert server.kind == "embedded"
        assert (server.host, server.user) == ("127.0.0.1", "postgres")
        assert server.port != closed_port
        assert server.execute("SELECT 1") == [(1,)]
        # The cache still holds the session's server, not this one.
        assert testservers.postgres_server() is not server

        with psycopg.connect(server.conninfo()) as conn:
            before = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        server.restart()
        with psycopg.connect(server.url()) as conn:
            after = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        assert before is not None and after is not None and after[0] > before[0]
        with server.outage(), pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.conninfo(), connect_timeout=2)
        assert server.execute("SELECT 1") == [(1,)]  # back, on the same port
    finally:
        server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.conninfo(), connect_timeout=2)
    server.stop()  # a second stop is harmless


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_a_server_left_by_a_killed_process_is_removed_by_the_next_start() -> None:
    """atexit does not run on SIGKILL; the next embedded start cleans up instead."""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal\n"
            "from django_pool.testservers import start_embedded_postgres\n"
            "server = start_embedded_postgres()\n"
            "print(server.port, server._cluster.pgdata, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    port_text, pgdata_text = child.stdout.split()
    orphan_port, orphan_pgdata = int(port_text), Path(pgdata_text)
    assert child.returncode == -signal.SIGKILL
    assert orphan_pgdata.is_dir()
    with psycopg.connect(f"host=127.0.0.1 port={orphan_port} user=postgres dbname=postgres"):
        pass  # the orphan is really still running

    server = testservers.start_embedded_postgres()
    try:
        assert not orphan_pgdata.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                f"host=127.0.0.1 port={orphan_port} user=postgres dbname=postgres",
                connect_timeout=2,
            )
    finally:
        server.stop()


@pytest.mark.postgres
def test_a_server_that_answers_but_refuses_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Something listens but is no usable PostgreSQL: say so, do not fall back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        listener.settimeout(0.1)
        done = threading.Event()

        def hang_up_on_everyone() -> None:
            # libpq may try twice (with and without TLS): refuse every attempt.
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.close()

        thread = threading.Thread(target=hang_up_on_everyone, daemon=True)
        thread.start()
        monkeypatch.setenv("PGHOST", "127.0.0.1")
        monkeypatch.setenv("PGPORT", str(listener.getsockname()[1]))
        monkeypatch.setenv("PGPASSWORD", "do-not-print-me")
        try:
            with pytest.raises(ServerUnavailable, match="answered but") as info:
                testservers.postgres_server(cached=False)
        finally:
            done.set()
            thread.join(5)
    assert "do-not-print-me" not in str(info.value)


# ---------------------------------------------------------------- MySQL/MariaDB


@pytest.mark.mysql
def test_mysql_kwargs_connect_with_mysqlclient(mysql_connect_kwargs: dict[str, Any]) -> None:
    import MySQLdb

    conn = MySQLdb.connect(**mysql_connect_kwargs)
    try:
        cur = conn.cursor()
        cur.execute("SELECT DATABASE(), 1 + 1")
        assert cur.fetchone() == (TEST_DATABASE, 2)
    finally:
        conn.close()


@pytest.mark.mysql
def test_mysql_kwargs_connect_with_pymysql(mysql_connect_kwargs: dict[str, Any]) -> None:
    import pymysql

    conn = pymysql.connect(**mysql_connect_kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == (TEST_DATABASE,)
    finally:
        conn.close()


@pytest.mark.mysql
def test_mysql_execute_and_ensure_database(mysql_server: MySQLServer) -> None:
    name = f"django_pool_tmp_{uuid.uuid4().hex[:8]}"
    try:
        mysql_server.ensure_database(name)
        mysql_server.ensure_database(name)
        assert mysql_server.execute("SELECT DATABASE()", database=name) == [(name,)]
        rows = mysql_server.execute("SHOW DATABASES LIKE %s", params=[name])
        assert rows == [(name,)]
        assert mysql_server.execute("SET @x = 1") is None
    finally:
        mysql_server.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_mysql_unavailable_gives_none_and_a_reason(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("MYSQL_HOST", "127.0.0.1")
    monkeypatch.setenv("MYSQL_PORT", str(closed_port))
    monkeypatch.setenv("MYSQL_PASSWORD", "do-not-print-me")
    assert testservers.mysql_server(cached=False) is None
    reason = testservers.mysql_unavailable_reason()
    assert reason
    assert "do-not-print-me" not in reason


# ------------------------------------------------------------------------- CI


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run must run what the README tells people to run, character for character."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"Run the whole test suite.*?```(?:sh|bash|console)?\n(.+?)\n```", readme, re.S
    )
    assert match, "README.md has no code block after 'Run the whole test suite'"
    command = match.group(1).strip()
    assert "\n" not in command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
