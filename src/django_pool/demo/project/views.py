"""The page under load: three ORM queries on one category, as JSON.

A sync view for WSGI and an async one, on the async ORM, for ASGI. Each
request takes one connection on its first query and gives it back when Django
finishes the request, which is where the modes differ.
"""

from __future__ import annotations

import random
from typing import Any

from django.db.models import Avg, Max
from django.http import HttpRequest, HttpResponse, JsonResponse

from django_pool.demo.database import CATEGORIES

from .models import Item

_FIELDS = ("id", "name", "price")


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
