"""The Django backend under real servers: gunicorn (gthread, sync + --preload), uvicorn.

Each test starts a server process on a free 127.0.0.1 port, serving
``tests.djangoapp`` with ``tests.djangoapp.serving_settings`` (the pooled
PostgreSQL backend on the real ``django_pool_app`` database, ``max_size`` 4),
loads it with HTTP requests, and checks from the outside what the pool
promises:

* server sessions, counted in ``pg_stat_activity`` while the load runs, never
  exceed ``max_size`` per process;
* a gunicorn ``--preload`` master that holds a pooled connection when it forks
  keeps its session: no worker uses it, and no worker ends it, not even when
  it exits;
* under ASGI, async views give every connection back (``pool_in_use`` is 0).

Every session a server opens carries an ``application_name`` unique to the
test, so the counts ignore anything else using the database. Servers are always
stopped, and the tests check that no process of theirs is left behind and
that their sessions are all closed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from django_pool.testservers import PostgresServer
from tests.djangoapp.settings import POOL

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DATABASE = "django_pool_app"
SETTINGS = "tests.djangoapp.serving_settings"
MAX_SIZE: int = POOL["max_size"]

#: Seconds a server may take to answer its first request.
READY_TIMEOUT = 60.0
#: Seconds a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
#: Seconds the server's sessions may take to disappear once it has exited.
SESSIONS_GONE_TIMEOUT = 15.0


# --------------------------------------------------------------------------- #
# Processes
# --------------------------------------------------------------------------- #


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of a process, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, ppid, session id) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[0] != "Z":
            yield int(entry.name), stat[1], stat[2]


class Server:
    """A server process in a session of its own, its output in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its session id is its pid: finds every descendant
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self, limit: int = 8000) -> str:
        """The end of the server's stdout and stderr, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no output: {exc}>"
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        return f"--- {self.name} output ({self.log_path}) ---\n{text}\n--- end ---"

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.output()}", pytrace=False)

    def wait_ready(self, url: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"{self.name} exited with code {self.proc.returncode} at start-up")
            try:
                response = httpx.get(url, timeout=5)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:500]}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.2)
        self.fail(f"{self.name} did not answer {url} within {timeout:.0f} s ({last_error})")

    def children(self) -> set[int]:
        """The server's live child processes (gunicorn's workers)."""
        return {pid for pid, ppid, _ in _live_processes() if ppid == self.pid}

    def wait_children(self, count: int, timeout: float = READY_TIMEOUT) -> set[int]:
        deadline = time.monotonic() + timeout
        while True:
            pids = self.children()
            if len(pids) == count:
                return pids
            if self.proc.poll() is not None:
                self.fail(f"{self.name} exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.fail(
                    f"{self.name} has {len(pids)} workers after {timeout:.0f} s, not {count}"
                )
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """Stop the server and everything it started; return what went wrong."""
        problems: list[str] = []
        session = self.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(session, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers exit with their master; anything still in the session is a leak.
        # Only the session is searched and killed: a pid remembered from earlier
        # may belong to some other process by now.
        deadline = time.monotonic() + 10
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            problems.append(f"processes left behind after the server exited: {left}; killed")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)
        self._log.close()
        return problems

    def leftovers(self) -> list[int]:
        """Live processes in the server's session (it is the session's leader)."""
        return sorted(pid for pid, _, sid in _live_processes() if sid == self.pid)


@contextlib.contextmanager
def serving(name: str, argv: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """Run a server for the ``with`` block; afterwards, check that nothing of it is left."""
    server = Server(name, argv, env, tmp_path / f"{name}.log")
    try:
        yield server
    finally:
        problems = server.stop()
    # Reached only when the block succeeded: its own failure is the one to show.
    assert not problems, f"{name}: {'; '.join(problems)}\n{server.output()}"
    assert server.proc.returncode is not None, f"{name} (pid {server.pid}) was not reaped"
    assert not server.leftovers(), f"{name}: processes still running: {server.leftovers()}"


def _server_env(pg: PostgresServer, app_name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_POOL_TEST_")}
    if "DJANGO_POOL_TEST_PG_DRIVER" in os.environ:  # run the servers with the same driver
        env["DJANGO_POOL_TEST_PG_DRIVER"] = os.environ["DJANGO_POOL_TEST_PG_DRIVER"]
    env.update(
        DJANGO_SETTINGS_MODULE=SETTINGS,
        DJANGO_POOL_TEST_APP_NAME=app_name,
        # The same PostgreSQL as this process, even an embedded one.
        PGHOST=pg.host,
        PGPORT=str(pg.port),
        PGUSER=pg.user,
        PGPASSWORD=pg.password,
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _app_name(test: str) -> str:
    """An application_name that only this test's server uses."""
    return f"djpool-{test}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- #
