"""The demo's pages (see :mod:`.views`)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("items", views.items),
    path("items-async", views.items_async),
    path("wait-async", views.wait_async),
    path("session/dirty", views.session_dirty),
    path("session/check", views.session_check),
    path("leak", views.leak),
    path("health", views.health),
]
