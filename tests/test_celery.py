"""Pooled connections under a real Celery worker: prefork, threads and gevent pools.

Each test starts ``celery worker`` on ``tests/celery_project`` (a Redis broker
on a database number of this file's own, a pooled PostgreSQL alias with
``max_size`` 2), sends it a burst of tasks through ``python -m
tests.celery_project.burst`` and checks, against the server's sessions where
it can:

* after the burst no connection is still lent in any worker process;
* a prefork child never uses a session of its parent (which held one while
  it forked them), and no session is used by two processes;
* the tagged sessions never exceed processes times ``max_size``, and no task saw
  a pool larger than ``max_size``;
* where the pool is kept between tasks (threads, gevent, prefork with
  :mod:`django_pool.contrib.celery`), each process opened at most
  ``max_size`` sessions for the whole burst.

``DP_CELERY_TASKS=1000`` sends the burst of the figures in
``docs/deployment.md`` (the default, 200, keeps the file fast).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from django_pool.testservers import PostgresServer

from .test_django_processes import PYTHON, ROOT, child_env, kill_group, run, tagged_sessions

redis = pytest.importorskip("redis")
pytest.importorskip("celery")

#: This file's own Redis database: flushed before and after every worker.
REDIS_URL = "redis://127.0.0.1:6379/11"
MAX_SIZE = 2
TASKS = int(os.environ.get("DP_CELERY_TASKS", "200"))
#: The table of tests.celery_project.models.TaskRun (unmanaged: no migrations).
TABLE_SQL = (
    "CREATE TABLE celery_project_taskrun (id bigserial PRIMARY KEY,"
    " index integer NOT NULL, worker_pid integer NOT NULL, backend_pid integer NOT NULL)"
)
#: Seconds a worker may take to stop once asked (warm shutdown), before SIGKILL.
STOP_SECONDS = 10.0

Session = tuple[int, str]  # (pg_backend_pid(), backend_start): see celery_project.worker


@dataclass(frozen=True)
class WorkerPool:
    name: str
    concurrency: int
    contrib: bool = False

    @property
    def forks(self) -> bool:
        return self.name == "prefork"


POOLS = [
    pytest.param(WorkerPool("prefork", 3), id="prefork"),
    pytest.param(WorkerPool("prefork", 3, contrib=True), id="prefork-contrib"),
    pytest.param(WorkerPool("threads", 4), id="threads"),
    pytest.param(WorkerPool("gevent", 10), id="gevent"),
]


@contextlib.contextmanager
def redis_database_lock() -> Iterator[None]:
    """One pytest session at a time uses REDIS_URL's database (it is flushed)."""
    path = Path(tempfile.gettempdir()) / "django_pool_celery_redis.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def redis_client() -> Iterator[Any]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    with redis_database_lock():
        yield client
        client.flushdb()