# Database
# --------------------------------------------------------------------------- #

_SESSIONS_SQL = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = %s AND application_name = %s AND backend_type = 'client backend'"
)


def _sessions(pg: PostgresServer, app_name: str) -> set[int]:
    rows = pg.execute(_SESSIONS_SQL, params=[DATABASE, app_name]) or []
    return {int(row[0]) for row in rows}


class SessionSampler:
    """Samples, in a thread, the server sessions tagged with one application_name."""

    def __init__(self, pg: PostgresServer, app_name: str, interval: float = 0.02) -> None:
        self.pg = pg
        self.app_name = app_name
        self.interval = interval
        self.samples: list[frozenset[int]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-sampler", daemon=True)

    def _run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.pg.conninfo("postgres"), autocommit=True) as conn:
                while True:
                    rows = conn.execute(_SESSIONS_SQL, [DATABASE, self.app_name]).fetchall()
                    self.samples.append(frozenset(int(row[0]) for row in rows))
                    if self._stop.wait(self.interval):
                        return
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> SessionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the pg_stat_activity sampler did not stop"
        if self.error is not None and exc_info[0] is None:
            raise AssertionError(f"sampling pg_stat_activity failed: {self.error!r}")
        assert len(self.samples) >= 5, f"only {len(self.samples)} pg_stat_activity samples"

    @property
    def peak(self) -> int:
        return max(len(sample) for sample in self.samples)

    @property
    def seen(self) -> set[int]:
        return set().union(*self.samples)


def _wait_sessions_gone(pg: PostgresServer, app_name: str) -> None:
    deadline = time.monotonic() + SESSIONS_GONE_TIMEOUT
    while left := _sessions(pg, app_name):
        assert time.monotonic() < deadline, (
            f"sessions {sorted(left)} of the stopped server are still open "
            f"{SESSIONS_GONE_TIMEOUT:.0f} s after it exited"
        )
        time.sleep(0.1)


@pytest.fixture(scope="module")
def app_db(pg_server: PostgresServer) -> PostgresServer:
    """``django_pool_app``, created and migrated (table ``djangoapp_item``)."""
    pg_server.ensure_database(DATABASE)
    env = _server_env(pg_server, _app_name("migrate"))
    argv = [PYTHON, "-m", "django", "migrate", f"--settings={SETTINGS}", "--noinput", "-v", "0"]
    for attempt in range(3):  # another session may be migrating the same database
        result = subprocess.run(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode == 0:
            break
        if attempt == 2:
            pytest.fail(
                f"{' '.join(argv)} failed with code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}",
                pytrace=False,
            )
        time.sleep(1)
    rows = pg_server.execute("SELECT to_regclass('djangoapp_item')::text", dbname=DATABASE)
    assert rows and rows[0][0] == "djangoapp_item", "migrate did not create djangoapp_item"
    return pg_server


# --------------------------------------------------------------------------- #
# Load
# --------------------------------------------------------------------------- #

Result = tuple[int, Any]  # (HTTP status or -1 for a transport error, JSON or text)


def _get_many(url: str, total: int, clients: int) -> list[Result]:
    """GET ``url`` ``total`` times from ``clients`` threads, one TCP connection a request.

    No keep-alive, so that every request is accepted anew and the load spreads
    over gunicorn's workers instead of sticking to the first ones.
    """
    counter = itertools.count()
    results: list[Result] = []
    lock = threading.Lock()

    def client() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=30, limits=limits) as http:
            while next(counter) < total:
                try:
                    response = http.get(url)
                    result: Result = (response.status_code, _decode(response))
                except httpx.HTTPError as exc:
                    result = (-1, repr(exc))
                with lock:
                    results.append(result)

    with ThreadPoolExecutor(clients) as executor:
        for future in [executor.submit(client) for _ in range(clients)]:
            future.result()
    return results


