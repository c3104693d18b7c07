"""A Django project serving the pools' Prometheus metrics in multiprocess mode.

Run by ``tests/test_contrib_prometheus_multiprocess.py`` under a real
gunicorn (``gunicorn.conf.py`` here), with ``PROMETHEUS_MULTIPROC_DIR`` set.
The project is also its only app: its ``AppConfig.ready()`` calls
``register()``, as an application would.
"""