@pytest.fixture(scope="module")
def celery_database(pg_server: PostgresServer) -> Iterator[str]:
    """A database of this module's own with the probe tasks' table, dropped afterwards."""
    name = f"dp_celery_{uuid.uuid4().hex[:12]}"
    pg_server.ensure_database(name)
    try:
        pg_server.execute(TABLE_SQL, name)
        yield name
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def celery_worker(pool: WorkerPool, env: dict[str, str], log: Path) -> Iterator[None]:
    """A ``celery worker`` subprocess (and its children) for the block, stopped however it ends."""
    args = [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "tests.celery_project.worker",
        "worker",
        "--pool",
        pool.name,
        "--concurrency",
        str(pool.concurrency),
        "--loglevel",
        "info",
        # Not needed by one worker, and mingle alone waits a second at startup.
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    with open(log, "w") as output:
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        # A warm shutdown closes the sessions cleanly; the group is killed
        # after it, in case a child outlived its parent.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_SECONDS)
        kill_group(process)
        process.wait(STOP_SECONDS)


def burst(
    pg_server: PostgresServer, database: str, redis_client: Any, pool: WorkerPool, log: Path
) -> dict[str, Any]:
    """Run a worker with ``pool``, send it the burst; the driver's report, with the context."""
    application_name = f"dp_celery_{pool.name}_{uuid.uuid4().hex[:12]}"
    env = child_env(
        pg_server,
        DJANGO_SETTINGS_MODULE="tests.celery_project.settings",
        DP_CELERY_DATABASE=database,
        DP_CELERY_APPLICATION_NAME=application_name,
        DP_CELERY_POOL_MAX=str(MAX_SIZE),
        DP_CELERY_REDIS=REDIS_URL,
        DP_CELERY_CONTRIB="1" if pool.contrib else "0",
        DP_CELERY_TASKS=str(TASKS),
    )
    # Flushed before the worker starts: kombu keeps the queue's binding in Redis.
    redis_client.flushdb()
    try:
        with celery_worker(pool, env, log):
            result = run([PYTHON, "-m", "tests.celery_project.burst"], env, timeout=120)
            assert result.returncode == 0, (
                f"the burst failed\n{result.describe()}\n--- worker ---\n{log.read_text()}"
            )
            report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
            # Asked while the worker still runs: its main process's session must
            # still be open (the children never ended it).
            report["sessions_after"] = sorted(open_sessions(pg_server, application_name))
    finally:
        redis_client.flushdb()
    report["application_name"] = application_name
    return report


def open_sessions(server: PostgresServer, application_name: str) -> set[Session]:
    rows = server.execute(
        "SELECT pid, backend_start::text FROM pg_stat_activity WHERE application_name = %s",
        params=[application_name],
    )
    return {(int(pid), str(start)) for pid, start in rows or []}


def session(value: list[Any]) -> Session:
    return (int(value[0]), str(value[1]))


def summary(report: dict[str, Any]) -> str:
    """What a failure message shows: the figures, not every task's record."""
    sessions_by_pid: dict[int, set[Session]] = defaultdict(set)
    for probe in report["probes"]:
        sessions_by_pid[probe["pid"]].add(session(probe["session"]))
    shown = {key: value for key, value in report.items() if key not in ("probes", "idle")}
    shown["sessions_per_process"] = {pid: len(s) for pid, s in sessions_by_pid.items()}
    shown["idle"] = {answer["pid"]: answer for answer in report["idle"]}
    return json.dumps(shown, indent=1, default=str)


def check_nothing_lent(report: dict[str, Any]) -> None:
    """Every worker process, once the burst is over, has no connection out of its pool."""
    context = summary(report)
    answered = {answer["pid"] for answer in report["idle"]}
    assert set(report["processes"]) <= answered, (
        f"worker processes that never answered: {set(report['processes']) - answered}\n{context}"
    )
    for answer in report["idle"]:
        # No stats ({}): the process has no pool (closed after the last task), so
        # nothing is lent either.
        assert answer["stats"].get("pool_in_use", 0) == 0, (
            f"process {answer['pid']} still lends a connection while idle\n{context}"
        )
        # The previous task's connections were back when its task_postrun
        # handlers had run: not given back later by the next task's prerun.
        after = answer["after_last_task"]
        assert after is None or after.get("pool_in_use", 0) == 0, (
            f"process {answer['pid']} still lent a connection after its last task\n{context}"
        )
    assert report["parent_after"]["stats"].get("pool_in_use", 0) == 0, (
        f"the worker's main process still lends a connection\n{context}"
    )


def check_sessions_not_shared(report: dict[str, Any], pool: WorkerPool) -> None:
    """No server session serves two OS processes; prefork children never use the parent's."""
    context = summary(report)
    pids_by_session: dict[Session, set[int]] = defaultdict(set)
    for probe in report["probes"]:
        pids_by_session[session(probe["session"])].add(probe["pid"])
    shared = {s: pids for s, pids in pids_by_session.items() if len(pids) > 1}
    assert not shared, f"sessions used by more than one process: {shared}\n{context}"
    if not pool.forks:
        return
    forked_with = session(report["parent_before"]["forked_with"])
    parent_sessions = {session(s) for s in report["sessions_before"]}
    assert forked_with in parent_sessions, (
        f"the parent's session at fork is not among its sessions before the burst\n{context}"
    )
    assert report["worker_pid"] not in {probe["pid"] for probe in report["probes"]}, (
        f"prefork ran tasks in the main process\n{context}"
    )
    used_by_children = parent_sessions & set(pids_by_session)
    assert not used_by_children, (
        f"prefork children used their parent's sessions {used_by_children}\n{context}"
    )
    # A child that had closed an inherited connection the usual way would
    # have ended this session for the parent too.
    assert forked_with in {session(s) for s in report["sessions_after"]}, (
        f"the parent's session {forked_with} ended while its children ran\n{context}"
    )
    assert session(report["parent_after"]["now"]) == forked_with, (
        f"the parent no longer queries on the session it forked with\n{context}"
    )


def check_max_size(report: dict[str, Any], pool: WorkerPool) -> None:
    """At most max_size sessions per process on the server, and in every task's pool stats."""
    context = summary(report)
    # Prefork: the children and the main process, which holds its own pool.
    processes = len(report["processes"]) + (1 if pool.forks else 0)
    assert report["samples"] > 10, f"pg_stat_activity was hardly sampled\n{context}"
    assert 1 <= report["peak_sessions"] <= processes * MAX_SIZE, (
        f"{report['peak_sessions']} sessions at once for {processes} processes "
        f"with max_size {MAX_SIZE}\n{context}"
    )
    sizes = {probe["stats"]["pool_size"] for probe in report["probes"]}
    assert max(sizes) <= MAX_SIZE, f"tasks saw pools of sizes {sorted(sizes)}\n{context}"


def check_pool_kept(report: dict[str, Any]) -> None:
    """Each process opened at most max_size sessions for the whole burst: its pool was reused."""
    sessions_by_pid: dict[int, set[Session]] = defaultdict(set)
    for probe in report["probes"]:
        sessions_by_pid[probe["pid"]].add(session(probe["session"]))
    opened = {pid: len(sessions) for pid, sessions in sessions_by_pid.items()}
    assert max(opened.values()) <= MAX_SIZE, (
        f"sessions opened per process over {TASKS} tasks: {opened}\n{summary(report)}"
    )


@pytest.mark.postgres
@pytest.mark.parametrize("pool", POOLS)
def test_celery_worker_burst(pg_server, celery_database, redis_client, tmp_path, pool):
    report = burst(pg_server, celery_database, redis_client, pool, tmp_path / "worker.log")
    assert len(report["probes"]) == TASKS, summary(report)
    check_nothing_lent(report)
    check_sessions_not_shared(report, pool)
    check_max_size(report, pool)
    # Prefork without contrib.celery: Celery 5.6+ closes the child's pool
    # after each task (a new session per task); older ones keep it.
    if not pool.forks or pool.contrib:
        check_pool_kept(report)
    # The worker stopped: none of its sessions is left on the server.
    deadline = time.monotonic() + 5
    while tagged_sessions(pg_server, report["application_name"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tagged_sessions(pg_server, report["application_name"]), summary(report)