async def _aget_many(url: str, total: int, concurrency: int) -> list[Result]:
    """GET ``url`` ``total`` times, ``concurrency`` at a time, with an AsyncClient."""
    counter = itertools.count()
    results: list[Result] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def client() -> None:
            while next(counter) < total:
                try:
                    response = await http.get(url)
                    results.append((response.status_code, _decode(response)))
                except httpx.HTTPError as exc:
                    results.append((-1, repr(exc)))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def _check_all_ok(server: Server, results: list[Result], total: int) -> list[dict[str, Any]]:
    failures = [r for r in results if r[0] != 200]
    if len(results) != total or failures:
        server.fail(
            f"{len(failures)} of {len(results)} requests failed (expected {total}, all 200); "
            f"first failures: {failures[:5]}"
        )
    return [body for _, body in results]


def _sessions_by_worker(bodies: list[dict[str, Any]]) -> dict[int, set[int]]:
    by_worker: dict[int, set[int]] = defaultdict(set)
    for body in bodies:
        by_worker[body["pid"]].add(body["session"])
    return dict(by_worker)


def _settled_stats(base: str, pids: set[int], timeout: float = 10.0) -> dict[int, dict[str, Any]]:
    """Each worker's pool stats once nothing is lent, as far as GET /stats reaches them.

    Which worker answers is up to the kernel, so this asks until every worker
    in ``pids`` has answered with ``pool_in_use == 0`` or time is up. Django
    returns the connection when the response is closed, just after its last
    byte is sent, so a connection may still be lent for a moment after the
    client has its response.
    """
    latest: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=10, limits=limits) as http:
        while True:
            response = http.get(f"{base}/stats")
            assert response.status_code == 200, response.text[:500]
            payload = response.json()
            assert payload["stats"] is not None, f"worker {payload['pid']} has no pool"
            latest[payload["pid"]] = payload["stats"]
            settled = all(stats["pool_in_use"] == 0 for stats in latest.values())
            if (settled and set(latest) >= pids) or time.monotonic() > deadline:
                return latest
            time.sleep(0.02)


def _gunicorn(port: int, *options: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "gunicorn",
        "tests.djangoapp.wsgi:application",
        f"--bind=127.0.0.1:{port}",
        "--graceful-timeout=5",
        "--timeout=60",
        "--no-control-socket",
        "--log-level=info",
        *options,
    ]


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #


