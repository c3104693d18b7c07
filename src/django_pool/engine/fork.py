"""Fork safety: a child process never touches its parent's connections.

After ``os.fork()`` (gunicorn ``--preload``, Celery prefork, ``multiprocessing``)
the child holds copies of the parent's sockets. If it used one, two processes
would interleave messages on one server session; if it merely closed one the
usual way, the driver would send a goodbye (libpq's Terminate, MySQL's
COM_QUIT) and the server would end the *parent's* session. Garbage collection
does this too, through the drivers' finalisers.

So every pool registers here. Just before a fork, all pool locks are taken, so
the child copies a consistent state; in the child, each pool points every
inherited socket at /dev/null (``detach``), forgets the connections and starts
afresh, opening its own on first use.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..adapters import Adapter
    from .pool import Pool

logger = logging.getLogger("django_pool")

_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_held: list[Pool] = []


def register(pool: Pool) -> None:
    _pools.add(pool)


def detach(adapter: Adapter, conn: Any) -> None:
    """Replace the connection's socket, in this process only, with /dev/null.

    The descriptor number stays taken (so no new socket can reuse it and
    receive a stray write), the parent's socket is untouched, and whatever a
    finaliser later writes goes nowhere.
    """
    try:
        fd = adapter.fileno(conn)
    except Exception:
        fd = None
    if fd is None or fd < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    except OSError as exc:
        logger.debug("could not detach inherited descriptor %d: %s", fd, exc)
    finally:
        os.close(devnull)


def _before_fork() -> None:
    _held[:] = list(_pools)
    for pool in _held:
        pool._lock.acquire()


def _after_fork_in_parent() -> None:
    for pool in _held:
        pool._lock.release()
    _held.clear()


def _after_fork_in_child() -> None:
    for pool in _held:
        pool._after_fork_in_child()
    _held.clear()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
