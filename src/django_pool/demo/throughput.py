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

from . import load, modes, report
from .modes import LABELS, PoolSize
from .scenarios import Context, drain, serve
from .servers import SERVERS, Server, ServerFailed, Workers


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
    for server in servers:
        kind = SERVERS[server]
        for mode in modes_run:
            reason = modes.skip_reason(mode, ctx.db.vendor, server)
            if reason:
                outcome.runs.append(report.Run(server, mode, "skipped", reason))
                continue
            try:
                with serve(ctx, kind, plan.workers, mode, plan.pool, f"{server}-{mode}") as child:
                    child.wait_ready()
                    where = f"{kind.describe(plan.workers)}: {LABELS[mode]}"
                    ctx.progress(f"{where}: serving on {child.url}")
                    for concurrency in plan.concurrency:
                        cell = _measure(ctx, child, mode, concurrency, plan, tool)
                        outcome.cells.append(cell)
                        ctx.progress(f"  {concurrency} clients: {_summary(cell)}")
            except ServerFailed as exc:
                outcome.runs.append(report.Run(server, mode, "failed", str(exc).splitlines()[0]))
                ctx.progress(f"{LABELS[mode]} under {kind.label} failed: {exc}")
            else:
                outcome.runs.append(report.Run(server, mode, "ran"))
            left = drain(ctx.monitor)
            if left:
                ctx.progress(f"  warning: {left} connections still open after the server")


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