def test_gunicorn_gthread_sessions_bounded_by_max_size(
    app_db: PostgresServer, tmp_path: Path
) -> None:
    """Threads outnumber max_size, yet each worker uses at most max_size sessions."""
    workers, threads, total = 2, 6, 300
    app_name = _app_name("gthread")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = _gunicorn(
        port, f"--workers={workers}", "--worker-class=gthread", f"--threads={threads}"
    )
    with serving("gunicorn-gthread", argv, _server_env(app_db, app_name), tmp_path) as server:
        server.wait_ready(f"{base}/stats")
        worker_pids = server.wait_children(workers)
        with SessionSampler(app_db, app_name) as sampler:
            results = _get_many(f"{base}/whoami", total, clients=12)
        bodies = _check_all_ok(server, results, total)
        final = _sessions(app_db, app_name)
        by_worker = _sessions_by_worker(bodies)
        stats = _settled_stats(base, worker_pids)
        print(f"gthread: peak {sampler.peak} sessions in {len(sampler.samples)} samples")
        print(f"gthread: sessions by worker {by_worker}, open after load {sorted(final)}")
        print(f"gthread: pool stats by worker {stats}")

        assert set(by_worker) <= worker_pids, (
            f"responses came from {sorted(by_worker)}, not from the workers {sorted(worker_pids)}"
        )
        assert sampler.peak <= workers * MAX_SIZE, (
            f"{sampler.peak} sessions open at once for {workers} workers "
            f"with max_size {MAX_SIZE}\n{server.output()}"
        )
        for pid, sessions in by_worker.items():
            assert len(sessions) <= MAX_SIZE, (
                f"worker {pid} used {len(sessions)} sessions, max_size is {MAX_SIZE}: "
                f"{sorted(sessions)}"
            )
        used = set().union(*by_worker.values())
        # The sessions the views saw carry the test's tag: the counts above are real.
        assert used <= sampler.seen | final, (
            f"sessions {sorted(used - sampler.seen - final)} were never seen in "
            f"pg_stat_activity under application_name {app_name!r}"
        )
        assert len(final) <= workers * MAX_SIZE
        # The same session never served two workers.
        for (pid_a, a), (pid_b, b) in itertools.combinations(by_worker.items(), 2):
            assert not a & b, f"workers {pid_a} and {pid_b} shared sessions {sorted(a & b)}"
        for pid, worker_stats in stats.items():
            assert pid in worker_pids, f"/stats answered from {pid}, not a worker"
            assert worker_stats["pool_in_use"] == 0, f"worker {pid} still lends: {worker_stats}"
            assert worker_stats["pool_size"] <= MAX_SIZE, f"worker {pid}: {worker_stats}"
            assert worker_stats["requests_errors"] == 0, f"worker {pid}: {worker_stats}"
    _wait_sessions_gone(app_db, app_name)


def test_gunicorn_preload_master_connection_survives_fork(
    app_db: PostgresServer, tmp_path: Path
) -> None:
    """A --preload master forks while holding a pooled connection; no worker touches it."""
    workers, total = 3, 150
    app_name = _app_name("preload")
    record = tmp_path / "master.json"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = _gunicorn(port, f"--workers={workers}", "--worker-class=sync", "--preload")
    env = _server_env(
        app_db,
        app_name,
        DJANGO_POOL_TEST_QUERY_AT_IMPORT="1",
        DJANGO_POOL_TEST_IMPORT_RECORD=str(record),
    )
    with serving("gunicorn-preload", argv, env, tmp_path) as server:
        server.wait_ready(f"{base}/stats")
        worker_pids = server.wait_children(workers)
        if not record.exists():
            server.fail(f"the master wrote no {record.name} while importing the app")
        master = json.loads(record.read_text())
        assert master["pid"] == server.pid, (
            f"the import-time query ran in {master['pid']}, not in the master {server.pid}"
        )
        master_session = master["session"]
        assert master_session in _sessions(app_db, app_name), (
            f"the master's session {master_session} is not open after the fork"
        )

        with SessionSampler(app_db, app_name) as sampler:
            results = _get_many(f"{base}/whoami", total, clients=6)
        bodies = _check_all_ok(server, results, total)
        by_worker = _sessions_by_worker(bodies)
        print(f"preload: master {master}, sessions by worker {by_worker}")
        print(f"preload: peak {sampler.peak} sessions in {len(sampler.samples)} samples")

        assert server.pid not in by_worker, "the master served a request"
        assert set(by_worker) <= worker_pids, (
            f"responses came from {sorted(by_worker)}, not from the workers {sorted(worker_pids)}"
        )
        assert len(by_worker) >= 2, (
            f"only worker(s) {sorted(by_worker)} served {total} concurrent requests; "
            "fork isolation between workers was not exercised"
        )
        for pid, sessions in by_worker.items():
            assert master_session not in sessions, (
                f"worker {pid} used the master's session {master_session}: "
                "two processes talked on one connection"
            )
            assert len(sessions) <= MAX_SIZE, f"worker {pid} used sessions {sorted(sessions)}"
        for (pid_a, a), (pid_b, b) in itertools.combinations(by_worker.items(), 2):
            assert not a & b, f"workers {pid_a} and {pid_b} shared sessions {sorted(a & b)}"
        missing = [i for i, sample in enumerate(sampler.samples) if master_session not in sample]
        assert not missing, (
            f"the master's session {master_session} was gone from {len(missing)} of "
            f"{len(sampler.samples)} pg_stat_activity samples during the load"
        )
        assert sampler.peak <= 1 + workers * MAX_SIZE, f"{sampler.peak} sessions at once"
        assert master_session in _sessions(app_db, app_name), (
            f"the master's session {master_session} was closed by the load"
        )

        # A worker that exits runs atexit (closing its pool) and drops the
        # inherited connection objects: the master's session must survive that.
        server.proc.send_signal(signal.SIGTTOU)  # gunicorn: one worker fewer
        remaining = server.wait_children(workers - 1, timeout=30)
        exited = worker_pids - remaining
        assert len(exited) == 1 and not remaining - worker_pids, (worker_pids, remaining)
        after_exit = _sessions(app_db, app_name)
        assert master_session in after_exit, (
            f"the master's session {master_session} closed when worker {exited} exited"
        )
        results = _get_many(f"{base}/whoami", 20, clients=2)
        bodies = _check_all_ok(server, results, 20)
        assert all(body["session"] != master_session for body in bodies)
        assert master_session in _sessions(app_db, app_name)
    _wait_sessions_gone(app_db, app_name)


