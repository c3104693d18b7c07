"""The one-view Django project that ``benchmarks/asgi.py`` serves.

Not run by hand: ``asgi.py`` starts uvicorn (``asgi_app:application``) or
gunicorn (``asgi_app:wsgi_application``) with ``benchmarks/`` on
``PYTHONPATH`` and these variables set:

* ``BENCH_ASGI_DATABASE``: ``DATABASES["default"]`` as JSON, or empty for the
  ``ceiling`` mode (no database: the views skip their queries);
* ``BENCH_ASGI_SLEEP``: seconds the view waits between its two queries (0.05,
  standing for a call to another service).

Settings are made here with ``settings.configure()``, so no settings module is
needed (and ``DJANGO_SETTINGS_MODULE`` is ignored). Pages:

* ``/async``: query, ``await asyncio.sleep()``, query (for uvicorn);
* ``/sync``: query, ``time.sleep()``, query (for gunicorn's threads);
* ``/probe``: one query, answering 200 with ``{"ok": false, "error": ...}``
  when it fails, so the benchmark can tell a mode that cannot run (say
  ``ImproperlyConfigured`` for an option the backend does not know yet);
* ``/health``: no database, for "is the server up" (``demo.servers.Server``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

_database = os.environ.get("BENCH_ASGI_DATABASE", "")
DATABASE: dict[str, Any] | None = json.loads(_database) if _database else None
SLEEP = float(os.environ.get("BENCH_ASGI_SLEEP", "0.05"))
QUERY = "SELECT 1"

settings.configure(
    DEBUG=False,
    SECRET_KEY="django-pool-benchmark",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
    TIME_ZONE="UTC",
    DATABASES={"default": DATABASE} if DATABASE else {},
    # A failed request is logged to the server's output, which asgi.py keeps.
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
    },
)
django.setup()


def query() -> None:
    """One round trip through Django's connection (``connection.cursor()``)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(QUERY)
        cursor.fetchone()


# Thread-sensitive, as the async ORM's own calls are.
aquery = sync_to_async(query)


def _respond(response: HttpResponse) -> HttpResponse:
    # An explicit length keeps HTTP/1.1 keep-alive simple: no chunked bodies.
    response["Content-Length"] = str(len(response.content))
    return response


async def async_view(request: HttpRequest) -> HttpResponse:
    if DATABASE:
        await aquery()
    await asyncio.sleep(SLEEP)
    if DATABASE:
        await aquery()
    return _respond(HttpResponse(b"ok", content_type="text/plain"))


def sync_view(request: HttpRequest) -> HttpResponse:
    if DATABASE:
        query()
    time.sleep(SLEEP)
    if DATABASE:
        query()
    return _respond(HttpResponse(b"ok", content_type="text/plain"))


def probe(request: HttpRequest) -> HttpResponse:
    answer: dict[str, Any] = {"ok": True}
    if DATABASE:
        try:
            query()
        except Exception as exc:
            answer = {"ok": False, "type": type(exc).__name__, "error": str(exc)}
    return _respond(JsonResponse(answer))


def health(request: HttpRequest) -> HttpResponse:
    return _respond(HttpResponse(b"ok", content_type="text/plain"))


urlpatterns = [
    path("async", async_view),
    path("sync", sync_view),
    path("probe", probe),
    path("health", health),
]

from django.core.asgi import get_asgi_application  # noqa: E402 - after configure()
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_asgi_application()
wsgi_application = get_wsgi_application()
