"""Maintenance: the one background thread that keeps the pool in shape.

It closes idle connections past ``max_idle`` or their lifetime, moves
parked connections to idle, keeps ``min_size`` open, reports probable leaks
and reclaims connections whose borrower's thread ended.
"""

from __future__ import annotations

import logging
from collections import deque
from time import monotonic

from .slots import Slot, format_stack
from .state import PoolState

logger = logging.getLogger("django_pool")

# How often the maintenance thread looks for connections whose owner thread
# ended while they were lent (see getconn's ``owner``).
_OWNER_CHECK_INTERVAL = 1.0


class Maintenance(PoolState):
    """The maintenance thread: mixed into :class:`~.pool.Pool`, whose lock it shares."""

    # -- maintenance -------------------------------------------------------------------

    def _run_maintenance(self, life: object) -> None:
        """Close idle connections past ``max_idle`` or their lifetime; keep ``min_size``.

        Also reports connections lent for longer than ``leak_threshold``, and
        reclaims those whose owner thread ended: after close() too, until no
        lent connection has an owner (a reclaimed one is then closed).
        """
        while True:
            with self._lock:
                if self._life is not life or (self._closed and not self._owned_lent_locked()):
                    return
                now = monotonic()
                changed = self._unpark_stale_locked(now)
                expired = [*changed, *self._take_expired_idle_locked(now)]
                spawn = self._connectors_to_start_locked()
                leaks = self._take_leaks_locked(now) if self.leak_threshold is not None else []
                abandoned = [
                    slot
                    for slot in self._lent.values()
                    if slot.owner is not None and not slot.owner.is_alive()
                ]
            for slot in expired:
                self._close_quietly(slot.conn)
            self._start_threads(spawn, False)
            for slot in abandoned:
                self._reclaim_abandoned(slot)
            for held, stack in leaks:
                logger.warning(
                    "pool %r: a connection has been in use for %.1f s (leak_threshold=%g s); "
                    "it was taken at:\n%s",
                    self.name,
                    held,
                    self.leak_threshold,
                    stack,
                )
            with self._changed:
                if self._life is not life or (self._closed and not self._owned_lent_locked()):
                    return
                now = monotonic()
                self._maintenance_due = self._next_maintenance_locked(now)
                # Woken early by close(), new connections, or a return whose
                # lifetime ends before the planned time (see putconn).
                self._changed.wait(max(0.01, self._maintenance_due - now))

    def _owned_lent_locked(self) -> bool:
        return self._watching_owners and any(s.owner is not None for s in self._lent.values())

    def _reclaim_abandoned(self, slot: Slot) -> None:
        """Take back a connection whose owner thread ended without returning it."""
        conn = slot.conn
        with self._lock:
            owner = slot.owner
            # Returned (or lent again) since it was found: nothing to reclaim.
            if self._lent.get(id(conn)) is not slot or owner is None or owner.is_alive():
                return
            slot.owner = None
        logger.warning(
            "pool %r: a connection lent %.1f s ago to thread %r, which ended without "
            "giving it back, was reclaimed. It was taken at:\n%s",
            self.name,
            monotonic() - slot.lent_at,
            owner.name if owner is not None else "?",
            format_stack(slot.taken_by)
            if slot.taken_by
            else "  (unknown: set leak_threshold to record where connections are taken)\n",
        )
        keep = True
        if self._reclaim is not None:
            try:
                # Rolled back first: the hook may run statements.
                state = self._adapter_of(conn).state(conn)
                keep = self._restore(conn, state) and bool(self._reclaim(conn))
            except Exception as exc:
                logger.info(
                    "pool %r: a reclaimed connection could not be reset: %s",
                    self.name,
                    self._redact(str(exc)),
                )
                keep = False
        with self._lock:
            self._connections_reclaimed += 1
        self.putconn(conn, discard=not keep)

    def _unpark_stale_locked(self, now: float) -> list[Slot]:
        """Parked connections nobody took back within ``_park_limit`` become idle ones.

        Those whose reported settings changed (see park()) are returned
        instead, no longer counted, for the caller to close.
        """
        changed = []
        for key, slot in list(self._parked.items()):
            if now - slot.last_ok >= self._park_limit:
                del self._parked[key]
                if self.reported_settings_changed(slot.conn):
                    del self._lent[key]
                    self._nconns -= 1
                    changed.append(slot)
                else:
                    self._unpark_to_idle_locked(slot)
        return changed

    def _take_idle_locked(self) -> list[Slot]:
        """Empty ``_idle`` and ``_parked`` (close(), drain()): their slots, no longer counted."""
        slots = [*self._idle, *self._parked.values()]
        for key in self._parked:
            del self._lent[key]
        self._idle.clear()
        self._parked.clear()
        self._nconns -= len(slots)
        return slots

    def _take_expired_idle_locked(self, now: float) -> list[Slot]:
        expired = [
            s for s in self._idle if now >= s.expires_at or s.generation != self._generation
        ]
        if expired:
            gone = {id(s) for s in expired}
            self._idle = deque(s for s in self._idle if id(s) not in gone)
        # The bottom of the stack has been idle longest.
        while (
            self._idle
            and self._nconns - len(expired) > self.min_size
            and now - self._idle[0].last_ok >= self.max_idle
        ):
            expired.append(self._idle.popleft())
        self._nconns -= len(expired)
        if expired:
            self._changed.notify_all()
        return expired

    def _take_leaks_locked(self, now: float) -> list[tuple[float, str]]:
        """Lent connections newly past ``leak_threshold``: (held seconds, stack)."""
        threshold = self.leak_threshold
        assert threshold is not None
        leaks = []
        for key, slot in self._lent.items():
            if key in self._parked or slot.leak_reported:
                continue
            if now - slot.lent_at >= threshold:
                slot.leak_reported = True
                leaks.append((now - slot.lent_at, format_stack(slot.taken_by)))
        self._leaks_detected += len(leaks)
        return leaks

    def _next_maintenance_locked(self, now: float) -> float:
        wake_at = now + min(self.max_idle, 60.0)
        for slot in self._idle:
            wake_at = min(wake_at, slot.expires_at)
        if self._idle and self._nconns > self.min_size:
            wake_at = min(wake_at, self._idle[0].last_ok + self.max_idle)
        if self._watching_owners:
            wake_at = min(wake_at, now + _OWNER_CHECK_INTERVAL)
        for slot in self._parked.values():
            wake_at = min(wake_at, slot.last_ok + self._park_limit)
        threshold = self.leak_threshold
        if threshold is not None:
            # Connections lent later are seen within a quarter of the threshold.
            wake_at = min(wake_at, now + threshold / 4)
            for key, slot in self._lent.items():
                if not slot.leak_reported and key not in self._parked:
                    wake_at = min(wake_at, slot.lent_at + threshold)
        return wake_at
