"""``/items`` (sync view, for WSGI), ``/items-async`` (for ASGI), ``/health``."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("items", views.items),
    path("items-async", views.items_async),
    path("health", views.health),
]
