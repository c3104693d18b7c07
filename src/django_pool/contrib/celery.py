"""Celery workers: each task's connections go back to the pool, and the pool stays.

Celery's Django fixup closes Django's connections before and after every task.
Since Celery 5.6 it also calls ``close_pool()`` there, in prefork children, on
every alias with ``OPTIONS["pool"]``: meant for Django's built-in pool, whose
connections a forked child must not share. django-pool's pools are fork-safe
already (see :mod:`django_pool.fork`), so that call only closes the child's
pool after every task, and each task opens a new server session.

:func:`install` connects handlers that run before the fixup's: they give the
task's pooled connections back and drop their wrappers, so that the fixup,
which closes only the connections made so far in the task's thread, finds none
of them and leaves their pools open. Unpooled aliases and caches are left to
the fixup. Call it in the module that makes the Celery app, before the worker
starts::

    app = Celery("proj")
    django_pool.contrib.celery.install()
"""

from __future__ import annotations

from typing import Any

from celery import signals
from django.db import connections

__all__ = ["install"]


def return_task_connections(sender: Any = None, **kwargs: Any) -> None:
    """``task_prerun``/``task_postrun``: return this thread's pooled connections.

    Eager tasks (``task_always_eager``, ``apply()``) run in the caller's thread,
    possibly inside its request or transaction: their connections are the
    caller's, as the fixup also leaves them.
    """
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    for wrapper in connections.all(initialized_only=True):
        if getattr(wrapper, "pool_options", None) is not None:
            wrapper.close()
            # The next query in this thread makes a new wrapper, which borrows
            # from the same pool: the fixup never sees this one.
            del connections[wrapper.alias]


def install() -> None:
    """Connect :func:`return_task_connections` to ``task_prerun`` and ``task_postrun``.

    Celery calls receivers in the order they were connected, and the fixup
    connects its own when the worker starts (``worker_init``): call this
    earlier, when the Celery app is made. Calling it again changes nothing.
    """
    for signal in (signals.task_prerun, signals.task_postrun):
        signal.connect(
            return_task_connections,
            dispatch_uid=f"django_pool.contrib.celery.{signal.name}",
        )
