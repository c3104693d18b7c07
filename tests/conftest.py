"""Session-wide database servers for the test suite.

Every test that needs a server gets it from these fixtures, which ask
:mod:`django_pool.testservers` once per session: the PostgreSQL named by the PG*
variables or else an embedded one, and the MySQL/MariaDB named by the MYSQL_*
variables or else a skip that says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_pool import Pool, testservers
from django_pool.testservers import MySQLServer, PostgresServer
from tests.fakes import FakeAdapter, FakeConnector

#: The database the tests work in, created once per session on each server.
TEST_DATABASE = "django_pool_test"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say at the top of the run which servers the tests will talk to."""
    lines = []
    try:
        pg = testservers.postgres_server()
        rows = pg.execute("SHOW server_version")
        version = rows[0][0] if rows else "?"
        lines.append(f"postgresql: {pg.kind} server at {pg.host}:{pg.port}, version {version}")
    except Exception as exc:  # reported here, raised again by the pg_server fixture
        lines.append(f"postgresql: none available ({exc})")
    my = testservers.mysql_server()
    if my is None:
        lines.append(f"mysql: none, MySQL tests will be skipped ({_mysql_reason()})")
    else:
        rows = my.execute("SELECT VERSION()")
        version = rows[0][0] if rows else "?"
        lines.append(f"mysql: server at {my.host}:{my.port} via {my.driver}, version {version}")
    return lines


def _mysql_reason() -> str:
    return testservers.mysql_unavailable_reason() or "unknown reason"


@pytest.fixture(scope="session")
def pg_server() -> PostgresServer:
    """The session's PostgreSQL (external or embedded), with TEST_DATABASE created."""
    server = testservers.postgres_server()
    server.ensure_database(TEST_DATABASE)
    return server


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test session's own (embedded), for tests that restart,
    stop or stall a server: never the one PGHOST names, which may be the
    developer's own database with other work using it."""
    server = testservers.start_embedded_postgres()
    server.ensure_database(TEST_DATABASE)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_conninfo(pg_server: PostgresServer) -> str:
    """A libpq ``key=value`` string for TEST_DATABASE on the session's PostgreSQL."""
    return pg_server.conninfo(TEST_DATABASE)


@pytest.fixture(scope="session")
def mysql_server() -> MySQLServer:
    """The session's MySQL/MariaDB with TEST_DATABASE created; skips if none answers."""
    server = testservers.mysql_server()
    if server is None:
        host = os.environ.get("MYSQL_HOST") or "127.0.0.1"
        port = os.environ.get("MYSQL_PORT") or "3306"
        pytest.skip(
            f"no MySQL/MariaDB server answered at {host}:{port} ({_mysql_reason()}); "
            "set MYSQL_HOST/MYSQL_PORT/MYSQL_USER/MYSQL_PASSWORD to use one"
        )
    server.ensure_database(TEST_DATABASE)
    return server


@pytest.fixture(scope="session")
def mysql_connect_kwargs(mysql_server: MySQLServer) -> dict[str, Any]:
    """``MySQLdb.connect`` keyword arguments for TEST_DATABASE (PyMySQL takes them too)."""
    return mysql_server.connect_kwargs(TEST_DATABASE)


@pytest.fixture(scope="session")
def pgbouncers(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    """The run's PgBouncers (see tests.pgbouncer) by pool mode, in front of the test database.

    Made after the test databases, so that its teardown comes first: PgBouncer's
    server sessions on the test database must be closed before it is dropped.
    """
    from django.conf import settings

    if settings.PGBOUNCERS is None:
        pytest.skip(f"no PgBouncer: {settings.PGBOUNCER_UNAVAILABLE}")
    yield settings.PGBOUNCERS
    from django.db import connections

    from django_pool.backends import close_pools

    for alias in settings.DATABASES:
        if alias.startswith("bouncer_"):
            close_pools(alias)
    test_database = connections["default"].settings_dict["NAME"]
    for bouncer in settings.PGBOUNCERS.values():
        bouncer.disconnect(test_database)


@pytest.fixture(autouse=True)
def _pgbouncers_for_bouncer_aliases(request: pytest.FixtureRequest) -> None:
    """Tests parametrized with a ``bouncer_*`` alias get :func:`pgbouncers` too."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if str(params.get("alias", "")).startswith("bouncer_"):
        request.getfixturevalue("pgbouncers")


@pytest.fixture
def make_pool() -> Iterator[Callable[..., tuple[Pool, FakeConnector]]]:
    """Engine pools on the fake driver (tests/fakes.py), closed after the test."""
    made: list[Pool] = []

    def make(delay: float = 0.0, **options: Any) -> tuple[Pool, FakeConnector]:
        connector = FakeConnector(delay)
        options.setdefault("timeout", 5.0)
        pool = Pool(connector, FakeAdapter(), **options)
        made.append(pool)
        return pool, connector

    yield make
    for pool in made:
        pool.close(timeout=0)
