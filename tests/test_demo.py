"""``django-pool demo``, run for real: servers, load, database counters, clean-up.

The end-to-end test runs ``python -m django_pool demo --quick`` against the
test PostgreSQL, in a database of its own, and checks the figures it reports
against what they must be if they are true: no pooling opens one server
connection per request, pools open a handful for hundreds of requests and
never hold more than their ``max_size`` per worker. The interrupt tests stop
a demo half-way with SIGINT or SIGTERM. After every run, nothing the demo
started may be left: every process it starts inherits a marker in its
environment, and no process carrying it may outlive the demo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest

from django_pool.demo.database import DatabaseURL, redact_url
from django_pool.demo.load import parse_wrk, percentile
from django_pool.testservers import PostgresServer

PYTHON = sys.executable
MARKER_VARIABLE = "DJANGO_POOL_DEMO_TEST_MARKER"
POOLED = ("django_builtin", "dj_db_conn_pool", "django_pool")
#: The end-to-end run's modes: --quick's two pools, and no pooling to check them against.
TESTED_MODES = ("no_pool", "django_builtin", "django_pool")


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _processes_with(marker: str) -> list[str]:
    """``pid: command line`` of every live process whose environment holds ``marker``."""
    found = []
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z":
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def _assert_nothing_left(marker: str, server: PostgresServer | None, dbname: str) -> None:
    deadline = time.monotonic() + 10
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind by the demo: {left}"
    if server is not None:
        rows = server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            params=[dbname],
        )
        assert rows == [(0,)], f"{rows} sessions left in {dbname}"


def _wait_for_process(marker: str, command: str) -> None:
    deadline = time.monotonic() + 10
    while not any(command in line for line in _processes_with(marker)):
        assert time.monotonic() < deadline, f"no {command!r} process in 10 s"
        time.sleep(0.002)


def _demo_env(marker: str) -> dict[str, str]:
    return {**os.environ, MARKER_VARIABLE: marker}


@pytest.fixture
def demo_db(pg_server: PostgresServer) -> Iterator[str]:
    """A database of the test's own, so its counters see this demo only; dropped after."""
    name = f"django_pool_demo_{uuid.uuid4().hex[:8]}"
    pg_server.ensure_database(name)
    yield name
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sessions_counter(server: PostgresServer, dbname: str) -> int:
    rows = server.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = %s", params=[dbname]
    )
    assert rows
    return int(rows[0][0])


def _demo_argv(*args: str) -> list[str]:
    return [PYTHON, "-m", "django_pool", "demo", "--quick", "--load", "builtin", *args]


