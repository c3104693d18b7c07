"""Scenario: an async view that awaits an outside call between two queries.

Under uvicorn, ``/wait-async`` runs a query, waits 50 ms (standing for a call
to another service) and runs another. A pool that keeps a request's
connection until the request ends can serve only as many requests at once as
it has connections, each of them idle through the wait; django-pool with
``"release": "transaction"`` takes the connection back after each query, so
the same 4 connections serve every client waiting at once. No pooling is not
limited by a pool either, but it opens a connection per request and holds as
many as there are clients.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .modes import PoolSize
from .report import Column, Row, View
from .scenarios import (
    Context,
    Scenario,
    describe_setup,
    load_clients,
    postgresql_only,
    rounded,
    run_modes,
)
from .servers import SERVERS, Server, Workers

CLIENTS = 40
POOL = PoolSize(4, 4, timeout=10, release="transaction")
WORKERS = Workers(1, 1)
KIND = dataclasses.replace(SERVERS["uvicorn"], path="/wait-async")
MODES = ("no_pool", "django_builtin", "dj_db_conn_pool", "django_pool")

VIEW = View(
    key="async_wait",
    title="Async view: query, await a 50 ms call, query",
    setup=describe_setup(KIND, WORKERS, POOL, f"{CLIENTS} clients"),
    columns=(
        Column("requests_per_second", "req/s"),
        Column("p99_ms", "p99 ms", 1),
        Column("errors", "errors"),
        Column("peak_connections", "peak server conns"),
    ),
    drawn="requests_per_second",
    axis="requests per second (higher is better)",
    noted="peak_connections",
)


def run(ctx: Context) -> list[Row]:
    seconds, warmup = (0.6, 0.1) if ctx.quick else (3.0, 0.5)

    def measure(server: Server, mode: str) -> dict[str, Any]:
        load_clients(ctx, VIEW, server, mode, CLIENTS, warmup)
        with ctx.monitor.window() as window:
            result = load_clients(ctx, VIEW, server, mode, CLIENTS, seconds)
        return {
            "requests": result.requests,
            "requests_per_second": round(result.requests_per_second, 1),
            "p50_ms": rounded(result.p50_ms, 1),
            "p99_ms": rounded(result.p99_ms, 1),
            "errors": result.errors,
            "peak_connections": window.peak_connections,
            "connections_opened": window.connections_opened,
        }

    return run_modes(ctx, VIEW, KIND, WORKERS, POOL, MODES, measure)


SCENARIO = Scenario(VIEW, run, postgresql_only)
