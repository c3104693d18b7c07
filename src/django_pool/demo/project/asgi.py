"""ASGI entry point: ``uvicorn django_pool.demo.project.asgi:application``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_pool.demo.project.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
