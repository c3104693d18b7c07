"""A tiny Django + Celery project run by ``tests/test_celery.py`` in subprocesses.

``celery -A tests.celery_project.worker worker`` runs its tasks (prefork,
threads or gevent pool) on a Redis broker, and ``python -m
tests.celery_project.burst`` sends them a burst and reports, as one JSON line,
what every task and every worker process saw: its OS pid, its thread or
greenlet, its server session and its pool's stats. Never imported by the
pytest session itself.
"""
