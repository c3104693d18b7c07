"""``INSTALLED_APPS = [..., "django_pool"]``: turns on django-pool's system checks.

The app has no models and no migrations; the pooled backends work without it.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class DjangoPoolConfig(AppConfig):  # type: ignore[misc]
    name = "django_pool"
    verbose_name = "django-pool"

    def ready(self) -> None:
        from .backends.checks import check_pool_settings, check_server_capacity
        from .contrib.views import check_stats_token

        checks.register(check_pool_settings)
        checks.register(check_stats_token)
        # Database checks run only for ``check --database ALIAS``: they connect.
        checks.register(check_server_capacity, checks.Tags.database)
