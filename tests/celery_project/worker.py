"""The Celery app, its tasks, and what the worker's processes record about themselves.

``DJANGO_SETTINGS_MODULE=tests.celery_project.settings celery -A
tests.celery_project.worker worker -P prefork|threads|gevent``. Celery's own
Django fixup is active (the settings module is set); nothing here returns
connections, so what the tasks report is what the fixup and django-pool do,
with :mod:`django_pool.contrib.celery` installed when ``DP_CELERY_CONTRIB=1``.

A *session* is ``[pg_backend_pid(), backend_start]``: a server process id may
be reused once its session has ended, the pair is not.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import Celery, signals
from celery.worker.control import inspect_command
from django.db import connection, connections, transaction

import django_pool.contrib.celery
from django_pool.backends import get_stats

app = Celery("celery_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
if os.environ.get("DP_CELERY_CONTRIB") == "1":
    django_pool.contrib.celery.install()

SESSION_SQL = "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"

# The worker's main process: the session it held while the pool's children
# were forked from it.
_parent_session: list[Any] | None = None
# This process's pool stats as its last task ended, after Celery's own
# task_postrun handlers (see _record_after_task).
_after_last_task: dict[str, Any] | None = None


def _session() -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL)
        backend_pid, backend_start = cursor.fetchone()
    return [backend_pid, backend_start]


@signals.worker_init.connect
def _use_database_before_fork(**kwargs: Any) -> None:
    """Hold a pooled connection in the main process while prefork forks the children.

    The fixup's own worker_init handler was connected first (when the app was
    made), so it has run already: this connection is not closed by it.
    """
    global _parent_session
    _parent_session = _session()
    # Connected now, so after the fixup's: it sees what the fixup left.
    signals.task_postrun.connect(_record_after_task)


@signals.worker_ready.connect
def _return_parent_connection(**kwargs: Any) -> None:
    """The children are forked by now: the main process gives its connection back."""
    connection.close()


def _record_after_task(**kwargs: Any) -> None:
    global _after_last_task
    _after_last_task = get_stats("default")


def _thread_name() -> str:
    return f"{threading.current_thread().name}#{threading.get_ident()}"


@app.task
def probe(index: int, hold_ms: int) -> dict[str, Any]:
    """ORM and SQL work on one pooled connection, held for ``hold_ms`` inside a transaction."""
    from .models import TaskRun

    with connection.cursor() as cursor:
        # A session change: the connection stays with this thread until
        # something closes it (outside a request no statement gives it back).
        cursor.execute("SET work_mem = '8MB'")
    with transaction.atomic():
        session = _session()
        TaskRun.objects.create(index=index, worker_pid=os.getpid(), backend_pid=session[0])
        time.sleep(hold_ms / 1000)
        during = get_stats("default")
    return {
        "pid": os.getpid(),
        "thread": _thread_name(),
        "wrapper": id(connections["default"]),
        "session": session,
        "stats": during,
    }


@app.task
def process_stats(hold_ms: int) -> dict[str, Any]:
    """This process's pool stats now, and as its previous task ended; no database work."""
    time.sleep(hold_ms / 1000)  # so that each task of a round finds another idle child
    return {"pid": os.getpid(), "stats": get_stats("default"), "after_last_task": _after_last_task}


@inspect_command()
def parent_session(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Run in the worker's main process: the session it forked with, and its pool now."""
    current = _session()
    connection.close()
    return {
        "pid": os.getpid(),
        "forked_with": _parent_session,
        "now": current,
        "stats": get_stats("default"),
    }
