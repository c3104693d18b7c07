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

from django_pool.testservers import PostgresServer

from . import processes
from .load import LoadResult
from .modes import PoolSize
from .report import Column, Row, View
from .scenarios import Context, Scenario, describe_setup, load_clients, postgresql_only, run_modes
from .servers import SERVERS, Server, Workers

CLIENTS = 8
POOL = PoolSize(4, 4, timeout=5)
WORKERS = Workers(1, 8)
KIND = SERVERS["gunicorn"]
MODES = ("no_pool", "django_builtin", "dj_db_conn_pool", "django_pool")

VIEW = View(
    key="restart",
    title="The database restarts under load",
    setup=describe_setup(KIND, WORKERS, POOL, f"{CLIENTS} clients"),
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
    # The restart comes restart_at s into the load; the rest leaves room for the
    # slowest recovery (about 1 s, Django's pool) to be over before the end.
    seconds, restart_at, warmup = (2.0, 0.3, 0.1) if ctx.quick else (4.5, 1.5, 0.3)
    embedded = ctx.embedded
    assert embedded is not None

    def restart() -> dict[str, Any]:
        """Restart the server: how long it took, and its start times before and after."""
        # Ctrl-C waits for the restart to end: the server is never left half-started.
        with processes.signals_deferred():
            ctx.progress("  restarting the database server ...")
            before = _start_time(embedded)
            began = time.monotonic()
            embedded.restart()
            took = time.monotonic() - began
            ctx.progress(f"  the database server was back in {took:.2f} s")
            # The server's own word that it restarted (the tests compare the two).
            return {
                "restart_s": round(took, 2),
                "server_started_before": before,
                "server_started_after": _start_time(embedded),
            }

    def measure(server: Server, mode: str) -> dict[str, Any]:
        load_clients(ctx, VIEW, server, mode, CLIENTS, warmup)
        loaded: list[LoadResult | BaseException] = []
        load_started = threading.Event()

        def drive() -> None:
            try:
                result = load_clients(ctx, VIEW, server, mode, CLIENTS, seconds, load_started)
                loaded.append(result)
            except BaseException as exc:  # shown by the main thread
                loaded.append(exc)

        thread = threading.Thread(target=drive, name="demo-restart-load", daemon=True)
        thread.start()
        # Timed from the clients' start, not the thread's: a slow start must not
        # move the restart before the load.
        while not load_started.wait(0.05) and thread.is_alive():
            pass
        restarted = None
        if load_started.is_set():
            time.sleep(restart_at)
            restarted = restart()
        thread.join()
        result = loaded[0]
        if isinstance(result, BaseException):
            raise result
        assert restarted is not None  # the load ran, so the restart did
        return {
            "requests": result.requests,
            "errors": result.errors,
            "longest_gap_s": result.longest_gap_s,
            **restarted,
            "first_error": result.first_error,
        }

    return run_modes(ctx, VIEW, KIND, WORKERS, POOL, MODES, measure)


def _start_time(server: PostgresServer) -> str:
    rows = server.execute("SELECT pg_postmaster_start_time()::text")
    assert rows
    return str(rows[0][0])


SCENARIO = Scenario(VIEW, run, unavailable)
