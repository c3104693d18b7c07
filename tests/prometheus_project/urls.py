"""``/session``: one query, answering which worker and server session served it;
``/metrics``: every process's metrics, read from ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import os

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector


def session(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
    return JsonResponse({"pid": os.getpid(), "session": backend_pid})


def metrics(request: HttpRequest) -> HttpResponse:
    # A registry per scrape holding only the collector of the files, as
    # prometheus_client advises: this process's own metrics are in the files.
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response["X-Worker-Pid"] = str(os.getpid())
    return response


urlpatterns = [path("session", session), path("metrics", metrics)]
