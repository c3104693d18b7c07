"""The pool engine: a thread-safe, driver-agnostic pool of DB-API connections.

Locking
-------
One lock, ``Pool._lock``, guards every mutable field below. It is held for
bookkeeping only, never across I/O or a thread start, so nobody waits on it for
more than a few microseconds. The invariant it protects:

* every open connection the pool manages is counted in ``_nconns`` and its
  :class:`_Slot` is in exactly one of ``_idle`` (ready to lend) and ``_lent``
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

Connections are opened by short-lived connector threads, never by the caller:
a request that finds nothing idle queues and is served by whichever comes
first, a returned connection or a new one.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from time import monotonic
from types import CodeType
from typing import Any

from . import fork, watchdog
from .adapters import BROKEN, IDLE, IN_TRANSACTION, Adapter, adapter_for
from .errors import ConnectionFailed, PoolClosed, PoolTimeout, TooManyRequests
from .histogram import Histogram, HistogramSnapshot
from .redact import redact

logger = logging.getLogger("django_pool")

# Reconnection back-off: first retry after about this long, doubling up to the cap.
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
# Lifetimes are shortened by up to this fraction, so connections opened together
# (at start-up, after a restart) do not all expire together.
_LIFETIME_JITTER = 0.05
# Returns whose usage time is observed in one batch (see Pool.putconn).
_USAGE_BATCH = 256
# Weight of the newest sample in the moving averages of connect and usage time.
_EWMA_WEIGHT = 0.2
# How often the maintenance thread looks for connections whose owner thread
# ended while they were lent (see getconn's ``owner``).
_OWNER_CHECK_INTERVAL = 1.0
# The longest a connection stays parked (see Pool.park) before it becomes an
# ordinary idle one; never longer than validate_after.
_PARK_LIMIT = 1.0

# The largest time option accepted, in seconds (over three years): beyond it
# deadlines lose precision or overflow what the thread waits accept.
_MAX_SECONDS = 1e8
# While requests wait for a connection the server refused, the next attempt
# comes at most this long after the last one, whatever the back-off says: the
# server being back is noticed within it.
_RETRY_WHILE_WAITING = 0.5

_pool_numbers = iter(range(1, 1 << 62))


class _Slot:
    """A connection plus what the pool remembers about it."""

    __slots__ = (
        "conn",
        "expires_at",
        "generation",
        "last_ok",
        "leak_reported",
        "lent_at",
        "owner",
        "taken_by",
    )

    def __init__(self, conn: Any, now: float, expires_at: float, generation: int) -> None:
        self.conn = conn
        self.expires_at = expires_at
        self.generation = generation
        # Last moment the connection was known good: opened, pinged or cleanly
        # returned. While the slot is idle, that is also when it became idle.
        self.last_ok = now
        self.lent_at = now
        # Leak detection: where the borrower took it, and whether it was reported.
        self.taken_by: list[tuple[CodeType, int]] | None = None
        self.leak_reported = False
        # The thread the borrower runs in, when it said so (getconn's owner).
        self.owner: threading.Thread | None = None


class _Waiter:
    """A queued ``getconn``: woken by whoever hands it a slot or an error."""

    __slots__ = ("error", "ready", "since", "slot")

    def __init__(self, since: float) -> None:
        self.since = since
        self.slot: _Slot | None = None
        self.error: Exception | None = None
        # A plain lock used as a one-shot signal: cheaper than an Event.
        self.ready = threading.Lock()
        self.ready.acquire()


class Pool:
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
        _check_sizes(min_size, max_size)
        _check_number("timeout", timeout, minimum=0)
        _check_number("max_lifetime", max_lifetime, minimum=0, strict=True)
        _check_number("max_idle", max_idle, minimum=0, strict=True)
        _check_number("reconnect_timeout", reconnect_timeout, minimum=0)
        if validate_after is not None:
            _check_number("validate_after", validate_after, minimum=0)
        _check_int("max_waiting", max_waiting, minimum=0)
        _check_int("num_workers", num_workers, minimum=1)
        if leak_threshold is not None:
            _check_number("leak_threshold", leak_threshold, minimum=0, strict=True)
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
        self._idle: deque[_Slot] = deque()
        self._lent: dict[int, _Slot] = {}
        self._parked: dict[int, _Slot] = {}
        self._waiters: deque[_Waiter] = deque()
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
        # Called with each timing as it happens (see add_listener); a tuple,
        # replaced whole, so the hot paths read it without the lock.
        self._listeners: tuple[Callable[[str, float], None], ...] = ()
        self._reset_counters()

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
        slot: _Slot | None = None
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
                _note_taker(slot)
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
        slot: _Slot | None,
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

    def _lend(self, slot: _Slot, owner: threading.Thread | None, start: float) -> Any:
        """The end of _getconn_checked: the checked slot goes to its borrower."""
        slot.owner = owner
        if owner is not None and not self._watching_owners:
            self._watch_owners()
        if self.leak_threshold is not None:
            _note_taker(slot, 4)
        if self._listeners:
            self._tell("wait", monotonic() - start)
        return slot.conn

    def _enqueue_locked(self, start: float, requests: int) -> _Waiter:
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
        waiter = _Waiter(start)
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

    def _wait_for(self, waiter: _Waiter, deadline: float, start: float) -> _Slot:
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

    def _wait_ready(self, waiter: _Waiter, deadline: float) -> bool:
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
                    self._usage_avg = _ewma(self._usage_avg, usage)
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

    def _count_usage_locked(self, slot: _Slot, now: float) -> float:
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

    def _unpark_to_idle_locked(self, slot: _Slot) -> None:
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

    def _hand_over_locked(self, slot: _Slot, now: float) -> None:
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

    def _drop_lent(self, slot: _Slot, lost: bool, recorded: float | None) -> None:
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
                    self._connect_avg = _ewma(self._connect_avg, elapsed)
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

    def _connect_once(self) -> tuple[_Slot, float] | None:
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
        return _Slot(conn, now, now + lifetime, generation), now - started

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

    def _reclaim_abandoned(self, slot: _Slot) -> None:
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
            _format_stack(slot.taken_by)
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

    def _unpark_stale_locked(self, now: float) -> list[_Slot]:
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

    def _take_idle_locked(self) -> list[_Slot]:
        """Empty ``_idle`` and ``_parked`` (close(), drain()): their slots, no longer counted."""
        slots = [*self._idle, *self._parked.values()]
        for key in self._parked:
            del self._lent[key]
        self._idle.clear()
        self._parked.clear()
        self._nconns -= len(slots)
        return slots

    def _take_expired_idle_locked(self, now: float) -> list[_Slot]:
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
                leaks.append((now - slot.lent_at, _format_stack(slot.taken_by)))
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
        _check_sizes(min_size, max_size)
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
        must be quick. What it raises is logged and dropped.
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

    # -- helpers ---------------------------------------------------------------------------

    def _usage_locked(self) -> Histogram:
        """The usage histogram, with every return so far observed."""
        self._usage_histogram.observe_all(self._usage_pending)
        return self._usage_histogram

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


def _note_taker(slot: _Slot, depth: int = 2) -> None:
    """Record who is taking ``slot``: the frames above ``getconn``, as (code, line).

    ``depth`` is how far up the caller of ``getconn`` is from here.

    Cheaper than ``traceback.extract_stack()``, which reads source lines; those
    are looked up only if a leak is reported.
    """
    frame = sys._getframe(depth)
    stack = []
    while frame is not None:
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back  # type: ignore[assignment]
    slot.taken_by = stack
    slot.leak_reported = False


def _format_stack(stack: list[tuple[CodeType, int]] | None) -> str:
    if not stack:
        return "  (unknown)\n"
    frames = [(code.co_filename, line, code.co_name, None) for code, line in reversed(stack)]
    return "".join(traceback.StackSummary.from_list(frames).format())


def _ewma(average: float, sample: float) -> float:
    """Exponentially weighted moving average; the first sample stands alone."""
    return average + _EWMA_WEIGHT * (sample - average) if average else sample


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: object, minimum: float, strict: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        # Also refuses NaN and infinities, and compares ints too large for a float.
        and -_MAX_SECONDS <= value <= _MAX_SECONDS
    )
    if not ok or value < minimum or (strict and value == minimum):  # type: ignore[operator]
        relation = ">" if strict else ">="
        raise ValueError(
            f"{name} must be a number of seconds {relation} {minimum} and at most "
            f"{_MAX_SECONDS:.0e}, got {value!r}"
        )


def _check_sizes(min_size: object, max_size: object) -> None:
    _check_int("min_size", min_size, minimum=0)
    _check_int("max_size", max_size, minimum=1)
    if max_size < min_size:  # type: ignore[operator]
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