def test_uvicorn_async_views_return_connections(app_db: PostgresServer, tmp_path: Path) -> None:
    """1,000 async-ORM requests on one uvicorn process: at most max_size sessions, none kept."""
    total, concurrency = 1000, 10
    app_name = _app_name("uvicorn")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "tests.djangoapp.asgi:application",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
        "--lifespan=off",
        "--no-access-log",
        "--log-level=warning",
        "--timeout-graceful-shutdown=5",
    ]
    with serving("uvicorn", argv, _server_env(app_db, app_name), tmp_path) as server:
        server.wait_ready(f"{base}/stats")
        with SessionSampler(app_db, app_name) as sampler:
            results = asyncio.run(_aget_many(f"{base}/async-items", total, concurrency))
        bodies = _check_all_ok(server, results, total)
        assert all(isinstance(b, dict) and isinstance(b.get("count"), int) for b in bodies), (
            bodies[:3]
        )

        # Django gives the connection back when the response is closed, just
        # after the last body message is sent: allow the last ones a moment.
        deadline = time.monotonic() + 5
        while True:
            response = httpx.get(f"{base}/stats", timeout=10)
            assert response.status_code == 200, response.text[:500]
            payload = response.json()
            stats = payload["stats"]
            assert stats is not None, "the server has no pool for 'default'"
            if stats["pool_in_use"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)

        print(f"uvicorn: peak {sampler.peak} sessions in {len(sampler.samples)} samples")
        print(f"uvicorn: stats {stats}")
        assert payload["pid"] == server.pid, "uvicorn did not serve from its own process"
        assert stats["pool_in_use"] == 0, f"connections still lent after the load: {stats}"
        assert stats["requests_num"] >= total, f"fewer checkouts than requests: {stats}"
        assert stats["pool_size"] <= MAX_SIZE, stats
        assert stats["pool_max"] == MAX_SIZE, stats
        assert stats["requests_errors"] == 0, stats
        assert sampler.peak <= MAX_SIZE, (
            f"{sampler.peak} sessions open at once, max_size is {MAX_SIZE}; pool stats: {stats}"
        )
        assert sampler.peak >= 1, "no session of the server was ever seen: wrong tag?"
    _wait_sessions_gone(app_db, app_name)


def _uvicorn_argv(port: int) -> list[str]:
    return [
        PYTHON, "-m", "uvicorn", "tests.djangoapp.asgi:application", "--host=127.0.0.1",
        f"--port={port}", "--workers=1", "--lifespan=off", "--no-access-log",
        "--log-level=warning", "--timeout-graceful-shutdown=5",
    ]  # fmt: skip


