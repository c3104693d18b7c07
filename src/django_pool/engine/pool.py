"""The pool engine: a thread-safe, driver-agnostic pool of DB-API connections.

Locking
-------
One lock, ``Pool._lock``, guards every mutable field below. It is held for
bookkeeping only, never across I/O or a thread start, so nobody waits on it for
more than a few microseconds. The invariant it protects:

* every open connection the pool manages is counted in ``_nconns`` and its
  :class:`~.slots.Slot` is in exactly one of ``_idle`` (ready to lend) and ``_lent``
  (with a caller, or with the thread checking it before lending or resetting it
  on its way back);
* ``_parked`` holds the lent slots given back with :meth:`Pool.park`: lent to
  nobody, clean, and lendable as idle ones are, but kept for the borrower
  that parked them to take back (:meth:`Pool.unpark`) until another request
  needs one or they have been parked for ``_park_limit``;
* ``_nconns + _connecting <= max_size``, where ``_connecting`` counts connect
  attempts under way (including their back-off sleeps);
* ``_idle`` and ``_parked`` are non-empty only while ``_waiters`` is empty: a
  connection that comes back, is parked or is newly opened goes to the oldest
  waiter first;
* a waiter leaves ``_waiters`` exactly once: handed a slot (already in
  ``_lent``), handed an error, or removed by itself when it gives up.

This module holds the checkout flow (lending, returning, parking) and the
pool's life cycle; the rest is mixed in, each concern in its module, all
under the same lock: :mod:`.growth` (opening connections), :mod:`.maintenance`
(the background thread), :mod:`.stats` (counters, histograms, listeners).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any

from ..adapters import BROKEN, IDLE, IN_TRANSACTION, Adapter
from ..errors import ConnectionFailed, PoolClosed, PoolTimeout, TooManyRequests
from . import fork, watchdog
from .arguments import check_int, check_number, check_sizes
from .growth import Growth, ewma
from .histogram import Histogram
from .maintenance import Maintenance
from .slots import Slot, Waiter, note_taker
from .stats import Stats

logger = logging.getLogger("django_pool")

# Returns whose usage time is observed in one batch (see Pool.putconn).
_USAGE_BATCH = 256
# The longest a connection stays parked (see Pool.park) before it becomes an
# ordinary idle one; never longer than validate_after.
_PARK_LIMIT = 1.0

_pool_numbers = iter(range(1, 1 << 62))


class Pool(Growth, Maintenance, Stats):
    """A pool of connections made by ``connect``, lent one caller at a time.

    :param connect: zero-argument callable returning a new DB-API connection.
    :param adapter: driver operations; picked from the first connection if None.
    :param min_size: connections kept open even when idle (default 4, as
        Django's built-in pool, so switching keeps the same footprint).
    :param max_size: the most connections open at once (default: ``min_size``).
    :param timeout: seconds ``getconn`` may take in all: waiting, validating and
        connecting share this one deadline (default 30).
    :param max_waiting: requests allowed to queue; more raise ``TooManyRequests``
        at once (default 0: unlimited).
    :param max_lifetime: seconds after which a connection is replaced, shortened
        by up to 5% per connection (default 3600).
    :param max_idle: seconds after which an idle connection above ``min_size``
        is closed (default 600).
    :param reconnect_timeout: seconds of failed attempts after which the pool
        stops refilling ``min_size`` in the background until a request asks
        again (default 300).
    :param validate_after: a connection idle longer than this many seconds is
        pinged before it is lent; 0 pings every time, None never (default 0.5,
        as HikariCP: a connection used a moment ago costs no extra round trip).
    :param num_workers: connections that may be opened at the same time
        (default 3).
    :param leak_threshold: a connection lent for longer than this many seconds
        is logged as a probable leak, with the stack of the code that took it
        (default None: off). When on, each checkout records its caller's
        frames: one to two microseconds, with a deep stack.
    :param configure: called with each new connection before it is first lent.
    :param reset: called with each returned connection, after any rollback;
        if it raises, the connection is discarded.
    :param reclaim: called with each connection reclaimed from a borrower whose
        thread ended (see :meth:`getconn`), after the rollback and ``reset``;
        it returns False (or raises) to have it closed and replaced instead of
        lent again: the borrower may have left session state the pool cannot
        see (default: lent again).
    :param name: shown in logs, errors and stats (default ``pool-N``).
    :param secrets: strings (passwords) to mask in every message the pool makes.
    :param open: start filling the pool now (default True).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        adapter: Adapter | None = None,
        *,
        min_size: int = 4,
        max_size: int | None = None,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        reconnect_timeout: float = 300.0,
        validate_after: float | None = 0.5,
        num_workers: int = 3,
        leak_threshold: float | None = None,
        configure: Callable[[Any], None] | None = None,
        reset: Callable[[Any], None] | None = None,
        reclaim: Callable[[Any], bool] | None = None,
        name: str | None = None,
        secrets: Iterable[str] = (),
        open: bool = True,
    ) -> None:
        max_size = min_size if max_size is None else max_size
        check_sizes(min_size, max_size)
        check_number("timeout", timeout, minimum=0)
        check_number("max_lifetime", max_lifetime, minimum=0, strict=True)
        check_number("max_idle", max_idle, minimum=0, strict=True)
        check_number("reconnect_timeout", reconnect_timeout, minimum=0)
        if validate_after is not None:
            check_number("validate_after", validate_after, minimum=0)
        check_int("max_waiting", max_waiting, minimum=0)
        check_int("num_workers", num_workers, minimum=1)
        if leak_threshold is not None:
            check_number("leak_threshold", leak_threshold, minimum=0, strict=True)
        if not callable(connect):
            raise TypeError(f"connect must be a callable returning a connection, got {connect!r}")

        self.name = name or f"pool-{next(_pool_numbers)}"
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.reconnect_timeout = reconnect_timeout
        self.validate_after = validate_after
        self.num_workers = num_workers
        self.leak_threshold = leak_threshold
        self._connect = connect
        self._adapter = adapter
        self._configure = configure
        self._reset = reset
        self._reclaim = reclaim
        self._secrets = tuple(secrets)
        # "Never validate" is a window so long that nothing falls outside it;
        # "always" one that nothing falls inside, even a connection returned
        # after this request started.
        if validate_after is None:
            self._validate_window = math.inf
        else:
            self._validate_window = validate_after or -math.inf
        # A parked connection older than validate_after would need a check
        # before it is lent again, like any idle one: it becomes one.
        self._park_limit = min(_PARK_LIMIT, self._validate_window)

        # Called with each timing as it happens (see add_listener); a tuple,
        # replaced whole, so the hot paths read it without the lock. Settings,
        # not state: a forked child's pool keeps them.
        self._listeners: tuple[Callable[[str, float], None], ...] = ()
        self._init_state()
        fork.register(self)
        if open:
            self.open()

    def _init_state(self) -> None:
        """(Re)set everything that belongs to one process's life of the pool."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # sizes changed or pool closed
        # This process's life of the pool. The connector and maintenance
        # threads carry the one they were started in and stop, touching
        # nothing, once it is not the current one: under gevent they are
        # greenlets, and greenlets survive os.fork() into the child.
        self._life = object()
        self._idle: deque[Slot] = deque()
        self._lent: dict[int, Slot] = {}
        self._parked: dict[int, Slot] = {}
        self._waiters: deque[Waiter] = deque()
        self._nconns = 0
        self._connecting = 0
        self._opened = False
        self._closed = False
        self._maintenance_running = False
        # When the maintenance thread wakes next (-inf: it has not planned yet).
        self._maintenance_due = -math.inf
        # Set at the first checkout with an owner: maintenance then looks for
        # ended owners every _OWNER_CHECK_INTERVAL.
        self._watching_owners = False
        self._generation = 0  # bumped by drain(): older connections are not lent again
        # Idle connections last known good before this moment are pinged before
        # being lent: set when a disconnect is seen (e.g. the server restarted).
        self._distrust_before = -math.inf
        # Connection failures: consecutive rounds, when the streak began, the next
        # attempt's earliest time, a total that only grows, and the last cause.
        self._failures = 0
        self._failing_since = 0.0
        self._retry_at = 0.0
        self._failed_at = 0.0
        self._failures_total = 0
        self._last_error: str | None = None
        self._gave_up = False
        # Moving averages of connect and usage time, steering growth (0: unknown).
        self._connect_avg = 0.0
        self._usage_avg = 0.0
        self._inherited: dict[int, Any] = {}
        # The server-reported settings of a connection as opened (see
        # reported_settings_changed); None until one is opened, or if unknown.
        self._reported_baseline: tuple[Any, ...] | None = None
        self._pid = os.getpid()
        # Never reset by pop_stats(): Prometheus expects them to only grow.
        self._wait_histogram = Histogram()
        self._usage_histogram = Histogram()
        # Usage times not yet in _usage_histogram: the return path appends, which
        # touches far less memory than a bisection; see _usage_locked().
        self._usage_pending: list[float] = []
        self._reset_counters()

    def __repr__(self) -> str:
        driver = self._adapter.name if self._adapter else "?"
        state = "closed" if self._closed else "open" if self._opened else "not open"
        return (
            f"<{type(self).__name__} {self.name!r} {driver} {state} "
            f"size={self._nconns}/{self.max_size} idle={len(self._idle) + len(self._parked)} "
            f"in_use={len(self._lent) - len(self._parked)} waiting={len(self._waiters)}>"
        )

    # -- lending -------------------------------------------------------------------

    def getconn(self, timeout: float | None = None, owner: threading.Thread | None = None) -> Any:
        """Lend a connection; give it back with :meth:`putconn`.

        Waits up to ``timeout`` (default: the pool's) for one to be free or
        opened. A connection past its lifetime is never lent; one idle for
        longer than ``validate_after``, or older than a disconnect the pool has
        seen, is pinged first and replaced if the ping fails, all within the
        same deadline.

        ``owner``: the thread that will give it back. If that thread ends while
        the connection is still out, nobody can return it: within about a
        second the pool rolls it back, resets it (``reset``, ``reclaim``),
        logs a warning with where it was taken (when ``leak_threshold`` records
        it) and lends it again. Leave it None when the connection may be
        handed to another thread.
        """
        start = monotonic()
        slot: Slot | None = None
        with self._lock:
            self._requests_num += 1
            if self._idle:  # idle connections exist only while the pool is open
                slot = self._idle.pop()
                self._lent[id(slot.conn)] = slot
                slot.lent_at = start
        # The usual case, lendable as it is: the same test as _getconn_checked's,
        # written out because a call here costs as much as the test.
        if (
            slot is not None
            and start < slot.expires_at
            and slot.generation == self._generation
            and slot.last_ok >= start - self._validate_window
            and slot.last_ok >= self._distrust_before
        ):
            slot.owner = owner
            if owner is not None and not self._watching_owners:
                self._watch_owners()
            if self.leak_threshold is not None:
                note_taker(slot)
            if self._listeners:
                self._tell("wait", monotonic() - start)
            return slot.conn
        return self._getconn_checked(slot, start, timeout, owner)

    def _watch_owners(self) -> None:
        with self._changed:
            self._watching_owners = True
            self._changed.notify_all()  # maintenance plans its next wake again

    def _getconn_checked(
        self,
        slot: Slot | None,
        start: float,
        timeout: float | None,
        owner: threading.Thread | None,
    ) -> Any:
        """The rest of :meth:`getconn`: ``slot`` needs a check, or nothing was idle (None).

        Ends by the deadline even when every connection it is handed is unfit
        (each is dropped and replaced). An exception that interrupts it (a
        signal handler's, ``KeyboardInterrupt``) loses nothing: a slot in hand
        is given back (closed if it was being pinged), a queued request leaves
        the queue.
        """
        deadline = start + (self.timeout if timeout is None else timeout)
        queued = 0  # a request is counted as queued once, however often it waits
        # The wait recorded for the slot in hand, taken back if it is unfit. A
        # request served at once records nothing: get_histograms() counts those.
        recorded = None
        pinging = False
        try:
            while True:
                taken_parked = False
                if slot is None:
                    with self._lock:
                        if self._idle or self._parked:
                            if self._idle:
                                slot = self._idle.pop()
                                self._lent[id(slot.conn)] = slot
                            else:  # parked by another borrower, who will borrow again
                                slot = self._parked.popitem()[1]
                                taken_parked = True
                            slot.lent_at = start
                            recorded = monotonic() - start
                            self._wait_histogram.observe(recorded)
                            waiter = None
                        else:
                            waiter = self._enqueue_locked(start, 1 - queued)
                            queued = 1
                    if waiter is not None:
                        slot = self._wait_for(waiter, deadline, start)
                        recorded = slot.lent_at - start  # as _hand_over_locked recorded it
                assert slot is not None
                now = monotonic()
                if taken_parked and self.reported_settings_changed(slot.conn):
                    # Its borrower changed the session unseen (see park()): not
                    # for anyone else.
                    self._drop_lent(slot, lost=False, recorded=recorded)
                elif now < slot.expires_at and slot.generation == self._generation:
                    last_ok = slot.last_ok
                    if last_ok >= now - self._validate_window and last_ok >= self._distrust_before:
                        return self._lend(slot, owner, start)
                    pinging = True
                    try:
                        self._ping_by(slot.conn, deadline)
                    except Exception as exc:
                        logger.info(
                            "pool %r: discarding a connection that failed its check: %s",
                            self.name,
                            self._redact(str(exc)),
                        )
                        self._drop_lent(slot, lost=True, recorded=recorded)
                    else:
                        slot.last_ok = monotonic()
                        return self._lend(slot, owner, start)
                    pinging = False
                else:
                    self._drop_lent(slot, lost=False, recorded=recorded)
                slot = recorded = None
                if monotonic() >= deadline:  # every one it was handed was unfit
                    self._time_out(start)
        except BaseException:
            if slot is not None:
                if pinging:  # half a round trip on it: never lend it again
                    self._drop_lent(slot, lost=False, recorded=recorded)
                else:
                    self.putconn(slot.conn)
            raise

    def _ping_by(self, conn: Any, deadline: float) -> None:
        """Ping ``conn``; raise if it fails or gets no answer by ``deadline``.

        A network that stops passing bytes would otherwise hold the caller far
        past its timeout (see :mod:`django_pool.watchdog`).
        """
        adapter = self._adapter_of(conn)
        try:
            fd = adapter.fileno(conn)
        except Exception:  # closed already: the ping will say so
            fd = None
        with watchdog.guard(fd, deadline) as guard:
            try:
                adapter.ping(conn)
            except Exception as exc:
                if guard is not None and guard.fired:
                    raise ConnectionFailed(
                        f"no answer to the health check within the checkout's timeout: {exc}"
                    ) from exc
                raise

    def _time_out(self, start: float) -> None:
        with self._lock:
            self._requests_errors += 1
            self._requests_timeouts += 1
            raise PoolTimeout(self._timeout_message_locked(monotonic() - start))

    def _lend(self, slot: Slot, owner: threading.Thread | None, start: float) -> Any:
        """The end of _getconn_checked: the checked slot goes to its borrower."""
        slot.owner = owner
        if owner is not None and not self._watching_owners:
            self._watch_owners()
        if self.leak_threshold is not None:
            note_taker(slot, 4)
        if self._listeners:
            self._tell("wait", monotonic() - start)
        return slot.conn

    def _enqueue_locked(self, start: float, requests: int) -> Waiter:
        """Queue a request that found nothing idle, and start whatever threads it needs."""
        if self._closed or not self._opened:
            state = "closed" if self._closed else "not open"
            raise PoolClosed(f"pool {self.name!r} is {state}")
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            self._requests_errors += 1
            raise TooManyRequests(
                f"pool {self.name!r}: {len(self._waiters)} requests already waiting "
                f"(max_waiting={self.max_waiting})"
            )
        waiter = Waiter(start)
        self._waiters.append(waiter)
        self._requests_queued += requests
        if self._failures:
            self._changed.notify_all()  # a connector in its back-off retries sooner
        spawn = self._connectors_to_start_locked()
        start_maintenance = not self._maintenance_running
        self._maintenance_running = True
        if spawn or start_maintenance:
            # Starting a thread waits for it to run: not under the lock.
            self._lock.release()
            try:
                self._start_threads(spawn, start_maintenance)
            finally:
                self._lock.acquire()
        return waiter

    def _wait_for(self, waiter: Waiter, deadline: float, start: float) -> Slot:
        try:
            got = self._wait_ready(waiter, deadline)
        except BaseException:
            # Interrupted while queued: leave the queue, or give back what was
            # handed over meanwhile, so nothing goes to a waiter that has left.
            with self._lock:
                served = waiter.slot
                if served is None and waiter.error is None:
                    self._waiters.remove(waiter)
            if served is not None:
                self.putconn(served.conn)
            raise
        if not got:
            with self._lock:
                if waiter.slot is None and waiter.error is None:
                    self._waiters.remove(waiter)
                    self._requests_errors += 1
                    self._requests_timeouts += 1
                    raise PoolTimeout(self._timeout_message_locked(monotonic() - start))
        if waiter.error is not None:
            raise waiter.error
        assert waiter.slot is not None
        return waiter.slot

    def _wait_ready(self, waiter: Waiter, deadline: float) -> bool:
        """Block until ``waiter`` is served or the deadline passes; True if served."""
        # Growth is throttled by an estimate (see _connectors_wanted_locked). If
        # nothing came within about one connect time, the estimate was wrong:
        # wake once, ask again without it, then wait out the deadline.
        first_wait = self._connect_avg * 2 if self._connect_avg else math.inf
        got = waiter.ready.acquire(timeout=max(0.0, min(first_wait, deadline - monotonic())))
        if not got and monotonic() < deadline:
            with self._lock:
                spawn = self._connectors_to_start_locked() if waiter.slot is None else 0
            self._start_threads(spawn, False)
            got = waiter.ready.acquire(timeout=max(0.0, deadline - monotonic()))
        return got

    def _timeout_message_locked(self, waited: float) -> str:
        message = (
            f"couldn't get a connection from pool {self.name!r} after {waited:.2f} s: "
            f"{self._nconns} open (min_size={self.min_size}, max_size={self.max_size}), "
            f"{len(self._lent)} in use, {len(self._waiters)} other requests waiting "
            f"(timeout={self.timeout:g} s, max_waiting={self.max_waiting or 'unlimited'})"
        )
        if self._failures and self._last_error:
            message += f"; last connection error: {self._last_error}"
        return message

    def putconn(self, conn: Any, discard: bool = False) -> None:
        """Give back a connection from :meth:`getconn`.

        An open transaction is rolled back and the ``reset`` hook runs; a broken
        connection, or one past its lifetime, is closed and replaced in the
        background. The connection then goes to the oldest waiting request, or
        back on top of the idle stack. ``discard=True`` closes and replaces a
        good connection whose session cannot be cleaned (it is not counted as
        bad or lost).
        """
        key = id(conn)
        slot = self._lent.get(key)
        if slot is None:
            self._put_unknown(conn)
            return
        if slot.leak_reported:
            logger.info(
                "pool %r: a connection reported as leaked came back after %.1f s",
                self.name,
                monotonic() - slot.lent_at,
            )
        if discard:
            good = False
        else:
            # Every lent connection was opened by a connector, which set the adapter.
            state = self._adapter.state(conn)  # type: ignore[union-attr]
            good = (state == IDLE and self._reset is None) or self._restore(conn, state)
        now = monotonic()
        if self._listeners:
            self._tell("use", now - slot.lent_at)
        with self._lock:
            del self._lent[key]
            if self._parked:  # given back after a park, without unpark()
                self._parked.pop(key, None)
            # No longer its borrower's: a thread that ends now leaves nothing.
            slot.owner = None
            # What _count_usage_locked does, written out: this runs on every return.
            usage = now - slot.lent_at
            usage_pending = self._usage_pending
            usage_pending.append(usage)
            if len(usage_pending) >= _USAGE_BATCH:
                self._usage_histogram.observe_all(usage_pending)
            if (
                good
                and now < slot.expires_at
                and slot.generation == self._generation
                and self._nconns <= self.max_size
                and not self._closed
            ):
                if slot.lent_at >= self._distrust_before:
                    slot.last_ok = now
                # else lent before a disconnect the pool has seen: returned
                # without an error proves nothing, so it is checked as an idle
                # connection from before that moment would be.
                if self._waiters:
                    # Usage steers growth only while requests queue: sampled then.
                    self._usage_avg = ewma(self._usage_avg, usage)
                    self._hand_over_locked(slot, now)
                else:
                    self._idle.append(slot)
                    if slot.expires_at < self._maintenance_due:
                        self._changed.notify_all()
                return
            self._nconns -= 1
            if not good and not discard:
                self._returns_bad += 1
                self._connections_lost += 1
                self._distrust_before = now
            self._changed.notify_all()
            spawn = self._connectors_to_start_locked()
        self._close_quietly(conn)
        self._start_threads(spawn, False)

    def _count_usage_locked(self, slot: Slot, now: float) -> float:
        """Note how long ``slot`` was used, now that it comes back."""
        usage = now - slot.lent_at
        usage_pending = self._usage_pending
        usage_pending.append(usage)
        if len(usage_pending) >= _USAGE_BATCH:
            self._usage_histogram.observe_all(usage_pending)
        return usage

    # -- parking: a return its borrower may take back ---------------------------------

    def park(self, conn: Any) -> bool:
        """Give back lent ``conn`` for now, keeping a claim on it (see :meth:`unpark`).

        For a borrower that gives its connection back between uses and soon
        borrows again (``release="transaction"``), and that knows it left
        nothing in the session to reset. The connection is at once what an
        idle one is to everybody else: counted available, handed to a waiting
        request, taken by the next request that finds nothing idle. Unless
        that happens first, :meth:`unpark` takes it back without the work of
        a return and a checkout. After ``validate_after`` (at most a second)
        it becomes an ordinary idle connection.

        The settings the server reports (see :meth:`reported_settings_changed`)
        are compared only when the connection is to go to another borrower,
        at once or later: a park costs no more than it must. If they changed,
        it is not lent to anyone else (the caller keeps it, or it is closed
        and replaced).

        Returns False, and the connection stays lent, if the driver reports a
        transaction in progress, or it would go to a waiting request with
        changed reported settings (its return resets them). A connection
        that needs more than a park (broken, past its lifetime, or the pool
        has a ``reset`` hook) is given back as :meth:`putconn` does; True
        then too: either way, it is no longer the caller's.
        """
        # Every lent connection was opened by a connector, which set the adapter.
        state = self._adapter.state(conn)  # type: ignore[union-attr]
        if state == IN_TRANSACTION:
            return False
        if state == IDLE and self._reset is None:
            key = id(conn)
            now = monotonic()
            with self._lock:
                slot = self._lent.get(key)
                parked = (
                    slot is not None
                    and key not in self._parked
                    and now < slot.expires_at
                    and slot.generation == self._generation
                    and self._nconns <= self.max_size
                    and not self._closed
                    and self._park_limit > 0
                    and slot.lent_at >= self._distrust_before  # else checked (see putconn)
                )
                if parked:
                    assert slot is not None
                    if self._waiters and self.reported_settings_changed(conn):
                        return False
                    slot.owner = None
                    usage = self._count_usage_locked(slot, now)
                    slot.last_ok = now
                    if self._waiters:
                        del self._lent[key]
                        self._hand_over_locked(slot, now)
                    else:
                        self._parked[key] = slot
                        if self._maintenance_due > now + 2 * self._park_limit:
                            self._changed.notify_all()  # plan the move to idle
            if parked:
                if self._listeners:
                    self._tell("use", usage)
                return True
        self.putconn(conn)
        return True

    def unpark(self, conn: Any, owner: threading.Thread | None = None) -> bool:
        """Take back ``conn`` after :meth:`park`: True if nobody else took it.

        False when another request took it, or it has been parked too long to
        be lent without a check: borrow with :meth:`getconn` then. ``owner``
        is getconn's.
        """
        key = id(conn)
        now = monotonic()
        with self._lock:
            slot = self._parked.pop(key, None)
            if slot is None:
                return False
            if (
                now - slot.last_ok < self._park_limit
                and now < slot.expires_at
                and slot.generation == self._generation
                and slot.last_ok >= self._distrust_before
            ):
                self._requests_num += 1
                slot.lent_at = now
                slot.owner = owner
                return True
            if not self.reported_settings_changed(conn):
                self._unpark_to_idle_locked(slot)
                return False
        # Parked too long to be lent without a check, and changed unseen:
        # closed and replaced rather than made idle (see park()).
        self._drop_lent(slot, lost=False, recorded=None)
        return False

    def _unpark_to_idle_locked(self, slot: Slot) -> None:
        """Make a parked slot (popped from ``_parked``) an ordinary idle one."""
        del self._lent[id(slot.conn)]
        # The idle stack is ordered by last_ok, newest on top.
        idle = self._idle
        position = len(idle)
        while position and idle[position - 1].last_ok > slot.last_ok:
            position -= 1
        idle.insert(position, slot)

    def reported_settings_changed(self, conn: Any) -> bool:
        """True if lent ``conn``'s server-reported settings differ from a new connection's.

        Time zone, date style, role (``is_superuser``, ``session_authorization``),
        ``search_path`` on PostgreSQL 18+, ``application_name``: whatever
        changed them, even code the server ran that no statement text shows.
        No I/O; always False where the driver does not report them (MySQL).
        """
        baseline = self._reported_baseline
        if baseline is None:
            return False
        try:
            # Every lent connection was opened by a connector, which set the adapter.
            return self._adapter.reported_settings(conn) != baseline  # type: ignore[union-attr]
        except Exception:  # closed or broken: its return discards it anyway
            return False

    def in_transaction(self, conn: Any) -> bool:
        """True if the driver reports a transaction open on lent ``conn`` (no I/O)."""
        # Every lent connection was opened by a connector, which set the adapter.
        return self._adapter.state(conn) == IN_TRANSACTION  # type: ignore[union-attr]

    def _restore(self, conn: Any, state: int) -> bool:
        """Bring a returned connection back to a clean state; False if it is unusable."""
        if state == BROKEN:
            return False
        adapter = self._adapter_of(conn)
        try:
            if state != IDLE:
                adapter.rollback(conn)
            if self._reset is not None:
                self._reset(conn)
        except Exception as exc:
            logger.warning(
                "pool %r: discarding a returned connection that could not be reset: %s",
                self.name,
                self._redact(str(exc)),
            )
            return False
        return adapter.state(conn) != BROKEN

    def _put_unknown(self, conn: Any) -> None:
        if id(conn) in self._inherited:
            # Lent before os.fork() to the thread that forked: its socket belongs
            # to the parent, and was detached in this process already.
            return
        raise ValueError(
            f"connection {conn!r} is not lent by pool {self.name!r} (already returned, "
            "or from another pool)"
        )

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """``with pool.connection() as conn:`` lends a connection for the block.

        Unlike psycopg_pool, nothing is committed for you: an open transaction
        is rolled back when the connection goes back. If the block raises an
        error that means the connection is gone, it is discarded, and idle
        connections as old as it are checked before they are lent again.
        """
        conn = self.getconn(timeout)
        try:
            yield conn
        except BaseException as exc:
            if self._adapter_of(conn).is_disconnect(exc):
                self._close_quietly(conn)
            raise
        finally:
            self.putconn(conn)

    def _hand_over_locked(self, slot: Slot, now: float) -> None:
        """Give ``slot`` to the oldest waiter, else put it on top of the idle stack."""
        if self._waiters:
            waiter = self._waiters.popleft()
            self._lent[id(slot.conn)] = slot
            slot.lent_at = now
            self._wait_histogram.observe(now - waiter.since)
            waiter.slot = slot
            waiter.ready.release()
        else:
            self._idle.append(slot)

    def _drop_lent(self, slot: Slot, lost: bool, recorded: float | None) -> None:
        """Close a connection taken by getconn but found unfit to lend."""
        with self._lock:
            # getconn goes on waiting: its wait is recorded when it is served.
            if recorded is not None:
                self._wait_histogram.forget(recorded)
            del self._lent[id(slot.conn)]
            self._nconns -= 1
            if lost:
                self._connections_lost += 1
                self._distrust_before = monotonic()
            spawn = self._connectors_to_start_locked()
        self._close_quietly(slot.conn)
        self._start_threads(spawn, False)

    # -- life cycle ------------------------------------------------------------------

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the pool: open ``min_size`` connections in the background.

        With ``wait=True``, block until they are open (see :meth:`wait`).
        Opening an open pool does nothing; a closed pool cannot be reopened.
        """
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed and cannot be reopened")
            start_maintenance = not self._maintenance_running
            self._opened = self._maintenance_running = True
            spawn = self._connectors_to_start_locked()
        self._start_threads(spawn, start_maintenance)
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open.

        Raises :class:`ConnectionFailed` with the server's reason as soon as an
        attempt fails (a wrong password will not fix itself), and
        :class:`PoolTimeout` when ``timeout`` passes first.
        """
        deadline = monotonic() + timeout
        with self._changed:
            failures_before = self._failures_total
            while self._nconns < self.min_size:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                if self._failures_total != failures_before:
                    raise ConnectionFailed(
                        f"pool {self.name!r} could not connect: {self._last_error}"
                    )
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"pool {self.name!r}: {self._nconns} of min_size={self.min_size} "
                        f"connections open after {timeout:.2f} s"
                    )
                self._changed.wait(remaining)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: idle connections now, lent ones when they come back.

        Requests waiting get :class:`PoolClosed`. Waits up to ``timeout`` for
        connection attempts under way to finish (each closes what it opened);
        it never waits for lent connections, which may be held indefinitely.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._take_idle_locked()
            for waiter in self._waiters:
                waiter.error = PoolClosed(f"pool {self.name!r} was closed while waiting")
                waiter.ready.release()
            self._waiters.clear()
            self._changed.notify_all()
        for slot in idle:
            self._close_quietly(slot.conn)
        deadline = monotonic() + timeout
        with self._changed:
            while self._connecting and (remaining := deadline - monotonic()) > 0:
                self._changed.wait(remaining)

    def __enter__(self) -> Pool:
        self.open(wait=True, timeout=self.timeout)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the sizes; extra idle connections close now, lent ones on return."""
        max_size = min_size if max_size is None else max_size
        check_sizes(min_size, max_size)
        with self._lock:
            self.min_size, self.max_size = min_size, max_size
            excess = []
            while self._nconns > max_size and (self._idle or self._parked):
                if self._idle:
                    excess.append(self._idle.popleft())
                else:
                    key, slot = self._parked.popitem()
                    del self._lent[key]
                    excess.append(slot)
                self._nconns -= 1
            spawn = self._connectors_to_start_locked()
            self._changed.notify_all()
        for slot in excess:
            self._close_quietly(slot.conn)
        self._start_threads(spawn, False)

    def drain(self) -> None:
        """Replace every connection: idle ones close now, lent ones when returned.

        For after a fail-over, a password rotation or a schema change that
        cached plans would not survive.
        """
        with self._lock:
            self._generation += 1
            idle = self._take_idle_locked()
            spawn = self._connectors_to_start_locked()
            self._changed.notify_all()
        for slot in idle:
            self._close_quietly(slot.conn)
        self._start_threads(spawn, False)

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connections without touching their sockets.

        Called by :mod:`django_pool.fork` in the child, where only the forking
        thread survives and the lock may have been held by another thread. Each
        inherited socket is pointed at /dev/null, so neither this code nor a
        driver's finaliser can send anything (a libpq Terminate message, a MySQL
        COM_QUIT) on the parent's session; the objects are kept, never used.
        """
        inherited = dict(self._inherited)
        for slot in [*self._idle, *self._lent.values()]:
            inherited[id(slot.conn)] = slot.conn
            fork.detach(self._adapter_of(slot.conn), slot.conn)
        waiting = len(self._waiters)
        opened, closed, adapter = self._opened, self._closed, self._adapter
        self._init_state()
        self._inherited = inherited
        self._opened, self._closed, self._adapter = opened, closed, adapter
        if waiting:
            logger.debug("pool %r: %d waiters did not survive fork", self.name, waiting)
