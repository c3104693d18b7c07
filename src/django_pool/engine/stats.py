"""Stats: the counters, the histograms, and the listeners told of each timing.

Counters and gauges are read under the pool's lock (``get_stats``); the
histograms (:mod:`.histogram`) are never reset, for Prometheus; listeners
hear each timing as it happens, for exporters whose histograms need every
value (OpenTelemetry, Prometheus's multiprocess mode).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .histogram import Histogram, HistogramSnapshot
from .state import PoolState

logger = logging.getLogger("django_pool")


class Stats(PoolState):
    """Counting and telling: mixed into :class:`~.pool.Pool`, whose lock it shares."""

    # -- stats ---------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Gauges and counters, with psycopg_pool's keys plus a few of our own.

        Times are in milliseconds. ``last_connection_error`` (password removed)
        is present once a connection attempt has failed.
        """
        with self._lock:
            return self._stats_locked()

    def pop_stats(self) -> dict[str, Any]:
        """Like :meth:`get_stats`, and reset the counters (not the gauges)."""
        with self._lock:
            stats = self._stats_locked()
            self._reset_counters()
            return stats

    def add_listener(self, listener: Callable[[str, float], None]) -> None:
        """Call ``listener(kind, seconds)`` for each timing from now on, as it happens.

        The kinds: ``"wait"`` (a checkout, from the call to the connection in
        hand: 0 or near it when one was idle), ``"use"`` (from checkout to
        return or park) and ``"connect"`` (opening a connection, with the
        ``configure`` hook). For exporters whose histograms must see each
        value (OpenTelemetry; Prometheus in multiprocess mode): it runs in
        the borrowing or connecting thread, never under the pool's lock, and
        must be quick. What it raises is logged and dropped. A forked child's
        pool keeps its listeners.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[str, float], None]) -> None:
        """Stop calling ``listener``; nothing if it was not added."""
        with self._lock:
            self._listeners = tuple(known for known in self._listeners if known != listener)

    def _tell(self, kind: str, seconds: float) -> None:
        for listener in self._listeners:
            try:
                listener(kind, seconds)
            except Exception:
                logger.exception("pool %r: timing listener %r failed", self.name, listener)

    def get_histograms(self) -> dict[str, HistogramSnapshot]:
        """Distributions of ``wait`` (until a connection is handed over) and
        ``usage`` (until it is returned) times, in seconds, since the pool
        started in this process. Unlike the counters they are never reset."""
        with self._lock:
            return {
                # Checkouts served (returned or still out) less those with a
                # recorded wait: the ones served at once, with a zero wait.
                "wait": self._wait_histogram.snapshot(
                    zeros=sum(self._usage_locked().counts)
                    + len(self._lent)
                    - len(self._parked)
                    - sum(self._wait_histogram.counts)
                ),
                "usage": self._usage_histogram.snapshot(),
            }

    def _stats_locked(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "pool_min": self.min_size,
            "pool_max": self.max_size,
            "pool_size": self._nconns + self._connecting,
            "pool_available": len(self._idle) + len(self._parked),
            "pool_in_use": len(self._lent) - len(self._parked),
            "connections_opening": self._connecting,
            "requests_waiting": len(self._waiters),
            "requests_num": self._requests_num,
            "requests_queued": self._requests_queued,
            "requests_wait_ms": round(
                (self._wait_histogram.total - self._requests_wait_since) * 1000
            ),
            "requests_errors": self._requests_errors,
            "requests_timeouts": self._requests_timeouts,
            "usage_ms": round((self._usage_locked().total - self._usage_since) * 1000),
            "returns_bad": self._returns_bad,
            "connections_num": self._connections_num,
            "connections_ms": round(self._connections_time * 1000),
            "connections_errors": self._connections_errors,
            "connections_lost": self._connections_lost,
            "leaks_detected": self._leaks_detected,
            "connections_reclaimed": self._connections_reclaimed,
        }
        if self._last_error is not None:
            stats["last_connection_error"] = self._last_error
        return stats

    def _reset_counters(self) -> None:
        self._requests_num = 0
        self._requests_queued = 0
        # requests_wait_ms and usage_ms: the histograms' sums since the last pop_stats().
        self._requests_wait_since = self._wait_histogram.total
        self._requests_errors = 0
        self._requests_timeouts = 0
        self._usage_since = self._usage_locked().total
        self._returns_bad = 0
        self._connections_num = 0
        self._connections_time = 0.0
        self._connections_errors = 0
        self._connections_lost = 0
        self._leaks_detected = 0
        self._connections_reclaimed = 0

    def _usage_locked(self) -> Histogram:
        """The usage histogram, with every return so far observed."""
        self._usage_histogram.observe_all(self._usage_pending)
        return self._usage_histogram
