"""ASGI entry point for the serving tests (``tests.djangoapp.asgi:application``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djangoapp.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
