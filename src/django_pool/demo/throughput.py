"""The throughput rows: every mode under gunicorn and uvicorn, at 8 and 32 clients.

For each server and mode, the demo starts the server with the demo project
configured for that mode, and for each number of concurrent clients runs a
short warm-up and then a measured load while the database monitor records the
connections the server saw. Here every pool ties, within noise: what pooling
saves is the connection per request, and the scenarios show the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from django_pool.redact import redact

from . import load, report
from .modes import PoolSize
from .scenarios import Context, rounded, serve_each
from .servers import SERVERS, Server, Workers


@dataclass(frozen=True)
class Plan:
    """How much to measure. Every mode gets the same servers, pool size and load."""

    concurrency: tuple[int, ...]
    seconds: float  # measured, per cell
    warmup: float  # before each measured cell, at the same concurrency
    workers: Workers
    pool: PoolSize


DEFAULT = Plan((8, 32), 1.5, 0.4, Workers(2, 8), PoolSize(2, 8))
QUICK = Plan((8,), 0.4, 0.15, Workers(2, 4), PoolSize(1, 4))


def run(
    ctx: Context,
    plan: Plan,
    modes_run: tuple[str, ...],
    servers: tuple[str, ...],
    tool: str,
    outcome: report.Report,
) -> None:
    """Measure each mode under each of ``servers``, adding runs and cells to ``outcome``."""

    def measure(child: Server, mode: str) -> list[report.Cell]:
        cells = []
        for concurrency in plan.concurrency:
            cells.append(_measure(ctx, child, mode, concurrency, plan, tool))
            ctx.progress(f"  {concurrency} clients: {_summary(cells[-1])}")
        return cells

    for server in servers:
        kind = SERVERS[server]
        heading = kind.describe(plan.workers)
        for each in serve_each(
            ctx, kind, plan.workers, plan.pool, modes_run, server, heading, measure
        ):
            outcome.runs.append(report.Run(server, each.mode, each.status, each.reason))
            outcome.cells.extend(each.measured or [])


def _measure(
    ctx: Context, server: Server, mode: str, concurrency: int, plan: Plan, tool: str
) -> report.Cell:
    """Warm up, then one measured load with the database monitor watching."""
    log = ctx.workdir / f"load-{server.kind.key}-{mode}-{concurrency}.log"
    load.generate(tool, server.url, concurrency, plan.warmup, log)
    with ctx.monitor.window() as window:
        result = load.generate(tool, server.url, concurrency, plan.seconds, log)
    first_error = result.first_error
    if result.errors:
        tail = redact(server.child.output_tail(3), [ctx.db.password])
        first_error = f"{first_error}; server log: {tail}"
    return report.Cell(
        server=server.kind.key,
        mode=mode,
        concurrency=concurrency,
        requests=result.requests,
        errors=result.errors,
        seconds=round(result.seconds, 3),
        requests_per_second=round(result.requests_per_second, 1),
        p50_ms=rounded(result.p50_ms, 2),
        p99_ms=rounded(result.p99_ms, 2),
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
