"""The pages the demo loads, one or two per scenario.

* ``/items`` (sync, for WSGI) and ``/items-async`` (async ORM, for ASGI):
  three ORM queries on one category, the throughput rows;
* ``/wait-async``: query, a 50 ms wait standing for a call to another
  service, query: what a pool that holds a connection across the wait pays for;
* ``/session/dirty`` and ``/session/check``: the first leaves session state
  behind (a role, a search_path, a custom setting), the second answers 409
  when the connection it got still carries any of it;
* ``/leak``: ORM work in a thread of its own that nobody closes the
  connection of, as code that forgets ``close_old_connections`` does;
* ``/health``: no database, for "is the server up".
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

from django.db import connection
from django.db.models import Avg, Max
from django.http import HttpRequest, HttpResponse, JsonResponse

from django_pool.demo.database import CATEGORIES

from .models import Item

_FIELDS = ("id", "name", "price")
#: Seconds ``/wait-async`` waits between its queries.
OUTSIDE_CALL = 0.05
#: What ``/session/dirty`` leaves on its connection, and how ``/session/check`` sees it.
DIRTY_STATEMENTS = (
    "SET ROLE pg_monitor",
    "SET search_path TO pg_catalog",
    "SELECT set_config('demo.tenant', '42', false)",
)
_SESSION_STATE = (
    "SELECT current_user <> session_user, current_setting('search_path'), "
    "coalesce(current_setting('demo.tenant', true), '')"
)


def _respond(response: HttpResponse) -> HttpResponse:
    # An explicit length keeps HTTP/1.1 keep-alive simple: no chunked bodies.
    response["Content-Length"] = str(len(response.content))
    return response


def health(request: HttpRequest) -> HttpResponse:
    """Answers without touching the database: the server is up."""
    return _respond(HttpResponse("ok", content_type="text/plain"))


def items(request: HttpRequest) -> HttpResponse:
    found = Item.objects.filter(category=random.randrange(CATEGORIES))
    payload: dict[str, Any] = {
        "count": found.count(),
        "cheapest": list(found.order_by("price", "id").values(*_FIELDS)[:10]),
        **found.aggregate(average=Avg("price"), highest=Max("price")),
    }
    return _respond(JsonResponse(payload))


async def items_async(request: HttpRequest) -> HttpResponse:
    found = Item.objects.filter(category=random.randrange(CATEGORIES))
    payload: dict[str, Any] = {
        "count": await found.acount(),
        "cheapest": [row async for row in found.order_by("price", "id").values(*_FIELDS)[:10]],
        **await found.aaggregate(average=Avg("price"), highest=Max("price")),
    }
    return _respond(JsonResponse(payload))


async def wait_async(request: HttpRequest) -> HttpResponse:
    found = Item.objects.filter(category=random.randrange(CATEGORIES))
    count = await found.acount()
    await asyncio.sleep(OUTSIDE_CALL)
    payload = {"count": count, **await found.aaggregate(average=Avg("price"))}
    return _respond(JsonResponse(payload))


def session_dirty(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        for statement in DIRTY_STATEMENTS:
            cursor.execute(statement)
        # Long enough for concurrent requests to hold different connections.
        cursor.execute("SELECT pg_sleep(0.05)")
    return _respond(HttpResponse("dirty", content_type="text/plain"))


def session_check(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute(_SESSION_STATE)
        role_changed, search_path, tenant = cursor.fetchone()
    left = {
        "role": bool(role_changed),
        "search_path": search_path == "pg_catalog",
        "set_config": bool(tenant),
    }
    status = 409 if any(left.values()) else 200
    return _respond(JsonResponse(left, status=status))


def _count_items() -> None:
    Item.objects.count()  # and no connections.close_all(): the connection stays open


def leak(request: HttpRequest) -> HttpResponse:
    thread = threading.Thread(target=_count_items, name="demo-leak")
    thread.start()
    thread.join()
    return _respond(HttpResponse("leaked", content_type="text/plain"))
