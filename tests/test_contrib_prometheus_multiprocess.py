"""Prometheus multiprocess mode under a real gunicorn: one scrape sees every worker's pools.

A gunicorn with 4 sync workers and ``--preload`` serves
``tests/prometheus_project`` with ``PROMETHEUS_MULTIPROC_DIR`` in a temporary
directory. The master runs one query before it forks (so it has a pool and an
idle session of its own), then the workers serve ``/session`` (one query
each) until every worker has served some. One scrape of ``/metrics``, through
whichever worker answers, must then add up every process: the checkouts
counted and timed equal the queries made, and the connections open equal
the server sessions tagged with the test's ``application_name``. A scrape
that saw one worker only would miss the others' queries and sessions.

Then one worker is stopped: gunicorn's ``child_exit`` hook marks it dead, so
its connections leave the gauges while its counts stay in the counters.

The servers, helpers and child environment are those of
``tests/test_django_serving.py`` and ``tests/test_django_processes.py``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from django_pool.testservers import PostgresServer
from tests.conftest import TEST_DATABASE
from tests.test_django_processes import PYTHON, child_env, tagged_sessions, wait_for_sessions
from tests.test_django_serving import Server, _check_all_ok, _free_port, _get_many, serving

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

WORKERS = 4
#: Queries the master runs before forking (tests/prometheus_project/wsgi.py).
MASTER_QUERIES = 1
#: Requests per round of load, and client threads sending them.
ROUND, CLIENTS = 60, 8
#: Rounds of load at most, until every worker has served some.
MAX_ROUNDS = 5
#: Seconds the figures may take to add up: a sample interval (1 s) and some.
SETTLE_TIMEOUT = 10.0

Figures = dict[str, float]


def _scrape(base: str) -> tuple[int, Figures]:
    """One scrape: the worker that answered, and each series of the ``default`` alias
    (bucket series left out), summed over what the response holds."""
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:500]
    figures: Figures = defaultdict(float)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.labels.get("alias") == "default" and "le" not in sample.labels:
                figures[sample.name] += sample.value
    return int(response.headers["X-Worker-Pid"]), figures


def _expected(checkouts: int, sessions: int) -> Figures:
    return {
        "django_pool_requests_total": checkouts,
        "django_pool_wait_seconds_count": checkouts,
        "django_pool_usage_seconds_count": checkouts,
        "django_pool_size": sessions,
        "django_pool_in_use_connections": 0,
    }


def _settled_scrape(
    server: Server, base: str, pg: PostgresServer, app_name: str, checkouts: int
) -> tuple[int, Figures, set[int]]:
    """Scrape until the figures are those expected of ``checkouts`` and of the
    sessions open at that moment, or time is up; the last scrape, for the asserts."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        pid, figures = _scrape(base)
        sessions = tagged_sessions(pg, app_name)
        expected = _expected(checkouts, len(sessions))
        if all(figures[name] == value for name, value in expected.items()):
            return pid, figures, sessions
        if time.monotonic() > deadline:
            seen = {name: figures[name] for name in expected}
            server.fail(
                f"after {SETTLE_TIMEOUT:.0f} s the scrape (through worker {pid}) shows {seen}, "
                f"not {expected}; sessions {sorted(sessions)}"
            )
        time.sleep(0.2)


def _load_every_worker(server: Server, base: str, workers: set[int]) -> int:
    """Send rounds of ``/session`` requests until every worker has served one; how many."""
    served: set[int] = set()
    sent = 0
    while not served >= workers and sent < MAX_ROUNDS * ROUND:
        bodies = _check_all_ok(server, _get_many(f"{base}/session", ROUND, CLIENTS), ROUND)
        sent += ROUND
        served |= {body["pid"] for body in bodies}
    if served != workers:
        server.fail(f"after {sent} requests, workers {sorted(served)} served of {sorted(workers)}")
    return sent


def test_one_scrape_reports_every_gunicorn_worker(pg_server: PostgresServer, tmp_path: Path):
    app_name = f"dp_prom_{uuid.uuid4().hex}"
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "tests.prometheus_project.wsgi:application",
        "--config=tests/prometheus_project/gunicorn.conf.py",
        f"--bind=127.0.0.1:{port}",
        f"--workers={WORKERS}",
        "--worker-class=sync",
        "--preload",
        "--graceful-timeout=5",
        "--no-control-socket",
    ]
    env = child_env(
        pg_server,
        DJANGO_SETTINGS_MODULE="tests.prometheus_project.settings",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        DP_PROM_DATABASE=TEST_DATABASE,
        DP_PROM_APPLICATION_NAME=app_name,
    )
    with serving("gunicorn-prometheus", argv, env, tmp_path) as server:
        server.wait_ready(f"{base}/metrics")
        workers = server.wait_children(WORKERS)
        checkouts = MASTER_QUERIES + _load_every_worker(server, base, workers)

        scraped_by, figures, sessions = _settled_scrape(
            server, base, pg_server, app_name, checkouts
        )
        print(
            f"one scrape from a {WORKERS}-worker gunicorn: "
            f"django_pool_requests_total {figures['django_pool_requests_total']:g} "
            f"(queries made: {checkouts}), django_pool_size {figures['django_pool_size']:g} "
            f"(sessions in pg_stat_activity: {len(sessions)}), "
            f"wait/usage histogram counts {figures['django_pool_wait_seconds_count']:g}/"
            f"{figures['django_pool_usage_seconds_count']:g}, served by worker {scraped_by}"
        )
        assert scraped_by in workers
        # Every worker holds a session, and the master its own: more than any
        # one process could show.
        assert len(sessions) >= WORKERS + 1, sorted(sessions)

        # A worker that exits: its gauges leave the sums (child_exit), its counts stay.
        stopped = min(workers)
        os.kill(stopped, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while stopped in server.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stopped not in server.children(), f"worker {stopped} ignored SIGTERM"
        server.wait_children(WORKERS)  # gunicorn starts another one
        scraped_by, figures, after_exit = _settled_scrape(
            server, base, pg_server, app_name, checkouts
        )
        print(
            f"after worker {stopped} exited: django_pool_requests_total "
            f"{figures['django_pool_requests_total']:g}, django_pool_size "
            f"{figures['django_pool_size']:g} (sessions: {len(after_exit)})"
        )
        assert len(after_exit) < len(sessions), "the stopped worker's session is still open"
    left = wait_for_sessions(pg_server, app_name, set())
    assert not left, f"sessions {sorted(left)} outlived the server"
