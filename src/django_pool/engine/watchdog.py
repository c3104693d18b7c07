"""Bound a blocking driver call by a deadline, whatever the network does.

A driver call waits in the kernel for the server's answer. When the network
stops passing bytes but the TCP connection stays open (a dead route, a hung
middlebox or proxy), it waits until TCP gives up, minutes later, whatever
``connect_timeout`` or keepalive says: those only see a peer that is gone,
not one that stays silent. The pool guards the round trips it makes on a
caller's time (the ping before a checkout) with :func:`guard`: if the call is
still running at the deadline, a watchdog thread shuts the socket down, the
blocked call fails at once, and the pool drops the connection.

One thread serves every pool of the process and sleeps while nothing is
guarded; a guard costs a lock and a heap push. The socket is shut down under
the lock that guarded calls unregister under, so it is always the guarded
connection's own socket: its file descriptor cannot be closed, and its number
reused, before the guarded call has returned and unregistered.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
from collections.abc import Iterator
from time import monotonic

# Seconds the watchdog thread waits with nothing to guard before it ends.
_IDLE_EXIT = 10.0


class Guard:
    """One guarded call; ``fired`` says whether the deadline shut its socket down."""

    __slots__ = ("fd", "fired")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fired = False


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # (deadline, token, guard) of every call guarded now, soonest first;
        # entries whose token left _armed are skipped.
        self._heap: list[tuple[float, int, Guard]] = []
        self._armed: dict[int, Guard] = {}
        self._tokens = itertools.count()
        self._running = False
        # The thread stops once this is not its own: after a fork (under
        # gevent it is a greenlet, and greenlets survive into the child).
        self._life = object()

    @contextlib.contextmanager
    def guard(self, fd: int | None, deadline: float) -> Iterator[Guard | None]:
        """Shut ``fd`` (a socket) down if the block is still running at ``deadline``.

        Yields the :class:`Guard`, or None when there is no socket to guard.
        """
        if fd is None:
            yield None
            return
        guard = Guard(fd)
        with self._lock:
            token = next(self._tokens)
            self._armed[token] = guard
            heapq.heappush(self._heap, (deadline, token, guard))
            start = not self._running
            self._running = True
            if not start and self._heap[0][1] == token:
                self._changed.notify()  # the watchdog sleeps until a later deadline
        if start:
            threading.Thread(
                target=self._run, args=(self._life,), name="django-pool-watchdog", daemon=True
            ).start()
        try:
            yield guard
        finally:
            with self._lock:
                del self._armed[token]

    def _run(self, life: object) -> None:
        with self._lock:
            while self._life is life:
                heap = self._heap
                while heap and heap[0][1] not in self._armed:
                    heapq.heappop(heap)
                if not heap:
                    # Nothing guarded for a while: end (the next guard starts one).
                    if not self._changed.wait(_IDLE_EXIT) and not self._heap:
                        self._running = False
                        return
                    continue
                deadline, _, guard = heap[0]
                delay = deadline - monotonic()
                if delay > 0:
                    self._changed.wait(delay)
                    continue
                heapq.heappop(heap)
                guard.fired = True
                _shut_down(guard.fd)

    def _after_fork_in_child(self) -> None:
        # The thread did not survive the fork, and the lock may be held.
        self.__init__()  # type: ignore[misc]


def _shut_down(fd: int) -> None:
    """Shut the socket behind ``fd`` down both ways (a blocked read returns at once)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()  # the duplicate only


_watchdog = _Watchdog()
guard = _watchdog.guard
os.register_at_fork(after_in_child=_watchdog._after_fork_in_child)
