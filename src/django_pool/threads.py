"""Give a thread's Django connections back to the pool when its work ends.

Django returns connections at the end of each request. Code that runs ORM
queries elsewhere (a ``threading.Thread``, a ``ThreadPoolExecutor`` task, a
scheduler job) never gets that signal, so a thread that stays alive would keep
its pooled connection out of the pool for good. Wrap the work:

    @returns_connections
    def refresh_totals(): ...

    with PooledThreadPoolExecutor(max_workers=8) as executor:
        executor.map(process, batch)   # each task returns its connections
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def returns_connections(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function so that, however it ends, the calling thread's
    connections go back to their pools (unpooled ones are closed, as at the end
    of a request)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            from django.db import connections

            connections.close_all()

    return wrapper


class PooledThreadPoolExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose every task returns its connections when done."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(returns_connections(fn), *args, **kwargs)