def _wait_nothing_lent(base: str, timeout: float = 5.0) -> dict[str, Any]:
    """The server's pool stats once nothing is lent, or as they are at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = httpx.get(f"{base}/stats", timeout=10).json()["stats"]
        if stats["pool_in_use"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_uvicorn_release_transaction_holds_nothing_across_an_await(
    app_db: PostgresServer, tmp_path: Path
) -> None:
    """query, await, query: nothing lent during the await; 40 clients on 4 connections."""
    app_name = _app_name("uvicorn-tx")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = _server_env(app_db, app_name, DJANGO_POOL_TEST_RELEASE="transaction")
    with serving("uvicorn", _uvicorn_argv(port), env, tmp_path) as server:
        server.wait_ready(f"{base}/stats")
        for _ in range(5):  # one at a time: nobody else can hold a connection
            body = httpx.get(f"{base}/awaits?wait=0.1", timeout=10).json()
            assert body["in_use_during_await"] == 0, body
        with SessionSampler(app_db, app_name) as sampler:
            results = asyncio.run(_aget_many(f"{base}/awaits", 400, 40))
        _check_all_ok(server, results, 400)
        stats = _wait_nothing_lent(base)
        assert stats["pool_in_use"] == 0 and stats["requests_errors"] == 0, stats
        assert sampler.peak <= MAX_SIZE, f"{sampler.peak} sessions, max_size is {MAX_SIZE}"
    _wait_sessions_gone(app_db, app_name)


@pytest.mark.parametrize(
    ("release", "pattern"),
    [
        ("request", "leak-thread"),
        ("request", "leak-gather"),
        ("request", "leak-task"),
        ("transaction", "leak-thread"),
        ("transaction", "leak-gather"),
        ("transaction", "leak-task"),
    ],
)
def test_uvicorn_leaking_patterns_lose_no_connection(
    app_db: PostgresServer, tmp_path: Path, release: str, pattern: str
) -> None:
    """Each pattern 50 times: afterwards nothing is lent and requests are served at once."""
    app_name = _app_name(f"uvicorn-{pattern}")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # A lost connection shows as a 500 after 2 s instead of 10.
    env = _server_env(
        app_db, app_name, DJANGO_POOL_TEST_RELEASE=release, DJANGO_POOL_TEST_POOL_TIMEOUT="2"
    )
    with serving("uvicorn", _uvicorn_argv(port), env, tmp_path) as server:
        server.wait_ready(f"{base}/stats")
        results = asyncio.run(_aget_many(f"{base}/{pattern}", 50, 4))
        _check_all_ok(server, results, 50)
        stats = _wait_nothing_lent(base, timeout=10)
        assert stats["pool_in_use"] == 0, f"connections still lent after {pattern}: {stats}"
        results = asyncio.run(_aget_many(f"{base}/async-items", 20, 4))
        _check_all_ok(server, results, 20)
        stats = _wait_nothing_lent(base)
        assert stats["requests_errors"] == 0, stats
    _wait_sessions_gone(app_db, app_name)


def test_gunicorn_gevent_preload_worker_opens_only_what_it_needs(
    app_db: PostgresServer, tmp_path: Path
) -> None:
    """gevent with --preload: the master's pool threads are greenlets, and greenlets
    survive a fork. Nothing the master started may run in the worker."""
    pytest.importorskip("gevent")
    app_name = _app_name("gevent-preload")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = _gunicorn(port, "--workers=1", "--worker-class=gevent", "--preload")
    env = _server_env(app_db, app_name, DJANGO_POOL_TEST_QUERY_AT_IMPORT="1")
    with serving("gunicorn-gevent", argv, env, tmp_path) as server:
        server.wait_ready(f"{base}/stats")
        response = httpx.get(f"{base}/whoami", timeout=10)  # the worker's own pool
        if response.status_code != 200:
            server.fail(f"/whoami answered {response.status_code}")
        first = httpx.get(f"{base}/stats", timeout=10).json()
        time.sleep(10)  # idle
        second = httpx.get(f"{base}/stats", timeout=10).json()
        assert first["pid"] == second["pid"] != server.pid
        opened = second["stats"]["connections_num"] - first["stats"]["connections_num"]
        print(f"gevent --preload: the idle worker opened {opened} connections in 10 s")
        assert opened == 0, f"an idle worker opened {opened} connections in 10 s"
        assert second["stats"]["pool_size"] <= MAX_SIZE, second["stats"]
        assert second["stats"]["connections_opening"] >= 0, second["stats"]
