"""Settings of the demo project; ``DATABASES`` depends on the mode being measured."""

from __future__ import annotations

import os

from django_pool.demo.modes import settings_from_environment

SECRET_KEY = "django-pool-demo-not-secret"  # serves 127.0.0.1 only, no sessions
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django_pool.demo.project"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "django_pool.demo.project.urls"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": settings_from_environment(os.environ)}

# A failed request is logged to the server's output, which the demo shows.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