def _run_demo(*args: str, marker: str, cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run a quick demo to its end: its status, stdout, and all its output for messages."""
    completed = subprocess.run(
        _demo_argv(*args),
        env=_demo_env(marker),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = f"--- stdout ---\n{completed.stdout}\n--- stderr ---\n{completed.stderr}"
    return completed.returncode, completed.stdout, output


# --------------------------------------------------------------------------- #
# End to end
# --------------------------------------------------------------------------- #


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_quick_demo_reports_true_figures_and_leaves_nothing(
    pg_server: PostgresServer, demo_db: str, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    results, chart = tmp_path / "demo.json", tmp_path / "demo.png"
    sessions_before = _sessions_counter(pg_server, demo_db)
    status, stdout, output = _run_demo(
        *("--database", pg_server.url(demo_db), "--modes", ",".join(TESTED_MODES)),
        *("--json", str(results), "--chart", str(chart)),
        marker=marker,
        cwd=tmp_path,
        timeout=100,
    )
    assert status == 0, output
    _assert_nothing_left(marker, pg_server, demo_db)
    sessions_opened = _sessions_counter(pg_server, demo_db) - sessions_before

    report = json.loads(results.read_text())
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "| server" in stdout and str(results) in stdout, output

    setup = report["setup"]
    workers, threads = setup["workers"], setup["threads_per_worker"]
    max_size = setup["pool_max_size"]
    runs = {(run["server"], run["mode"]): run for run in report["runs"]}
    assert set(runs) == {
        (server, mode) for server in ("gunicorn", "uvicorn") for mode in TESTED_MODES
    }
    for (server, mode), run in runs.items():
        assert run["status"] in ("ran", "skipped"), (server, mode, run)
        if run["status"] == "skipped":
            assert run["reason"], run
    builtin_ran = runs["gunicorn", "django_builtin"]["status"] == "ran"
    assert builtin_ran == (django.VERSION >= (5, 1)), runs["gunicorn", "django_builtin"]
    assert runs["gunicorn", "django_pool"]["status"] == "ran"
    assert runs["uvicorn", "django_pool"]["status"] == "ran"

    cells = report["results"]
    ran = {(run["server"], run["mode"]) for run in report["runs"] if run["status"] == "ran"}
    assert {(cell["server"], cell["mode"]) for cell in cells} == ran
    for cell in cells:
        where = f"{cell['mode']} under {cell['server']}: {cell}"
        assert cell["errors"] == 0, where
        assert cell["requests"] >= 10, where
        opened, requests = cell["connections_opened"], cell["requests"]
        assert opened is not None, where
        if cell["mode"] == "no_pool":
            # The server's own counter: one new connection per request.
            assert 0.8 * requests <= opened <= 1.2 * requests + 5, where
        elif cell["mode"] in POOLED:
            # At most a pool's worth per worker (growing under load), whatever the requests.
            assert opened <= workers * max_size and opened < requests / 4, where
            assert cell["peak_connections"] <= workers * max_size + 1, where
        else:  # persistent, one connection per gunicorn thread
            assert cell["peak_connections"] <= workers * threads + 1, where
    # What the demo reports is what the server counted, and no more.
    assert sum(cell["connections_opened"] for cell in cells) <= sessions_opened

    scenarios = report["scenarios"]
    # The database was given, not the demo's own: it is never restarted.
    assert set(scenarios) == {"async_wait", "session_state", "leak"}, output
    if builtin_ran:
        _assert_scenarios_tell_the_pools_apart(scenarios, output)


def _figures(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {row["mode"]: row for row in scenario["rows"]}
    assert set(rows) == set(TESTED_MODES), rows
    assert all(row["status"] == "ran" for row in rows.values()), rows
    return {mode: row["figures"] for mode, row in rows.items()}


def _assert_scenarios_tell_the_pools_apart(scenarios: dict[str, Any], output: str) -> None:
    wait = _figures(scenarios["async_wait"])
    assert all(figures["errors"] == 0 for figures in wait.values()), wait
    # The server's own counter: without a pool, a session per request, many at once.
    unpooled = wait["no_pool"]
    assert 0.8 * unpooled["requests"] <= unpooled["connections_opened"], wait
    assert unpooled["connections_opened"] <= 1.2 * unpooled["requests"] + 40, wait
    assert unpooled["peak_connections"] > 4, wait
    for mode in ("django_builtin", "django_pool"):
        # Sampled from pg_stat_activity: both pools keep to their 4 connections ...
        assert 1 <= wait[mode]["peak_connections"] <= 4, wait
    # ... so a pool holding one through the 50 ms wait serves at most 4 per 50 ms,
    builtin_ceiling = 4 / 0.05
    assert wait["django_builtin"]["requests_per_second"] <= 1.1 * builtin_ceiling, wait
    # and release="transaction" serves more than that from the same 4.
    assert wait["django_pool"]["requests_per_second"] > builtin_ceiling, output

    # Each count is of requests whose connection the server said still had the role,
    # search_path or setting an earlier request left (current_user, current_setting).
    state = _figures(scenarios["session_state"])
    # Every mode's server got the same eight requests that leave state behind.
    assert all(figures["dirtied"] == 8 for figures in state.values()), state
    assert state["no_pool"]["with_state"] == 0 < state["no_pool"]["checked"], state
    assert state["django_pool"]["with_state"] == 0, state
    assert state["django_pool"]["checked"] > 0, state
    assert state["django_builtin"]["with_state"] == state["django_builtin"]["checked"] > 0, state

    leaked = _figures(scenarios["leak"])
    assert all(figures["leaked"] == 4 for figures in leaked.values()), leaked
    assert leaked["django_pool"]["errors"] == 0 < leaked["django_pool"]["requests"], leaked
    assert leaked["django_builtin"]["errors"] > 0, leaked
    assert leaked["no_pool"]["errors"] == 0 < leaked["no_pool"]["requests"], leaked
    for mode in ("django_builtin", "django_pool"):
        # Sampled from pg_stat_activity after the leaks: the pools kept to their 4.
        assert 1 <= leaked[mode]["sessions_after_leaks"] <= 4, leaked


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_restart_scenario_restarts_the_embedded_server_and_sees_recovery(
    tmp_path: Path,
) -> None:
    marker = uuid.uuid4().hex
    results = tmp_path / "demo.json"
    status, _, output = _run_demo(
        *("--scenarios", "restart", "--json", str(results), "--chart", "d.png"),
        marker=marker,
        cwd=tmp_path,
        timeout=80,
    )
    assert status == 0, output
    _assert_nothing_left(marker, None, "")
    rows = json.loads(results.read_text())["scenarios"]["restart"]["rows"]
    ran = [row for row in rows if row["status"] == "ran"]
    assert ran, output
    # One restart per mode, each under that mode's load alone.
    assert output.count("restarting the database server") == len(ran), output
    for row in ran:
        figures = row["figures"]
        assert figures["restart_s"] > 0, row
        assert figures["requests"] > 0, row
        # The gap covers at least the restart the clients lived through.
        assert figures["longest_gap_s"] >= 0.5 * figures["restart_s"], row
        # The server's own start time: it did restart, under this mode's load.
        assert figures["server_started_before"] != figures["server_started_after"], row
    ours = next(row["figures"] for row in ran if row["mode"] == "django_pool")
    # Requests wait for the reconnect: only those in flight on its 4 connections fail,
    # none handed a connection the restart broke.
    assert ours["errors"] <= 4, ours


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_a_run_with_nothing_to_show_says_so(
    pg_server: PostgresServer, demo_db: str, tmp_path: Path
) -> None:
    chart = tmp_path / "demo.png"
    chart.write_bytes(b"an earlier run's chart")
    status, stdout, output = _run_demo(
        *("--database", pg_server.url(demo_db), "--scenarios", "restart"),
        *("--json", str(tmp_path / "demo.json"), "--chart", str(chart)),
        marker=uuid.uuid4().hex,
        cwd=tmp_path,
        timeout=50,
    )
    assert status == 0, output
    assert "never restarts a server it was given" in output, output
    assert "Chart: none, nothing ran" in stdout, output
    assert not chart.exists()


# --------------------------------------------------------------------------- #
# Interrupted
# --------------------------------------------------------------------------- #


def _interrupt_once_serving(
    argv: list[str], marker: str, signum: int, when: str = "serving on", during: str = ""
) -> tuple[int, str]:
    """Start a demo, signal it once stderr says ``when``; return its status and stderr.

    With ``during``, the signal waits for a process of the demo whose command
    line holds it. The signal goes to the demo's whole process group, as a
    terminal's Ctrl-C does: whatever the demo runs in that group gets it too.
    """
    proc = subprocess.Popen(
        argv,
        env=_demo_env(marker),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if when in line:
                if during:
                    _wait_for_process(marker, during)
                else:
                    time.sleep(0.2)  # into the load
                os.killpg(proc.pid, signum)
                break
        lines.extend(proc.stderr)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, "".join(lines)


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_ctrl_c_stops_servers_and_embedded_postgres(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    argv = _demo_argv("--json", str(tmp_path / "d.json"), "--chart", str(tmp_path / "d.png"))
    status, stderr = _interrupt_once_serving(argv, marker, signal.SIGINT)
    assert "serving on" in stderr, stderr
    assert status == 130, stderr
    assert "interrupted" in stderr, stderr
    # The embedded PostgreSQL inherited the marker too: it must be gone with the servers.
    _assert_nothing_left(marker, None, "")
    assert not (tmp_path / "d.json").exists()


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_ctrl_c_during_the_restart_leaves_nothing(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    argv = _demo_argv("--scenarios", "restart", "--json", str(tmp_path / "d.json"))
    # The signal arrives while pg_ctl restarts the server.
    status, stderr = _interrupt_once_serving(
        argv, marker, signal.SIGINT, when="restarting the database server", during="pg_ctl"
    )
    assert "restarting the database server" in stderr, stderr
    # Held until the restart is over, then an interruption like any other, not a failure.
    assert status == 130, stderr
    assert "] failed:" not in stderr, stderr
    assert stderr.index("server was back in") < stderr.index("interrupted"), stderr
    # The restarted postmaster inherited the marker from pg_ctl: it must be gone too.
    _assert_nothing_left(marker, None, "")
    assert not (tmp_path / "d.json").exists()


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_sigterm_stops_servers_and_their_connections(
    pg_server: PostgresServer, demo_db: str, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    argv = _demo_argv("--database", pg_server.url(demo_db), "--json", str(tmp_path / "d.json"))
    status, stderr = _interrupt_once_serving(argv, marker, signal.SIGTERM)
    assert status == 130, stderr
    _assert_nothing_left(marker, pg_server, demo_db)


# --------------------------------------------------------------------------- #
# Units
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgres://app:s3cret@db.internal:6432/shop",
            ("postgresql", "db.internal", 6432, "app", "s3cret", "shop"),
        ),
        (
            "postgresql://localhost",
            ("postgresql", "localhost", 5432, "postgres", "", "django_pool_demo"),
        ),
        ("mysql://root@127.0.0.1/", ("mysql", "127.0.0.1", 3306, "root", "", "django_pool_demo")),
        (
            "mariadb://u%40x:p%3Aw%2Fd@[::1]:3307/d%20b",
            ("mysql", "::1", 3307, "u@x", "p:w/d", "d b"),
        ),
    ],
)
def test_database_url_parsing(url: str, expected: tuple[Any, ...]) -> None:
    db = DatabaseURL.parse(url)
    assert (db.vendor, db.host, db.port, db.user, db.password, db.name) == expected
    assert DatabaseURL.parse(db.url()) == db


def test_passwords_never_shown() -> None:
    db = DatabaseURL.parse("postgres://app:s3cret-pw@db:5432/shop")
    assert str(db) == "postgres://app:********@db:5432/shop"
    assert "s3cret-pw" not in repr(db)
    assert "s3cret-pw" in db.url()  # only for the servers' environment
    assert "s3cret-pw" not in redact_url("postgres://app:s3cret-pw@db:5432/shop")


@pytest.mark.parametrize(
    "url",
    [
        "http://app:s3cret-pw@db/shop",
        "postgres://app:s3cret-pw@db:notaport/shop",
        "postgres://app:s3cret-pw@db/shop?sslmode=require",
        "mysql://app:s3cret-pw@db/a/b",
    ],
)
def test_bad_urls_are_refused_without_their_password(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        DatabaseURL.parse(url)
    assert "s3cret-pw" not in str(raised.value)
    assert "********" in str(raised.value)


def test_bad_url_on_the_command_line_exits_without_echoing_the_password() -> None:
    completed = subprocess.run(
        [PYTHON, "-m", "django_pool", "demo", "--database", "http://u:s3cret-pw@h/d"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    assert "postgres://" in completed.stderr
    assert "s3cret-pw" not in completed.stdout + completed.stderr


WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8000/items
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.22ms    6.10ms  80.01ms   80.00%
    Req/Sec   263.41     30.12   320.00     70.00%
  Latency Distribution
     50%   14.10ms
     75%   17.00ms
     90%   21.00ms
     99%  850.00us
  1054 requests in 2.00s, 1.02MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    527.00
Transfer/sec:    523.10KB
"""


def test_wrk_output_is_read() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 1050
    assert result.errors == 7
    assert result.p50_ms == pytest.approx(14.1)
    assert result.p99_ms == pytest.approx(0.85)
    assert result.seconds == pytest.approx(2.0)
    assert result.requests_per_second == pytest.approx(525.0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None
