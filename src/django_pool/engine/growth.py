"""Growth: how many connections to open, the connector threads that open them, back-off.

Connections are opened by short-lived connector threads, never by the
caller: a request that finds nothing idle queues (:mod:`.pool`) and is
served by whichever comes first, a returned connection or a new one. How
many connectors run is steered by the moving averages of connect and usage
time, and by ``num_workers``; while the server refuses, one attempt at a
time, with exponential back-off.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from time import monotonic

from ..adapters import adapter_for
from . import fork
from .slots import Slot
from .state import PoolState

logger = logging.getLogger("django_pool")

# Reconnection back-off: first retry after about this long, doubling up to the cap.
# A restart (the server gone for a fraction of a second) is over by the second or
# third retry; a server that stays down gets eight attempts in its first 13 s
# (retries about 0.1, 0.3, 0.7 ... 12.7 s after the first), then one per 10 s,
# or per _RETRY_WHILE_WAITING while requests wait.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0
# Lifetimes are shortened by up to this fraction, so connections opened together
# (at start-up, after a restart) do not all expire together.
_LIFETIME_JITTER = 0.05
# Weight of the newest sample in the moving averages of connect and usage time.
_EWMA_WEIGHT = 0.2
# While requests wait for a connection the server refused, the next attempt
# comes at most this long after the last one, whatever the back-off says: the
# server being back is noticed within it.
_RETRY_WHILE_WAITING = 0.5


class Growth(PoolState):
    """Opening connections: mixed into :class:`~.pool.Pool`, whose lock it shares."""

    # -- opening connections ---------------------------------------------------------

    def _connectors_wanted_locked(self) -> int:
        """How many connect attempts should be under way now."""
        if self._closed or not self._opened:
            return 0
        nconns = self._nconns
        want = 0 if self._gave_up else self.min_size - nconns
        waiting = len(self._waiters)
        if waiting:
            if nconns and self._usage_avg and self._connect_avg:
                oldest_wait = monotonic() - self._waiters[0].since
                if oldest_wait < 2 * self._connect_avg:
                    # The open connections will serve the queue in about
                    # waiting * usage / nconns seconds; open only as many more
                    # as could arrive in time to shorten that.
                    useful = math.ceil(waiting * self._usage_avg / self._connect_avg) - nconns
                    waiting = min(waiting, useful)
            want = max(want, waiting)
        # While connecting fails, one attempt at a time probes the server.
        workers = 1 if self._failures else self.num_workers
        return max(0, min(want, self.max_size - nconns, workers))

    def _connectors_to_start_locked(self) -> int:
        """Count new connector threads in ``_connecting``; the caller starts them."""
        missing = self._connectors_wanted_locked() - self._connecting
        if missing <= 0:
            return 0
        self._connecting += missing
        return missing

    def _start_threads(self, connectors: int, maintenance: bool) -> None:
        life = self._life
        for _ in range(connectors):
            threading.Thread(
                target=self._run_connector, args=(life,), name=f"{self.name}-connect", daemon=True
            ).start()
        if maintenance:
            threading.Thread(
                target=self._run_maintenance,
                args=(life,),
                name=f"{self.name}-maintenance",
                daemon=True,
            ).start()

    def _run_connector(self, life: object) -> None:
        """Open connections while they are wanted.

        Started already counted in ``_connecting``; the count drops in the same
        critical section that adds the new connection, so the size invariant
        holds at every instant.
        """
        while True:
            with self._changed:
                if self._life is not life:
                    return
                delay = self._retry_delay_locked()
                if delay > 0:
                    # Woken early by close() and by a request that queues.
                    self._changed.wait(delay)
            opened = None if delay > 0 else self._connect_once()
            discard = None
            with self._lock:
                if self._life is not life:  # forked meanwhile: not this process's
                    if opened is not None:
                        fork.detach(self._adapter_of(opened[0].conn), opened[0].conn)
                    return
                self._connecting -= 1
                if opened is not None:
                    slot, elapsed = opened
                    self._connections_num += 1
                    self._connections_time += elapsed
                    self._connect_avg = ewma(self._connect_avg, elapsed)
                    self._failures = 0
                    self._gave_up = False
                    self._retry_at = 0.0
                    if (
                        self._closed
                        or slot.generation != self._generation
                        or self._nconns >= self.max_size  # resize() lowered it meanwhile
                    ):
                        discard = slot.conn
                    else:
                        self._nconns += 1
                        self._hand_over_locked(slot, slot.last_ok)
                        self._changed.notify_all()
                done = self._connecting >= self._connectors_wanted_locked()
                if not done:
                    self._connecting += 1
                elif self._closed:
                    self._changed.notify_all()  # close() waits for the last connector
            if discard is not None:
                self._close_quietly(discard)
            if done:
                return

    def _retry_delay_locked(self) -> float:
        """Seconds until the next connect attempt may start (the back-off after failures).

        The back-off grows to spare a server that is down; while requests
        wait, an attempt is made at least every ``_RETRY_WHILE_WAITING``, so
        they are served as soon as it is back.
        """
        retry_at = self._retry_at
        if self._waiters:
            retry_at = min(retry_at, self._failed_at + _RETRY_WHILE_WAITING)
        return retry_at - monotonic()

    def _connect_once(self) -> tuple[Slot, float] | None:
        """One attempt: the new slot and how long it took, or None on failure."""
        started = monotonic()
        conn = None
        generation, round_ = self._generation, self._failures
        try:
            conn = self._connect()
            if self._adapter is None:
                self._adapter = adapter_for(conn)
            if self._configure is not None:
                self._configure(conn)
            if self._reported_baseline is None:
                self._reported_baseline = self._adapter.reported_settings(conn)
        except Exception as exc:
            if conn is not None:
                self._close_quietly(conn)
            self._connect_failed(exc, started, round_)
            return None
        now = monotonic()
        if self._listeners:
            self._tell("connect", now - started)
        lifetime = self.max_lifetime * (1 - _LIFETIME_JITTER * random.random())
        return Slot(conn, now, now + lifetime, generation), now - started

    def _connect_failed(self, exc: BaseException, started: float, round_: int) -> None:
        cause = self._redact(f"{type(exc).__name__}: {exc}".strip())
        now = monotonic()
        with self._lock:
            self._connections_errors += 1
            self._failures_total += 1
            if not self._failures:
                self._failing_since = started
            # Attempts started in the same round (before any of them failed)
            # count once: only a new round lengthens the back-off.
            if round_ == self._failures:
                self._failures += 1
                delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
                self._retry_at = now + delay * random.uniform(0.5, 1.5)
            self._failed_at = now
            self._last_error = cause
            gave_up = not self._gave_up and now - self._failing_since >= self.reconnect_timeout
            self._gave_up = self._gave_up or gave_up
            failures = self._failures
            self._changed.notify_all()
        if gave_up:
            logger.error(
                "pool %r: connecting has failed for %.0f s; no longer refilling in the "
                "background until a request asks: %s",
                self.name,
                now - self._failing_since,
                cause,
            )
        else:
            logger.warning("pool %r: connection attempt %d failed: %s", self.name, failures, cause)


def ewma(average: float, sample: float) -> float:
    """Exponentially weighted moving average; the first sample stands alone."""
    return average + _EWMA_WEIGHT * (sample - average) if average else sample
