"""The pool's state, declared once for every concern that works on it.

:class:`~.pool.Pool` is one object with one lock; its concerns live in
modules of their own (:mod:`.growth`, :mod:`.maintenance`, :mod:`.stats`)
as classes it inherits from. They all derive from :class:`PoolState`, which
names every field (set in ``Pool.__init__`` and ``Pool._init_state``, whose
comments say what each one means), the methods one concern calls in
another, and the few helpers they share.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..adapters import Adapter, adapter_for
from ..redact import redact
from .histogram import Histogram
from .slots import Slot, Waiter

logger = logging.getLogger("django_pool")


class PoolState:
    """Fields and shared helpers of :class:`~.pool.Pool` (see :mod:`.pool` for the lock)."""

    # Settings (Pool's arguments).
    name: str
    min_size: int
    max_size: int
    timeout: float
    max_waiting: int
    max_lifetime: float
    max_idle: float
    reconnect_timeout: float
    validate_after: float | None
    num_workers: int
    leak_threshold: float | None
    _connect: Callable[[], Any]
    _adapter: Adapter | None
    _configure: Callable[[Any], None] | None
    _reset: Callable[[Any], None] | None
    _reclaim: Callable[[Any], bool] | None
    _secrets: tuple[str, ...]
    _validate_window: float
    _park_limit: float

    # One process's life of the pool, guarded by _lock.
    _lock: threading.Lock
    _changed: threading.Condition
    _life: object
    _idle: deque[Slot]
    _lent: dict[int, Slot]
    _parked: dict[int, Slot]
    _waiters: deque[Waiter]
    _nconns: int
    _connecting: int
    _opened: bool
    _closed: bool
    _maintenance_running: bool
    _maintenance_due: float
    _watching_owners: bool
    _generation: int
    _distrust_before: float
    _failures: int
    _failing_since: float
    _retry_at: float
    _failed_at: float
    _failures_total: int
    _last_error: str | None
    _gave_up: bool
    _connect_avg: float
    _usage_avg: float
    _inherited: dict[int, Any]
    _reported_baseline: tuple[Any, ...] | None
    _pid: int

    # Stats (see .stats).
    _wait_histogram: Histogram
    _usage_histogram: Histogram
    _usage_pending: list[float]
    _listeners: tuple[Callable[[str, float], None], ...]
    _requests_num: int
    _requests_queued: int
    _requests_wait_since: float
    _requests_errors: int
    _requests_timeouts: int
    _usage_since: float
    _returns_bad: int
    _connections_num: int
    _connections_time: float
    _connections_errors: int
    _connections_lost: int
    _leaks_detected: int
    _connections_reclaimed: int

    # Called across concerns; defined where they belong.
    putconn: Callable[..., None]  # .pool
    reported_settings_changed: Callable[[Any], bool]  # .pool
    _hand_over_locked: Callable[[Slot, float], None]  # .pool
    _restore: Callable[[Any, int], bool]  # .pool
    _unpark_to_idle_locked: Callable[[Slot], None]  # .pool
    _connectors_to_start_locked: Callable[[], int]  # .growth
    _start_threads: Callable[[int, bool], None]  # .growth
    _run_maintenance: Callable[[object], None]  # .maintenance
    _tell: Callable[[str, float], None]  # .stats

    def _adapter_of(self, conn: Any) -> Adapter:
        if self._adapter is None:
            self._adapter = adapter_for(conn)
        return self._adapter

    def _close_quietly(self, conn: Any) -> None:
        try:
            self._adapter_of(conn).close(conn)
        except Exception as exc:
            logger.debug("pool %r: error closing a connection: %s", self.name, exc)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)
