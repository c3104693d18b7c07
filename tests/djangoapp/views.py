"""Views for the serving tests: what a request's connection looks like."""

from __future__ import annotations

import asyncio
import os
import threading

from asgiref.sync import sync_to_async
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


async def awaits(request):  # type: ignore[no-untyped-def]
    """A query, an outside call (a sleep), a query: what the pool lent meanwhile."""
    await Item.objects.acount()
    await asyncio.sleep(float(request.GET.get("wait", "0.05")))
    in_use = get_pool("default").get_stats()["pool_in_use"]
    await Item.objects.acount()
    return JsonResponse({"in_use_during_await": in_use})


def _count() -> int:
    return Item.objects.count()


def leak_thread(request):  # type: ignore[no-untyped-def]
    """ORM work in a thread nobody closes the connections of."""
    thread = threading.Thread(target=_count)
    thread.start()
    thread.join()
    return JsonResponse({"ok": True})


async def leak_gather(request):  # type: ignore[no-untyped-def]
    """ORM work in asyncio's worker threads (sync_to_async, not thread-sensitive)."""
    calls = [sync_to_async(_count, thread_sensitive=False)() for _ in range(4)]
    return JsonResponse({"counts": await asyncio.gather(*calls)})


_background: set[asyncio.Task[int]] = set()


async def leak_task(request):  # type: ignore[no-untyped-def]
    """ORM work in a task that runs on after the response."""

    async def later() -> int:
        await asyncio.sleep(0.01)
        return await Item.objects.acount()

    task = asyncio.create_task(later())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return JsonResponse({"ok": True})
