"""Scenario: a view leaves session state on its connection.

``/session/dirty`` runs ``SET ROLE``, ``SET search_path`` and
``set_config(..., false)`` and returns; nothing undoes them. Eight of them at
once touch every connection of the pool. Then clients load
``/session/check``, which asks the server for the role, search_path and
setting of the connection it got and answers 409 when any is left over: a
request running as another role, or finding other tables first. django-pool
sees such statements and resets the session before lending the connection
again; a pool that does not lends it as it is.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
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
DIRTY_REQUESTS = 8
POOL = PoolSize(4, 4, timeout=5)
WORKERS = Workers(1, 4)
KIND = dataclasses.replace(SERVERS["gunicorn"], path="/session/check")
MODES = ("no_pool", "django_builtin", "dj_db_conn_pool", "django_pool")

VIEW = View(
    key="session_state",
    title="A view leaves SET ROLE, search_path, set_config behind",
    setup=describe_setup(
        KIND,
        WORKERS,
        POOL,
        f"{DIRTY_REQUESTS} such requests at once, then {CLIENTS} clients check their connection",
    ),
    columns=(
        Column("dirtied", "requests that left state"),
        Column("with_state", "later requests with the state"),
        Column("checked", "later requests"),
        Column("other_errors", "other errors"),
    ),
    drawn="with_state",
    axis="later requests that ran with the left-over state (lower is better)",
    noted="checked",
)


def run(ctx: Context) -> list[Row]:
    seconds = 0.4 if ctx.quick else 2.0

    def measure(server: Server, mode: str) -> dict[str, Any]:
        dirty = server.base_url + "/session/dirty"
        with ThreadPoolExecutor(DIRTY_REQUESTS) as executor:
            statuses = list(executor.map(get, [dirty] * DIRTY_REQUESTS))
        result = load_clients(ctx, VIEW, server, mode, CLIENTS, seconds)
        with_state = result.error_kinds.get("HTTP 409", 0)
        return {
            "dirtied": statuses.count(200),
            "with_state": with_state,
            "checked": result.requests + result.errors,
            "other_errors": result.errors - with_state,
        }

    return run_modes(ctx, VIEW, KIND, WORKERS, POOL, MODES, measure)


SCENARIO = Scenario(VIEW, run, postgresql_only)
