"""What every scenario shares: where it runs, how it serves each mode, its rows.

A scenario serves the demo project once per connection mode, with the same
server, workers and pool size for every mode, does something to it (a load,
a restart, a leak) and reports a few figures per mode as a
:class:`~django_pool.demo.report.Row`. :func:`run_modes` is that loop; each
scenario module gives it the part that differs, a ``measure`` function.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from django_pool import testservers

from . import load, modes
from .database import ConnectionMonitor, DatabaseURL
from .load import LoadResult
from .modes import PoolSize
from .report import Row, View
from .servers import Server, ServerFailed, ServerKind, Workers

#: Seconds to wait for a stopped server's connections to leave the database.
DRAIN_TIMEOUT = 10.0
#: --quick's modes, in every scenario and the throughput rows: the comparison the
#: demo is for, and no more (it is CI's smoke run).
QUICK_MODES = ("django_builtin", "django_pool")

Measured = TypeVar("Measured")


@dataclass(frozen=True)
class Context:
    """The run every scenario takes part in."""

    db: DatabaseURL
    embedded: testservers.PostgresServer | None  # None: the database is not the demo's
    monitor: ConnectionMonitor
    application_name: str
    workdir: Path
    progress: Callable[[str], None]
    quick: bool
    modes: tuple[str, ...]  # the modes to run, where a scenario applies to them


@dataclass(frozen=True)
class Scenario:
    """One row group of the table and one panel of the chart."""

    view: View
    run: Callable[[Context], list[Row]]
    #: Why the scenario cannot run in this context, or None.
    unavailable: Callable[[Context], str | None]

    @property
    def key(self) -> str:
        return self.view.key


def describe_setup(kind: ServerKind, workers: Workers, pool: PoolSize, load: str) -> str:
    """A scenario's setup line: the server and its workers, ``load``, and the pools."""
    timeout = "" if pool.timeout is None else f", {pool.timeout:g} s timeout"
    return f"{kind.describe(workers)}, {load}; pools of {pool.max_size} connections{timeout}"


def postgresql_only(ctx: Context) -> str | None:
    return None if ctx.db.vendor == "postgresql" else "it is about PostgreSQL (and Django's pool)"


def drain(monitor: ConnectionMonitor) -> int:
    """Wait for a stopped server's connections to close; return how many did not."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while (left := monitor.open_connections()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def serve(
    ctx: Context, kind: ServerKind, workers: Workers, mode: str, pool: PoolSize, name: str
) -> Server:
    """A server of ``kind`` for ``mode``, its log named ``name``; use it in a ``with``."""
    env = {**os.environ, **modes.environment(mode, ctx.db, pool, ctx.application_name)}
    return Server(kind, workers, env, ctx.workdir, name)


def load_clients(
    ctx: Context,
    view: View,
    server: Server,
    mode: str,
    clients: int,
    seconds: float,
    started: threading.Event | None = None,
) -> LoadResult:
    """``clients`` loading the server's page for ``seconds``, with the built-in generator.

    The scenarios always use it: it times every response, which the gaps and
    error kinds they report come from. ``started`` is set once the clients
    run. The log (kept when something failed) is the mode's last load.
    """
    log = ctx.workdir / f"load-{view.key}-{mode}.log"
    return load.generate("builtin", server.url, clients, seconds, log, started)


def get(url: str, timeout: float = 30.0) -> int:
    """GET ``url``; its HTTP status (the demo's pages answer errors with a status too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass(frozen=True)
class Outcome(Generic[Measured]):
    """What became of one mode: ``ran`` (with what it measured), ``skipped`` or ``failed``."""

    mode: str
    status: str
    reason: str | None = None
    measured: Measured | None = None


def serve_each(
    ctx: Context,
    kind: ServerKind,
    workers: Workers,
    pool: PoolSize,
    candidates: tuple[str, ...],
    key: str,
    heading: str,
    measure: Callable[[Server, str], Measured],
) -> list[Outcome[Measured]]:
    """For each mode: serve, ``measure``, stop, and wait for its connections to go.

    ``key`` names the servers' logs; ``heading`` begins the progress lines.
    """
    outcomes: list[Outcome[Measured]] = []
    for mode in candidates:
        label = modes.label(mode, pool)
        reason = modes.skip_reason(mode, ctx.db.vendor, kind.key)
        if reason:
            outcomes.append(Outcome(mode, "skipped", reason))
            continue
        try:
            with serve(ctx, kind, workers, mode, pool, f"{key}-{mode}") as server:
                server.wait_ready()
                ctx.progress(f"{heading}: {label}: serving on {server.url}")
                outcomes.append(Outcome(mode, "ran", measured=measure(server, mode)))
        except ServerFailed as exc:
            outcomes.append(Outcome(mode, "failed", str(exc).splitlines()[0]))
            ctx.progress(f"{heading}: {label} failed: {exc}")
        left = drain(ctx.monitor)
        if left:
            ctx.progress(f"  warning: {left} connections still open {DRAIN_TIMEOUT:.0f} s later")
    return outcomes


def run_modes(
    ctx: Context,
    view: View,
    kind: ServerKind,
    workers: Workers,
    pool: PoolSize,
    candidates: tuple[str, ...],
    measure: Callable[[Server, str], dict[str, Any]],
) -> list[Row]:
    """A scenario's rows: :func:`serve_each` of the candidates this run has."""

    def measure_and_say(server: Server, mode: str) -> dict[str, Any]:
        figures = measure(server, mode)
        ctx.progress(f"  {view.describe(figures)}")
        return figures

    chosen = tuple(mode for mode in candidates if mode in ctx.modes)
    outcomes = serve_each(ctx, kind, workers, pool, chosen, view.key, view.title, measure_and_say)
    return [
        Row(
            view.key,
            outcome.mode,
            modes.label(outcome.mode, pool),
            outcome.status,
            outcome.reason,
            outcome.measured or {},
        )
        for outcome in outcomes
    ]


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
