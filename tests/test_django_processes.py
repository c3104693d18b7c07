"""The pooled backends in real processes: Django's test runner, psycopg2, fork, exit.

Everything here runs in subprocesses, so that this pytest session's own Django
state (pytest-django's test databases, this process's pools) stays out of it:

* Django's test runner (``python -m django test``, with and without
  ``--parallel``, with ``--keepdb``) on ``tests/runner_project``, whose app
  queries the real database at startup, so that a pool for the real database
  exists before the test databases are made;
* the Django-level suite (``tests/test_django_backends.py``) with psycopg2;
* ``multiprocessing`` children (fork) of a process holding a pooled connection;
* what happens to a process's sessions at exit and on ``close_pools()``.

Every session is tagged with its own ``application_name``, so that checks on
``pg_stat_activity`` see only the sessions of the process under test.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from django_pool.testservers import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SETTINGS = "tests.runner_project.settings"
REAL_DATABASE = "dp_runner_real"
TEST_DATABASE = f"test_{REAL_DATABASE}"
TEST_DATABASES = (TEST_DATABASE, f"{TEST_DATABASE}_1", f"{TEST_DATABASE}_2")
#: Must match runnerapp.apps.SENTINEL and runnerapp.tests.WRITTEN_BY.
SENTINEL = "real-database-sentinel"
WRITTEN_BY = "django-test-runner"
#: Tests in tests/runner_project/runnerapp/tests.py.
RUNNER_TESTS = 4

#: Seconds a session may take to disappear from pg_stat_activity once closed.
SESSION_GONE_SECONDS = 5.0
#: Seconds for any one subprocess; the whole file takes far less.
SUBPROCESS_TIMEOUT = 90.0

# --------------------------------------------------------------------------- #
# Subprocess helpers
# --------------------------------------------------------------------------- #


@dataclass
class Result:
    args: Sequence[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"command: {' '.join(self.args)}\nexit code: {self.returncode} "
            f"after {self.seconds:.1f} s\n--- stdout ---\n{self.stdout}\n"
            f"--- stderr ---\n{self.stderr}"
        )


def child_env(server: PostgresServer, **extra: str) -> dict[str, str]:
    """This environment, pointed at the session's server, without pytest's own state."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "DJANGO_", "DP_RUNNER_")) and key != "TOX_PARALLEL_ENV"
    }
    # An embedded server found by this session is reached by the children too.
    env.update(
        PGHOST=server.host,
        PGPORT=str(server.port),
        PGUSER=server.user,
        PGPASSWORD=server.password,
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def kill_group(process: subprocess.Popen[str]) -> None:
    """Kill a subprocess started in its own session, with any children it forked."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run(args: Sequence[str], env: dict[str, str], timeout: float = SUBPROCESS_TIMEOUT) -> Result:
    """Run to completion; on timeout kill it (and its workers) and fail with its output."""
    start = time.monotonic()
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate()
        result = Result(args, None, stdout, stderr, time.monotonic() - start)
        pytest.fail(f"timed out after {timeout} s\n{result.describe()}")
    return Result(args, process.returncode, stdout, stderr, time.monotonic() - start)


class Interactive:
    """A subprocess that prints JSON lines and waits for a line on stdin between steps."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.args = list(args)
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def describe(self) -> str:
        return Result(
            self.args,
            self.process.poll(),
            "".join(self.stdout),
            "".join(self.stderr),
            time.monotonic() - self.start,
        ).describe()

    def fail(self, message: str) -> NoReturn:
        kill_group(self.process)
        self.process.wait(10)
        for thread in self._threads:
            thread.join(5)
        pytest.fail(f"{message}\n{self.describe()}")

    def next_json(self, timeout: float = SUBPROCESS_TIMEOUT) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.fail(f"no output line within {timeout} s")
        if line is None:
            self.process.wait(10)
            self.fail("the subprocess ended before printing the expected line")
        try:
            data: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            self.fail(f"not a JSON line: {line!r}")
        return data

    def send(self) -> None:
        """Let the subprocess go on to its next step."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.fail("the subprocess stopped reading its stdin")

    def finish(self, timeout: float = SUBPROCESS_TIMEOUT) -> int:
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"did not exit within {timeout} s")
        for thread in self._threads:
            thread.join(10)
        return code

    def ensure_dead(self) -> None:
        if self.process.poll() is None:
            kill_group(self.process)
            self.process.wait(10)


@contextlib.contextmanager
def interactive(args: Sequence[str], env: dict[str, str]) -> Iterator[Interactive]:
    proc = Interactive(args, env)
    try:
        yield proc
    finally:
        proc.ensure_dead()


# --------------------------------------------------------------------------- #
# Server-side checks
# --------------------------------------------------------------------------- #


def tagged_sessions(server: PostgresServer, application_name: str) -> set[int]:
    rows = server.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        params=[application_name],
    )
    return {int(row[0]) for row in rows or []}


def wait_for_sessions(
    server: PostgresServer,
    application_name: str,
    expected: set[int],
    timeout: float = SESSION_GONE_SECONDS,
    *,
    exact: bool = True,
) -> set[int]:
    """Poll until the tagged sessions are ``expected`` (or within it, if not ``exact``).

    Returns the sessions seen last, for the caller's assertion and message.
    """

    def done(seen: set[int]) -> bool:
        return seen == expected if exact else seen <= expected

    deadline = time.monotonic() + timeout
    seen = tagged_sessions(server, application_name)
    while not done(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = tagged_sessions(server, application_name)
    return seen


def existing_test_databases(server: PostgresServer) -> dict[str, int]:
    rows = server.execute(
        "SELECT datname, oid FROM pg_database WHERE datname LIKE %s",
        params=[f"{TEST_DATABASE}%"],
    )
    return {str(name): int(oid) for name, oid in rows or []}


def drop_test_databases(server: PostgresServer) -> None:
    for name in TEST_DATABASES:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def real_rows(server: PostgresServer) -> list[tuple[Any, ...]]:
    return (
        server.execute("SELECT name, written_by FROM runnerapp_note ORDER BY id", REAL_DATABASE)
        or []
    )


# --------------------------------------------------------------------------- #
# The runner project's real database
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def project_lock(timeout: float = 120.0) -> Iterator[None]:
    """One pytest session at a time uses dp_runner_real and its test databases."""
    path = Path(tempfile.gettempdir()) / "django_pool_runner_project.lock"
    with open(path, "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {path} for {timeout} s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def runner_db(pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """dp_runner_real created and migrated, holding only the sentinel row."""
    with project_lock():
        pg_server.ensure_database(REAL_DATABASE)
        drop_test_databases(pg_server)
        result = run(
            [PYTHON, "-m", "django", "migrate", f"--settings={SETTINGS}", "--noinput", "-v", "0"],
            child_env(pg_server, DP_RUNNER_APPLICATION_NAME=f"dp_migrate_{uuid.uuid4().hex}"),
        )
        assert result.returncode == 0, f"migrating {REAL_DATABASE} failed\n{result.describe()}"
        pg_server.execute("DELETE FROM runnerapp_note", REAL_DATABASE)
        pg_server.execute(
            "INSERT INTO runnerapp_note (name, written_by) VALUES (%s, 'pytest')",
            REAL_DATABASE,
            params=[SENTINEL],
        )
        yield pg_server
        drop_test_databases(pg_server)


# --------------------------------------------------------------------------- #
# 1. Django's test runner
# --------------------------------------------------------------------------- #


def run_django_tests(
    server: PostgresServer, report_dir: Path, *options: str
) -> tuple[Result, str]:
    application_name = f"dp_runner_{uuid.uuid4().hex}"
    report_dir.mkdir()
    result = run(
        [
            PYTHON,
            "-m",
            "django",
            "test",
            "tests.runner_project.runnerapp",
            f"--settings={SETTINGS}",
            "--noinput",
            "-v",
            "2",
            *options,
        ],
        child_env(
            server,
            DP_RUNNER_APPLICATION_NAME=application_name,
            DP_RUNNER_REPORT_DIR=str(report_dir),
        ),
    )
    assert result.returncode == 0, f"Django's test runner failed\n{result.describe()}"
    assert f"Ran {RUNNER_TESTS} tests" in result.stderr and "\nOK" in result.stderr, (
        f"expected {RUNNER_TESTS} passing tests\n{result.describe()}"
    )
    return result, application_name


def read_reports(report_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ready, tests = [], []
    for path in sorted(report_dir.glob("*.json")):
        record = json.loads(path.read_text())
        (ready if path.name.startswith("ready-") else tests).append(record)
    return ready, tests


def check_runner_run(
    server: PostgresServer,
    result: Result,
    application_name: str,
    report_dir: Path,
    expected_databases: set[str],
) -> None:
    ready, tests = read_reports(report_dir)
    # The hazard was set up: at startup, a pool served the real database.
    assert len(ready) == 1, f"expected one startup record, got {ready}\n{result.describe()}"
    startup = ready[0]
    assert startup["database"] == REAL_DATABASE and startup["pool"], (
        f"the app's startup query did not go through a pool to {REAL_DATABASE}: "
        f"{startup}\n{result.describe()}"
    )
    assert startup["sentinel_seen"], f"startup did not see the real database's sentinel: {startup}"

    assert len(tests) == RUNNER_TESTS, f"test records: {tests}\n{result.describe()}"
    used = {record["database"] for record in tests}
    assert used <= expected_databases, (
        f"tests ran against {sorted(used)}, expected only {sorted(expected_databases)}\n"
        f"{result.describe()}"
    )

    rows = real_rows(server)
    assert rows == [(SENTINEL, "pytest")], (
        f"{REAL_DATABASE} was changed by the tests (rows written, or the sentinel flushed): "
        f"{rows}\n{result.describe()}"
    )
    seen = wait_for_sessions(server, application_name, set())
    assert not seen, f"sessions of the finished test run still open: {seen}"


@pytest.mark.parametrize(
    "parallel", [pytest.param(2, id="parallel-2"), pytest.param(None, id="serial")]
)
def test_django_test_runner_never_touches_the_real_database(runner_db, tmp_path, parallel):
    options = ["--parallel", str(parallel)] if parallel else []
    report_dir = tmp_path / "reports"
    result, application_name = run_django_tests(runner_db, report_dir, *options)

    if parallel:
        expected = {f"{TEST_DATABASE}_1", f"{TEST_DATABASE}_2"}
        assert result.stderr.count("Cloning test database for alias 'default'") == 2, (
            result.describe()
        )
        main_pid = read_reports(report_dir)[0][0]["pid"]
        worker_pids = {record["pid"] for record in read_reports(report_dir)[1]}
        assert main_pid not in worker_pids, "with --parallel the tests ran in the main process"
    else:
        expected = {TEST_DATABASE}
    check_runner_run(runner_db, result, application_name, report_dir, expected)
    left = existing_test_databases(runner_db)
    assert not left, f"test databases left behind: {sorted(left)}\n{result.describe()}"


@pytest.mark.parametrize(
    "parallel", [pytest.param(2, id="parallel-2"), pytest.param(None, id="serial")]
)
def test_django_test_runner_keepdb_twice(runner_db, tmp_path, parallel):
    options = ["--keepdb", *(["--parallel", str(parallel)] if parallel else [])]
    kept = set(TEST_DATABASES) if parallel else {TEST_DATABASE}
    expected = kept - {TEST_DATABASE} if parallel else kept
    try:
        first, name = run_django_tests(runner_db, tmp_path / "first", *options)
        check_runner_run(runner_db, first, name, tmp_path / "first", expected)
        after_first = existing_test_databases(runner_db)
        assert set(after_first) == kept, (
            f"--keepdb kept {sorted(after_first)}, expected {sorted(kept)}\n{first.describe()}"
        )

        second, name = run_django_tests(runner_db, tmp_path / "second", *options)
        assert "Using existing test database for alias 'default'" in second.stderr, (
            f"the second --keepdb run did not reuse the test database\n{second.describe()}"
        )
        check_runner_run(runner_db, second, name, tmp_path / "second", expected)
        after_second = existing_test_databases(runner_db)
        assert after_second == after_first, (
            f"the kept databases were recreated: {after_first} -> {after_second}\n"
            f"{second.describe()}"
        )
        for database in expected:  # TestCase rolled back, TransactionTestCase flushed
            left = runner_db.execute(
                "SELECT count(*) FROM runnerapp_note WHERE written_by = %s",
                database,
                params=[WRITTEN_BY],
            )
            assert left == [(0,)], f"rows left in the kept {database}: {left}"
    finally:
        drop_test_databases(runner_db)


# --------------------------------------------------------------------------- #
# 2. The Django-level suite on psycopg2
# --------------------------------------------------------------------------- #

DRIVER_PROBE = """
import django
django.setup()
from django.db import connections
print(connections["default"].Database.__name__)
"""


def test_django_level_suite_on_psycopg2(pg_server):
    env = child_env(
        pg_server,
        DJANGO_POOL_TEST_PG_DRIVER="psycopg2",
        DJANGO_SETTINGS_MODULE="tests.djangoapp.settings",
        # pytest-django's suffix for the test databases: not this session's.
        TOX_PARALLEL_ENV=f"psycopg2_{os.getpid()}",
    )
    probe = run([PYTHON, "-c", DRIVER_PROBE], env, timeout=60)
    assert probe.returncode == 0, f"the driver probe failed\n{probe.describe()}"
    assert probe.stdout.strip() == "psycopg2", (
        f"Django's PostgreSQL backend did not use psycopg2\n{probe.describe()}"
    )

    files = ["tests/test_django_backends.py", "tests/test_django_pgbouncer.py"]
    suite = run([PYTHON, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"], env)
    assert suite.returncode == 0, f"{' '.join(files)} failed on psycopg2\n{suite.describe()}"
    assert " passed" in suite.stdout and " failed" not in suite.stdout, suite.describe()


# --------------------------------------------------------------------------- #
# 3. multiprocessing children (fork) of a process holding a pooled connection
# --------------------------------------------------------------------------- #


def test_forked_children_use_their_own_sessions(runner_db):
    application_name = f"dp_fork_{uuid.uuid4().hex}"
    env = child_env(runner_db, DP_RUNNER_APPLICATION_NAME=application_name, DP_RUNNER_POOL_MIN="2")
    with interactive([PYTHON, "-m", "tests.runner_project.fork_children"], env) as proc:
        report = proc.next_json()
        context = f"report: {json.dumps(report, indent=1)}\n{proc.describe()}"
        parent = report["parent_session"]
        parent_sessions = set(report["sessions_before_fork"])
        children = report["children"]

        assert report["exitcodes"] == [0, 0, 0], context
        assert all("error" not in child for child in children), context
        child_sessions = [child["session"] for child in children]
        assert len(set(child_sessions)) == 3, f"children shared a session: {context}"
        assert not set(child_sessions) & parent_sessions, (
            f"a child used one of the parent's sessions: {context}"
        )
        assert all(c["same_session"] == c["session"] and c["count"] == 1 for c in children), (
            context
        )
        assert len({child["pid"] for child in children} | {report["parent_pid"]}) == 4, context

        # The parent's held connection still works, on the same session, and
        # none of its pool's sessions was ended by the children.
        assert parent in parent_sessions and len(parent_sessions) >= 2, context
        assert report["parent_session_after"] == parent, context
        assert parent_sessions <= set(report["sessions_after_children"]), context
        assert report["stats"]["connections_lost"] == 0, context

        # The children closed their pools: their sessions end, the parent's stay.
        # (The parent's pool may have grown meanwhile: only its sessions may remain.)
        parent_now = set(report["sessions_after_children"]) - set(child_sessions)
        seen = wait_for_sessions(runner_db, application_name, parent_now, exact=False)
        assert parent_sessions <= seen <= parent_now, (
            f"while the parent lives, the server shows {sorted(seen)}; expected the "
            f"parent's {sorted(parent_sessions)} (and no child's)\n{context}"
        )
        state = runner_db.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", params=[parent]
        )
        assert state and state[0][0] is not None, f"parent session state: {state}\n{context}"

        proc.send()
        end = proc.next_json()
        assert end == {"parent_session_at_end": parent}, f"{end}\n{proc.describe()}"
        assert proc.finish() == 0, proc.describe()


# --------------------------------------------------------------------------- #
# 4. Shutdown: atexit and close_pools()
# --------------------------------------------------------------------------- #

SHUTDOWN = [PYTHON, "-m", "tests.runner_project.shutdown"]


def test_sessions_end_when_the_process_exits(runner_db):
    application_name = f"dp_exit_{uuid.uuid4().hex}"
    env = child_env(runner_db, DP_RUNNER_APPLICATION_NAME=application_name, DP_RUNNER_POOL_MIN="3")
    result = run([*SHUTDOWN, "exit"], env, timeout=60)
    assert result.returncode == 0, result.describe()
    stages = {line["stage"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert set(stages) == {"open", "late_atexit"}, result.describe()
    opened = set(stages["open"]["sessions"])
    lent = stages["open"]["lent"]
    assert len(opened) >= 3 and lent in opened, result.describe()

    # After django_pool's atexit handler ran (and before the process ended)
    # every session was closed: the idle ones, and the one the main thread's
    # Django connection still held, which the handler returned first.
    still_open = set(stages["late_atexit"]["remaining"])
    assert not opened & still_open, (
        f"pooled sessions survived django_pool's atexit handler: {sorted(still_open)}\n"
        f"{result.describe()}"
    )
    seen = wait_for_sessions(runner_db, application_name, set())
    assert not seen, (
        f"sessions still open {SESSION_GONE_SECONDS} s after the process exited: "
        f"{sorted(seen)}\n{result.describe()}"
    )


def test_close_pools_ends_the_sessions_before_exit(runner_db):
    application_name = f"dp_close_{uuid.uuid4().hex}"
    env = child_env(runner_db, DP_RUNNER_APPLICATION_NAME=application_name, DP_RUNNER_POOL_MIN="3")
    with interactive([*SHUTDOWN, "close_pools"], env) as proc:
        opened_line = proc.next_json()
        opened = set(opened_line["sessions"])
        lent = opened_line["lent"]
        assert len(opened) >= 3 and lent in opened, proc.describe()

        closed = proc.next_json()
        assert closed["stage"] == "closed" and closed["closed"], proc.describe()
        # Idle connections close at once; the one lent to Django's connection
        # stays until it is returned (documented).
        seen = wait_for_sessions(runner_db, application_name, {lent})
        assert seen == {lent}, (
            f"after close_pools() the server shows {sorted(seen)}; expected only the "
            f"lent session {lent} of {sorted(opened)}\n{proc.describe()}"
        )

        proc.send()  # Django's connection is closed: back to the closed pool
        returned = proc.next_json()
        assert returned["stage"] == "returned", proc.describe()
        seen = wait_for_sessions(runner_db, application_name, set())
        assert not seen, (
            f"sessions still open after close_pools() and connection.close(): "
            f"{sorted(seen)}\n{proc.describe()}"
        )
        assert proc.process.poll() is None, f"exited too early\n{proc.describe()}"

        proc.send()
        assert proc.next_json()["stage"] == "exiting", proc.describe()
        assert proc.finish() == 0, proc.describe()
