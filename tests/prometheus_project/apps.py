from django.apps import AppConfig

from django_pool.contrib.prometheus import register


class PrometheusProjectConfig(AppConfig):
    name = "tests.prometheus_project"

    def ready(self) -> None:
        # Under gunicorn --preload, in the master, before it forks the workers.
        register()
