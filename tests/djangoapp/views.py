"""Views for the serving tests: what a request's connection looks like."""

from __future__ import annotations

import os

from django.db import connection
from django.http import JsonResponse

from django_pool.backends import get_pool

from .models import Item


def _session_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def whoami(request):  # type: ignore[no-untyped-def]
    """The worker process and the server session that served this request."""
    items = Item.objects.count()
    return JsonResponse({"pid": os.getpid(), "session": _session_id(), "items": items})


async def async_items(request):  # type: ignore[no-untyped-def]
    """An async view using the async ORM."""
    count = await Item.objects.acount()
    first = await Item.objects.order_by("id").afirst()
    return JsonResponse({"count": count, "first": first.name if first else None})


def stats(request):  # type: ignore[no-untyped-def]
    pool = get_pool("default")
    return JsonResponse({"pid": os.getpid(), "stats": pool.get_stats() if pool else None})
