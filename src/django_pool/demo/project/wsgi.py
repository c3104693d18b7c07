"""WSGI entry point: ``gunicorn django_pool.demo.project.wsgi``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_pool.demo.project.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
