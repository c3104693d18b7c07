"""Scenario: the database server restarts under load.

Clients keep loading ``/items`` under gunicorn; a moment in, the demo
restarts its embedded PostgreSQL (``pg_ctl restart -m fast``: every session
ends, the server is back within a second or so). Every connection a pool
holds is then broken. The figures: the requests that failed, and the longest
time the clients went without a successful response, which is the outage as
users see it. Only the demo's own embedded server is ever restarted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import processes
from .load import LoadResult
from .modes import PoolSize
from .report import Column, Row, View
from .scenarios import Context, Scenario, load_clients, postgresql_only, run_modes
from .servers import SERVERS, Server, Workers

CLIENTS = 8
POOL = PoolSize(4, 4, timeout=5)
WORKERS = Workers(1, 8)
KIND = SERVERS["gunicorn"]
MODES = ("no_pool", "django_builtin", "dj_db_conn_pool", "django_pool")

VIEW = View(
    key="restart",
    title="The database restarts under load",
    setup=f"gunicorn, 1 worker x 8 threads, {CLIENTS} clients, pools of 4 connections",
    columns=(
        Column("errors", "failed requests"),
        Column("longest_gap_s", "s without a success", 2),
        Column("restart_s", "restart took s", 2),
        Column("requests", "requests served"),
    ),
    drawn="longest_gap_s",
    axis="seconds without a successful response (lower is better)",
    noted="errors",
)


def unavailable(ctx: Context) -> str | None:
    if ctx.embedded is None:
        return "needs the demo's embedded PostgreSQL (it never restarts a server it was given)"
    return postgresql_only(ctx)


def run(ctx: Context) -> list[Row]:
    seconds, restart_at, warmup = (1.6, 0.4, 0.1) if ctx.quick else (6.0, 1.5, 0.3)
    embedded = ctx.embedded
    assert embedded is not None

    def measure(server: Server, mode: str) -> dict[str, Any]:
        load_clients(ctx, VIEW, server, mode, CLIENTS, warmup)
        loaded: list[LoadResult | BaseException] = []

        def drive() -> None:
            try:
                loaded.append(load_clients(ctx, VIEW, server, mode, CLIENTS, seconds))
            except BaseException as exc:  # shown by the main thread
                loaded.append(exc)

        thread = threading.Thread(target=drive, name="demo-restart-load", daemon=True)
        thread.start()
        time.sleep(restart_at)
        ctx.progress("  restarting the database server ...")
        # Ctrl-C waits for the restart to end: the server is never left half-started.
        with processes.signals_deferred():
            started = time.monotonic()
            embedded.restart()
            took = time.monotonic() - started
        thread.join()
        result = loaded[0]
        if isinstance(result, BaseException):
            raise result
        return {
            "requests": result.requests,
            "errors": result.errors,
            "longest_gap_s": result.longest_gap_s,
            "restart_s": round(took, 2),
            "first_error": result.first_error,
        }

    return run_modes(ctx, VIEW, KIND, WORKERS, POOL, MODES, measure)


SCENARIO = Scenario(VIEW, run, unavailable)
