"""Scenario: a view leaks a connection, ORM work in a thread of its own.

``/leak`` counts the items in a ``threading.Thread`` and lets the thread end
without closing its connection, as code does that forgets the thread helper
(or ``close_old_connections``). It is called once per connection of the pool,
then clients load ``/items``. A pool that lends the thread a connection for
good has none left: every request waits its ``timeout`` and fails. django-pool
takes a connection back once nothing on it needs to survive, and one whose
thread ended within about a second. The figures: requests that failed after
the leaks, and the longest time without a successful response.
"""

from __future__ import annotations

from typing import Any

from .modes import PoolSize
from .report import Column, Row, View
from .scenarios import (
    Context,
    Scenario,
    describe_setup,
    get,
    load_clients,
    postgresql_only,
    run_modes,
)
from .servers import SERVERS, Server, Workers

CLIENTS = 4
POOL = PoolSize(4, 4, timeout=2)
LEAKS = POOL.max_size
WORKERS = Workers(1, 4)
KIND = SERVERS["gunicorn"]
MODES = ("no_pool", "django_builtin", "dj_db_conn_pool", "django_pool")

VIEW = View(
    key="leak",
    title="A view leaks connections (ORM in a thread, not closed)",
    setup=describe_setup(KIND, WORKERS, POOL, f"{LEAKS} leaking requests, then {CLIENTS} clients"),
    columns=(
        Column("errors", "failed requests after"),
        Column("longest_gap_s", "s without a success", 1),
        Column("requests", "requests served"),
        Column("sessions_after_leaks", "server sessions after the leaks"),
    ),
    drawn="errors",
    axis="requests that failed after the leaks (lower is better)",
    noted="longest_gap_s",
)


def run(ctx: Context) -> list[Row]:
    seconds = 1.0 if ctx.quick else 4.0

    def measure(server: Server, mode: str) -> dict[str, Any]:
        statuses = [get(server.base_url + "/leak") for _ in range(LEAKS)]
        sessions = ctx.monitor.open_connections()
        result = load_clients(ctx, VIEW, server, mode, CLIENTS, seconds)
        return {
            "leaked": statuses.count(200),
            "sessions_after_leaks": sessions,
            "errors": result.errors,
            "longest_gap_s": result.longest_gap_s,
            "requests": result.requests,
            "first_error": result.first_error,
        }

    return run_modes(ctx, VIEW, KIND, WORKERS, POOL, MODES, measure)


SCENARIO = Scenario(VIEW, run, postgresql_only)
