"""Engine behaviour, with the fake driver so that orderings can be set up exactly.

The same behaviours run against real servers in test_pool_postgres.py and
test_pool_mysql.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from django_pool import ConnectionFailed, Pool, PoolClosed, PoolTimeout, TooManyRequests
from django_pool.engine.growth import _BACKOFF_FIRST
from tests.fakes import FakeAdapter, FakeConnection, FakeConnector, FakeDisconnect
from tests.polling import wait_until

PSYCOPG_POOL_STATS_KEYS = {
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
}


def start_getter(pool: Pool, results: list[Any], timeout: float | None = None) -> threading.Thread:
    """Run getconn in a thread; append the connection or the exception to results."""

    def run() -> None:
        try:
            results.append(pool.getconn(timeout))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# 1. LIFO --------------------------------------------------------------------------------------


def test_most_recently_returned_connection_is_lent_first(make_pool):
    pool, _ = make_pool(min_size=3)
    pool.wait()
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    for conn in (a, c, b):
        pool.putconn(conn)
    assert pool.getconn() is b
    assert pool.getconn() is c
    assert pool.getconn() is a


def test_a_single_thread_keeps_reusing_one_connection(make_pool):
    pool, _ = make_pool(min_size=4)
    pool.wait()
    seen = set()
    for _ in range(20):
        conn = pool.getconn()
        seen.add(conn.id)
        pool.putconn(conn)
    assert len(seen) == 1


# 2. Fair hand-off, one deadline ---------------------------------------------------------------


def test_waiters_are_served_first_come_first_served(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    held = pool.getconn()
    order: list[int] = []
    results: list[Any] = []
    threads = []
    for i in range(4):

        def run(i: int = i) -> None:
            conn = pool.getconn()
            order.append(i)
            results.append(conn)
            pool.putconn(conn)

        threads.append(threading.Thread(target=run))
        threads[-1].start()
        wait_until(lambda i=i: pool.get_stats()["requests_waiting"] == i + 1)
    pool.putconn(held)
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]
    assert all(conn is held for conn in results)


def test_returned_connection_skips_waiters_that_gave_up(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    held = pool.getconn()
    results: list[Any] = []
    quitter = start_getter(pool, results, timeout=0.1)
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    patient_results: list[Any] = []
    patient = start_getter(pool, patient_results, timeout=5)
    quitter.join(5)
    assert isinstance(results[0], PoolTimeout)
    pool.putconn(held)
    patient.join(5)
    assert patient_results == [held]
    stats = pool.get_stats()
    assert stats["requests_errors"] == 1
    assert stats["pool_size"] == 1 and stats["pool_in_use"] == 1


def test_one_deadline_covers_validating_and_connecting(make_pool):
    # Every idle connection is dead and a new one takes 0.3 s: a 0.15 s
    # deadline must not grow into "0.15 s of waiting plus the connect time".
    pool, connector = make_pool(min_size=2, validate_after=0)
    pool.wait()
    for conn in connector.made:
        conn.dead = True
    connector.delay = 0.3
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.15)
    assert time.monotonic() - started < 0.15 + 0.1
    # With enough time the same request is served by a fresh connection.
    conn = pool.getconn(timeout=2)
    assert not conn.dead and conn not in connector.made[:2]


# 3. max_waiting, close ------------------------------------------------------------------------


def test_max_waiting_fails_fast(make_pool):
    pool, _ = make_pool(min_size=1, max_waiting=1)
    pool.wait()
    held = pool.getconn()
    results: list[Any] = []
    waiting = start_getter(pool, results, timeout=5)
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    started = time.monotonic()
    with pytest.raises(TooManyRequests, match="max_waiting=1"):
        pool.getconn(timeout=5)
    assert time.monotonic() - started < 1
    pool.putconn(held)
    waiting.join(5)
    assert results == [held]


def test_close_raises_pool_closed_to_everyone_waiting(make_pool):
    pool, connector = make_pool(min_size=1)
    pool.wait()
    held = pool.getconn()
    results: list[Any] = []
    threads = [start_getter(pool, results, timeout=10) for _ in range(3)]
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 3)
    pool.close(timeout=0)
    for thread in threads:
        thread.join(5)
    assert len(results) == 3 and all(isinstance(r, PoolClosed) for r in results)
    with pytest.raises(PoolClosed):
        pool.getconn()
    pool.putconn(held)  # returned after close: closed, not kept
    assert held.closed
    assert connector.open_connections == []


# 4. Background growth, throttled to demand ----------------------------------------------------


def test_connections_are_opened_by_background_threads(make_pool):
    pool, connector = make_pool(min_size=0, max_size=4, name="bg")
    results: list[Any] = []
    threads = [start_getter(pool, results) for _ in range(3)]
    for thread in threads:
        thread.join(5)
    assert connector.made
    assert all(conn.opened_in == "bg-connect" for conn in connector.made)


def test_spike_opens_few_connections(make_pool):
    # HikariCP's spike: 50 requests at once, 150 ms to connect, 2 ms of work.
    pool, connector = make_pool(delay=0.15, min_size=0, max_size=50)
    barrier = threading.Barrier(50)
    waits: list[float] = []

    def request() -> None:
        barrier.wait()
        started = time.monotonic()
        conn = pool.getconn()
        waits.append(time.monotonic() - started)
        time.sleep(0.002)
        pool.putconn(conn)

    threads = [threading.Thread(target=request) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    time.sleep(0.4)  # let any connection still being opened arrive
    assert len(waits) == 50
    assert len(connector.made) <= 8
    assert connector.max_concurrent <= pool.num_workers


def test_long_held_connections_let_the_pool_grow(make_pool):
    # Usage history says "2 ms", but now every connection is held: the throttle
    # must notice its estimate is wrong and open more.
    pool, connector = make_pool(delay=0.02, min_size=1, max_size=4)
    pool.wait()
    for _ in range(50):
        pool.putconn(pool.getconn())
    held = [pool.getconn()]
    started = time.monotonic()
    held.append(pool.getconn(timeout=2))
    assert time.monotonic() - started < 1.5
    assert len(connector.made) == 2


# 5. Lifetime and idle time --------------------------------------------------------------------


def test_expired_connections_are_never_lent(make_pool):
    pool, connector = make_pool(min_size=2, max_lifetime=0.2)
    pool.wait()
    created = {}
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        conn = pool.getconn()
        now = time.monotonic()
        created.setdefault(conn.id, now)
        assert now - created[conn.id] < 0.2 + 0.05  # lent within its lifetime
        pool.putconn(conn)
    assert len(connector.made) >= 4  # expired ones were replaced


def test_lifetime_is_enforced_at_checkout(make_pool):
    pool, _connector = make_pool(min_size=1, max_lifetime=0.2)
    pool.wait()
    first = pool.getconn()
    pool.putconn(first)
    # Make the maintenance thread too late to see it: only checkout can catch it.
    pool._idle[-1].expires_at = time.monotonic() - 1
    second = pool.getconn()
    assert second is not first and first.closed


def test_lifetimes_are_jittered(make_pool):
    pool, _ = make_pool(min_size=20, max_lifetime=100.0)
    pool.wait()
    lifetimes = [slot.expires_at - slot.last_ok for slot in pool._idle]
    assert all(95.0 - 1e-6 <= lifetime <= 100.0 for lifetime in lifetimes)
    assert len({round(lifetime, 6) for lifetime in lifetimes}) > 1


def test_idle_connections_above_min_size_are_closed(make_pool):
    pool, connector = make_pool(min_size=1, max_size=4, max_idle=0.2)
    pool.wait()
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 4
    wait_until(lambda: pool.get_stats()["pool_size"] == 1, timeout=3)
    assert len(connector.open_connections) == 1


# 6. Validation --------------------------------------------------------------------------------


def test_recently_used_connection_is_not_pinged(make_pool):
    pool, _ = make_pool(min_size=1, validate_after=0.3)
    pool.wait()
    conn = pool.getconn()
    pool.putconn(conn)
    for _ in range(10):
        pool.putconn(pool.getconn())
    assert conn.pings == 0
    time.sleep(0.35)
    pool.putconn(pool.getconn())
    assert conn.pings == 1


def test_idle_connection_failing_its_ping_is_replaced(make_pool):
    pool, _connector = make_pool(min_size=1, validate_after=0.1)
    pool.wait()
    dead = pool.getconn()
    pool.putconn(dead)
    dead.dead = True
    time.sleep(0.15)
    conn = pool.getconn()
    assert conn is not dead and dead.closed
    assert pool.get_stats()["connections_lost"] == 1


def test_validate_after_none_never_pings(make_pool):
    pool, _ = make_pool(min_size=1, validate_after=None)
    pool.wait()
    conn = pool.getconn()
    pool.putconn(conn)
    time.sleep(0.05)
    pool.putconn(pool.getconn())
    assert conn.pings == 0


# 7. On return ---------------------------------------------------------------------------------


def test_connection_left_in_transaction_is_rolled_back(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    conn = pool.getconn()
    conn.in_transaction = True
    pool.putconn(conn)
    assert conn.rollbacks == 1 and not conn.in_transaction
    assert pool.getconn() is conn


def test_broken_connection_is_closed_and_replaced(make_pool):
    pool, connector = make_pool(min_size=2)
    pool.wait()
    conn = pool.getconn()
    conn.closed = True
    pool.putconn(conn)
    wait_until(lambda: len(connector.open_connections) == 2)
    stats = pool.get_stats()
    assert stats["returns_bad"] == 1 and stats["pool_size"] == 2


def test_reset_hook_runs_and_a_failing_reset_discards(make_pool):
    calls: list[FakeConnection] = []

    def reset(conn: FakeConnection) -> None:
        calls.append(conn)
        if getattr(conn, "poison", False):
            raise RuntimeError("cannot reset")

    pool, _ = make_pool(min_size=1, reset=reset)
    pool.wait()
    conn = pool.getconn()
    pool.putconn(conn)
    assert calls == [conn] and not conn.closed
    conn = pool.getconn()
    conn.poison = True
    pool.putconn(conn)
    assert conn.closed


def test_after_a_disconnect_older_idle_connections_are_checked(make_pool):
    # Two idle connections, both used a moment ago (inside the validation
    # window); the server restarts; the first use fails. The other one must be
    # checked before it is lent, though it was used recently.
    pool, _connector = make_pool(min_size=0, max_size=2, validate_after=60)
    first, second = pool.getconn(), pool.getconn()
    pool.putconn(first)
    pool.putconn(second)
    first.dead = second.dead = True
    with pytest.raises(FakeDisconnect), pool.connection() as conn:
        assert conn is second
        conn.query()
    assert second.closed
    conn = pool.getconn()
    assert first.pings == 1 and first.closed
    assert conn not in (first, second) and not conn.dead
    assert pool.get_stats()["connections_lost"] == 2


def test_connection_context_discards_on_disconnect_only(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    with pytest.raises(ValueError), pool.connection() as conn:
        raise ValueError("application error")
    assert not conn.closed and pool.getconn() is conn


# 8. Reconnection and error reporting ----------------------------------------------------------


def test_reconnection_backs_off_exponentially_with_one_probe(make_pool):
    attempt = 0.05  # each attempt takes this long to fail
    pool, connector = make_pool(delay=attempt, min_size=3, num_workers=3, open=False)
    connector.error = OSError("connection refused")
    started = time.monotonic()
    pool.open()
    time.sleep(2.0)
    times = [t - started for t in connector.attempt_times]
    # Round one: three attempts at once, failing together: one round, not three.
    assert len([t for t in times if t < attempt * 2]) == 3
    # Then single probes, the k-th waiting out FIRST * 2**k (x0.5-1.5) after the
    # last failure: one at a time, each gap at least half of the one before doubled.
    probes = [t for t in times if t >= attempt * 2]
    assert probes[0] <= 0.6
    for k, (a, b) in enumerate(itertools.pairwise(probes), start=1):
        assert b - a >= attempt + 0.5 * _BACKOFF_FIRST * 2**k, (k, probes)
    # Without the back-off there would be dozens; with it, 3 to 5 in 2 s.
    assert 3 <= len(probes) <= 5, probes
    # Every attempt is counted once it has failed (a probe may be under way now).
    wait_until(lambda: pool.get_stats()["connections_errors"] == connector.attempts, timeout=1)


def test_timeout_message_has_the_cause_without_the_password(make_pool):
    pool, connector = make_pool(min_size=0, max_size=2, secrets=["hunter2"], name="db1")
    connector.error = RuntimeError(
        'FATAL: password authentication failed for user "app" (dsn: password=hunter2 host=x)'
    )
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=0.3)
    message = str(info.value)
    assert "password authentication failed" in message
    assert "'db1'" in message and "max_size=2" in message
    assert "hunter2" not in message
    stats = pool.get_stats()
    assert "password authentication failed" in stats["last_connection_error"]
    assert "hunter2" not in repr(stats) and "hunter2" not in repr(pool)


def test_open_wait_fails_fast_with_the_cause(make_pool):
    pool, connector = make_pool(min_size=2, open=False)
    connector.error = RuntimeError('database "nope" does not exist')
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match='database "nope" does not exist'):
        pool.open(wait=True, timeout=20)
    assert time.monotonic() - started < 2


def test_pool_recovers_when_the_database_comes_back(make_pool):
    pool, connector = make_pool(min_size=1, open=False)
    connector.error = OSError("connection refused")
    pool.open()
    wait_until(lambda: connector.attempts >= 1)
    connector.error = None
    conn = pool.getconn(timeout=5)
    assert not conn.closed
    assert pool.get_stats()["connections_errors"] >= 1


# 10. Stats, sizes, life cycle -----------------------------------------------------------------


def test_stats_have_psycopg_pool_keys_and_count(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    held = pool.getconn()
    results: list[Any] = []
    waiter = start_getter(pool, results)
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    time.sleep(0.05)
    pool.putconn(held)
    waiter.join(5)
    pool.putconn(results[0])
    stats = pool.get_stats()
    assert stats.keys() >= PSYCOPG_POOL_STATS_KEYS
    assert stats["requests_num"] == 2
    assert stats["requests_queued"] == 1
    assert stats["requests_wait_ms"] >= 40
    assert stats["connections_num"] == 1
    assert stats["usage_ms"] >= 40
    popped = pool.pop_stats()
    assert popped["requests_num"] == 2
    after = pool.get_stats()
    assert after["requests_num"] == 0 and after["pool_size"] == 1


def test_resize_grows_and_shrinks(make_pool):
    pool, connector = make_pool(min_size=1, max_size=1)
    pool.wait()
    pool.resize(3, 5)
    wait_until(lambda: pool.get_stats()["pool_size"] == 3)
    held = pool.getconn()
    pool.resize(1, 1)
    assert pool.get_stats()["pool_size"] == 1  # the idle ones closed at once
    pool.putconn(held)
    assert len(connector.open_connections) == 1


def test_drain_replaces_every_connection(make_pool):
    pool, connector = make_pool(min_size=2)
    pool.wait()
    held = pool.getconn()
    old = list(connector.made)
    pool.drain()
    pool.putconn(held)
    assert held.closed
    wait_until(lambda: len(connector.open_connections) == 2)
    assert not set(connector.open_connections) & set(old)


def test_putconn_rejects_foreign_and_double_returns(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(ValueError, match="not lent by pool"):
        pool.putconn(conn)
    with pytest.raises(ValueError):
        pool.putconn(FakeConnection())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_size": 5, "max_size": 2}, r"max_size \(2\) must be >= min_size \(5\)"),
        ({"min_size": -1}, "min_size must be an integer >= 0"),
        ({"timeout": "30"}, "timeout must be a number"),
        ({"max_lifetime": 0}, "max_lifetime must be a number of seconds > 0"),
        ({"num_workers": 0}, "num_workers must be an integer >= 1"),
        ({"validate_after": -1}, "validate_after must be a number of seconds >= 0"),
        ({"leak_threshold": 0}, "leak_threshold must be a number of seconds > 0"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Pool(FakeConnector(), FakeAdapter(), open=False, **options)


TIME_OPTIONS = ("timeout", "max_lifetime", "max_idle", "validate_after", "leak_threshold")


@pytest.mark.parametrize("key", TIME_OPTIONS)
@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), 10**400, 1e300], ids=repr
)
def test_absurd_times_are_refused_with_the_key_named(key, value):
    # Accepted, each of these broke the pool later: OverflowError at the first
    # checkout, a connector or maintenance thread dead, a NaN lifetime that
    # made every connection unfit to lend (hundreds opened a second).
    with pytest.raises(ValueError, match=f"^{key} must be a number of seconds .* at most 1e"):
        Pool(FakeConnector(), FakeAdapter(), open=False, **{key: value})


def test_a_checkout_ends_by_its_deadline_even_if_every_connection_is_unfit(make_pool):
    # Every connection is past its lifetime by the time it is handed over.
    pool, connector = make_pool(min_size=0, max_size=2, max_lifetime=1e-9)
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert len(connector.made) > 1  # it did go on to new ones meanwhile


def test_pool_as_context_manager_opens_and_closes():
    connector = FakeConnector()
    with Pool(connector, FakeAdapter(), min_size=2) as pool:
        assert pool.get_stats()["pool_size"] == 2
    assert pool.closed and connector.open_connections == []


def test_getconn_before_open_says_so():
    pool = Pool(FakeConnector(), FakeAdapter(), open=False)
    with pytest.raises(PoolClosed, match="not open"):
        pool.getconn()


def test_close_waits_for_connects_under_way_not_for_lent_connections(make_pool):
    pool, connector = make_pool(delay=0.3, min_size=1, max_size=2)
    pool.wait()
    held = pool.getconn()
    results: list[Any] = []
    waiter = start_getter(pool, results, timeout=5)  # starts a 0.3 s connect
    wait_until(lambda: connector.concurrent == 1)
    started = time.monotonic()
    pool.close(timeout=5)
    elapsed = time.monotonic() - started
    assert 0.1 < elapsed < 2  # the connect finished; the lent one was not awaited
    waiter.join(5)
    assert isinstance(results[0], PoolClosed)
    assert [c for c in connector.open_connections if c is not held] == []
    pool.putconn(held)
    assert held.closed


# Leak detection, histograms, deliberate discards ------------------------------------------------


def take_and_hold(pool: Pool) -> Any:
    """A named caller frame, so the leak report can be checked to point here."""
    return pool.getconn()


@pytest.mark.parametrize(
    "served",
    [
        "idle",  # the top of the idle stack, lent at once
        "pinged",  # idle, but checked first (validate_after=0)
        "opened",  # nothing idle: the request waits for a new connection
    ],
)
def test_a_connection_held_too_long_is_reported_with_its_taker(make_pool, caplog, served):
    pool, _ = make_pool(
        min_size=0 if served == "opened" else 1,
        max_size=1,
        leak_threshold=0.2,
        validate_after=0 if served == "pinged" else 0.5,
    )
    pool.wait()
    caplog.set_level("INFO", logger="django_pool")
    conn = take_and_hold(pool)

    def leak_warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "leak_threshold" in r.getMessage()]

    # Counted under the pool's lock, logged just after: wait for the log.
    wait_until(lambda: bool(leak_warnings()), timeout=3)
    assert pool.get_stats()["leaks_detected"] == 1
    warnings = leak_warnings()
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    message = warnings[0].getMessage()
    assert "take_and_hold" in message
    assert "return pool.getconn()" in message  # the source line
    assert "django_pool/engine/" not in message  # the stack starts at the taker
    time.sleep(0.3)
    assert pool.get_stats()["leaks_detected"] == 1  # reported once per checkout
    pool.putconn(conn)
    assert any("came back" in r.getMessage() for r in caplog.records)


def test_connections_returned_in_time_are_not_reported(make_pool, caplog):
    pool, _ = make_pool(min_size=1, leak_threshold=0.3)
    pool.wait()
    caplog.set_level("WARNING", logger="django_pool")
    for _ in range(20):
        pool.putconn(pool.getconn())
        time.sleep(0.02)
    time.sleep(0.4)
    assert pool.get_stats()["leaks_detected"] == 0
    assert not caplog.records


def test_leak_detection_is_off_by_default(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    conn = pool.getconn()
    assert pool._lent[id(conn)].taken_by is None
    pool.putconn(conn)


def test_histograms_count_waits_and_usage(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()  # no wait: an idle connection was there
    results: list[Any] = []
    waiter = start_getter(pool, results)
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    time.sleep(0.06)
    pool.putconn(conn)  # held about 60 ms; the waiter waited as long
    waiter.join()
    pool.putconn(results[0])
    histograms = pool.get_histograms()
    wait, usage = histograms["wait"], histograms["usage"]
    assert wait.count == 2 and usage.count == 2
    assert wait.counts[0] == 1  # the immediate one, in the smallest bucket
    slow = [b for b, n in zip(wait.bounds, wait.counts, strict=False) if n][-1]
    assert slow >= 0.05 and wait.total >= 0.05
    assert usage.total >= 0.05
    pool.pop_stats()
    assert pool.get_histograms()["usage"].count == 2  # never reset


def test_listeners_hear_each_timing_as_it_happens(make_pool, caplog):
    heard: list[tuple[str, float]] = []
    pool, _ = make_pool(delay=0.03, min_size=1, max_size=1, validate_after=0)

    def failing(kind: str, seconds: float) -> None:
        raise RuntimeError("a broken exporter")

    pool.add_listener(lambda kind, seconds: heard.append((kind, seconds)))
    pool.add_listener(failing)
    pool.wait()
    conn = pool.getconn()  # checked (validate_after=0): the slow path
    results: list[Any] = []
    waiter = start_getter(pool, results)
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    time.sleep(0.06)
    pool.putconn(conn)
    waiter.join()
    pool.park(results[0])
    kinds = [kind for kind, _ in heard]
    assert kinds == ["connect", "wait", "use", "wait", "use"], heard
    connect, first_wait, first_use, second_wait, second_use = (s for _, s in heard)
    assert connect >= 0.025 and first_wait < 0.05 and first_use >= 0.05
    assert second_wait >= 0.05 and second_use < first_use
    assert "timing listener" in caplog.text and "a broken exporter" in caplog.text
    pool.remove_listener(failing)
    caplog.clear()
    pool.putconn(pool.getconn())  # the fast path tells too
    assert [kind for kind, _ in heard[-2:]] == ["wait", "use"]
    assert "timing listener" not in caplog.text


def test_timeouts_are_counted_apart_from_other_refusals(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1, max_waiting=1)
    pool.wait()
    held = pool.getconn()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.05)
    results: list[Any] = []
    waiter = start_getter(pool, results, timeout=0.5)
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    with pytest.raises(TooManyRequests):
        pool.getconn(timeout=0.05)
    pool.putconn(held)
    waiter.join()
    stats = pool.get_stats()
    assert stats["requests_timeouts"] == 1 and stats["requests_errors"] == 2


def test_discarded_connection_is_replaced_without_counting_as_bad(make_pool):
    pool, _ = make_pool(min_size=1)
    pool.wait()
    conn = pool.getconn()
    pool.putconn(conn, discard=True)
    assert conn.closed
    wait_until(lambda: pool.get_stats()["pool_available"] == 1)
    stats = pool.get_stats()
    assert stats["returns_bad"] == 0 and stats["connections_lost"] == 0
    assert pool.getconn() is not conn


def test_a_checkout_that_replaces_a_dead_connection_counts_one_wait(make_pool):
    pool, _ = make_pool(delay=0.05, min_size=1, validate_after=0)
    pool.wait()
    dead = pool.getconn()
    pool.putconn(dead)
    dead.dead = True
    conn = pool.getconn()  # takes the dead one, pings it, waits for a new one
    assert conn is not dead
    wait = pool.get_histograms()["wait"]
    assert wait.count == 2  # the first checkout and this one, once
    assert wait.total >= 0.04  # this one waited for the new connection
    assert pool.get_stats()["requests_wait_ms"] >= 40


def _take_in_a_thread_that_ends(pool: Pool, owner: bool = True) -> Any:
    """getconn in a thread that ends without putconn (in a transaction); what it took."""
    taken: list[Any] = []

    def run() -> None:
        conn = pool.getconn(owner=threading.current_thread() if owner else None)
        conn.in_transaction = True
        taken.append(conn)

    thread = threading.Thread(target=run, name="forgetful")
    thread.start()
    thread.join()
    return taken[0]


def test_a_connection_whose_owner_thread_ended_is_reclaimed(make_pool, caplog):
    caplog.set_level("WARNING", logger="django_pool")
    pool, connector = make_pool(min_size=1, max_size=1, leak_threshold=60)
    pool.wait()
    started = time.monotonic()
    lost = _take_in_a_thread_that_ends(pool)
    # Nobody else asks: maintenance alone takes it back, within about a second.
    wait_until(lambda: pool.get_stats()["pool_in_use"] == 0, timeout=5)
    assert time.monotonic() - started < 3
    stats = pool.get_stats()
    assert stats["connections_reclaimed"] == 1 and stats["pool_available"] == 1
    assert lost.rollbacks == 1 and not lost.in_transaction
    assert pool.getconn(timeout=0.5) is lost  # lent again, not replaced
    assert len(connector.made) == 1
    wait_until(lambda: any("ended" in r.getMessage() for r in caplog.records))
    message = next(r.getMessage() for r in caplog.records if "ended" in r.getMessage())
    assert "thread 'forgetful'" in message and "test_pool_engine.py" in message


def test_a_reclaimed_connection_the_hook_refuses_is_replaced(make_pool):
    refused: list[Any] = []
    pool, connector = make_pool(min_size=1, max_size=1, reclaim=lambda c: refused.append(c))
    pool.wait()
    lost = _take_in_a_thread_that_ends(pool)
    wait_until(lambda: pool.get_stats()["connections_reclaimed"] == 1)
    assert refused == [lost] and lost.closed
    replacement = pool.getconn(timeout=2)
    assert replacement is not lost and len(connector.made) == 2
    assert pool.get_stats()["returns_bad"] == 0  # discarded, not counted as broken


def test_without_an_owner_a_connection_of_an_ended_thread_stays_lent(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = _take_in_a_thread_that_ends(pool, owner=False)
    time.sleep(1.5)  # past the owner check interval
    assert pool.get_stats()["pool_in_use"] == 1
    pool.putconn(conn)  # handed to another thread, which gives it back
    assert pool.get_stats()["connections_reclaimed"] == 0


# -- parking (Pool.park / Pool.unpark) -----------------------------------------------


def test_a_parked_connection_is_taken_back_by_its_borrower_without_a_checkout(make_pool):
    pool, connector = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    assert pool.park(conn)
    stats = pool.get_stats()
    # Given back as far as anybody else can tell.
    assert stats["pool_in_use"] == 0 and stats["pool_available"] == 1
    assert pool.unpark(conn)
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 1 and stats["pool_available"] == 0
    assert stats["requests_num"] == 2 and conn.pings == 0
    pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 1 and len(connector.made) == 1


def test_a_parked_connection_goes_to_the_next_request_that_finds_nothing_idle(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    assert pool.park(conn)
    assert pool.getconn(timeout=0.5) is conn  # taken by another borrower
    assert not pool.unpark(conn)  # so the first one borrows again
    assert pool.get_stats()["pool_in_use"] == 1
    pool.putconn(conn)


def test_parking_hands_the_connection_to_a_waiting_request(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=5)))
    waiter.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    assert pool.park(conn)
    waiter.join(5)
    assert got == [conn] and not pool.unpark(conn)
    pool.putconn(conn)


def test_a_connection_in_a_transaction_is_not_parked(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    conn.in_transaction = True
    assert not pool.park(conn)
    assert pool.get_stats()["pool_in_use"] == 1 and conn.rollbacks == 0
    conn.in_transaction = False
    pool.putconn(conn)


def test_a_broken_or_expired_connection_is_given_back_instead_of_parked(make_pool):
    pool, connector = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    conn.closed = True
    assert pool.park(conn)  # no longer the caller's: discarded and replaced
    assert not pool.unpark(conn)
    replacement = pool.getconn(timeout=2)
    assert replacement is not conn and len(connector.made) == 2
    assert pool.get_stats()["returns_bad"] == 1
    pool.putconn(replacement)


def test_an_unclaimed_parked_connection_becomes_idle_and_is_checked(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1, validate_after=0.2)
    pool.wait()
    conn = pool.getconn()
    assert pool.park(conn)
    time.sleep(0.3)  # parked longer than validate_after
    # Maintenance or the claim itself makes it an ordinary idle connection...
    assert not pool.unpark(conn)
    # ...which the next checkout pings, as any connection idle that long.
    assert pool.getconn(timeout=1) is conn and conn.pings == 1
    pool.putconn(conn)


def test_maintenance_moves_parked_connections_to_idle(make_pool):
    pool, _ = make_pool(min_size=2, max_size=2, validate_after=0.2)
    pool.wait()
    first, second = pool.getconn(), pool.getconn()
    pool.putconn(second)
    assert pool.park(first)
    wait_until(lambda: not pool._parked, timeout=3)
    assert len(pool._idle) == 2
    # The idle stack stays ordered by age: the one parked last is on top.
    assert pool._idle[-1].conn is first


def test_validate_after_zero_never_parks(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1, validate_after=0)
    pool.wait()
    conn = pool.getconn()
    pings = conn.pings
    assert pool.park(conn)
    assert not pool.unpark(conn)  # given back: every checkout pings
    assert pool.getconn(timeout=1) is conn and conn.pings == pings + 1
    pool.putconn(conn)


def test_close_and_drain_close_parked_connections(make_pool):
    pool, connector = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    assert pool.park(conn)
    pool.drain()
    assert conn.closed and not pool.unpark(conn)
    replacement = pool.getconn(timeout=2)
    assert pool.park(replacement)
    pool.close()
    assert replacement.closed and pool.get_stats()["pool_size"] == 0
    assert len(connector.made) == 2


def test_parked_time_is_not_usage_and_not_a_leak(make_pool, caplog):
    caplog.set_level("WARNING", logger="django_pool")
    pool, _ = make_pool(min_size=1, max_size=1, leak_threshold=0.2, validate_after=None)
    pool.wait()
    conn = pool.getconn()
    assert pool.park(conn)
    time.sleep(0.5)  # past leak_threshold, but parked
    assert pool.unpark(conn)
    pool.putconn(conn)
    assert pool.get_stats()["leaks_detected"] == 0
    usage = pool.get_histograms()["usage"]
    assert usage.count == 2 and usage.total < 0.2


# -- a waiter interrupted by an exception (a signal handler's) -----------------------


class Interrupted(Exception):
    """What a signal handler raises: Celery's soft time limit, a SIGALRM timeout."""


@contextlib.contextmanager
def alarm_raises(after: float) -> Iterator[None]:
    """Raise Interrupted in the main thread ``after`` seconds from now (a real SIGALRM)."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("alarm")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, after)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_waiter_interrupted_by_a_signal_leaves_the_queue(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    held = pool.getconn()
    with pytest.raises(Interrupted), alarm_raises(0.2):
        pool.getconn(timeout=5)
    assert pool.get_stats()["requests_waiting"] == 0
    pool.putconn(held)
    # The returned connection goes to the next request, not to the one that left.
    assert pool.getconn(timeout=0.5) is held
    assert pool.get_stats()["pool_in_use"] == 1


def test_a_connection_handed_to_a_waiter_as_it_is_interrupted_is_not_lost(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    held = pool.getconn()
    # Hand the connection over while the waiter is inside the pool, and have
    # the exception arrive right then (the waiter wakes, and the signal handler
    # runs before getconn returns).
    returner = threading.Timer(0.2, pool.putconn, args=(held,))
    original = pool._wait_ready

    def wait_then_interrupt(*args: Any) -> bool:
        served = original(*args)
        os.kill(os.getpid(), signal.SIGALRM)  # handled at the next bytecode
        time.sleep(0.05)
        return served

    pool._wait_ready = wait_then_interrupt  # type: ignore[method-assign]
    returner.start()
    with pytest.raises(Interrupted), alarm_raises(60):
        pool.getconn(timeout=5)
    returner.join()
    del pool._wait_ready
    stats = pool.get_stats()
    assert stats["pool_in_use"] == 0 and stats["pool_available"] == 1, stats
    assert pool.getconn(timeout=0.5) is held


def test_a_parked_connection_whose_reported_settings_changed_goes_to_nobody_else(make_pool):
    pool, connector = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    conn.reported = ("Asia/Tokyo",)  # a function set the time zone: no statement says so
    assert pool.park(conn)
    other = pool.getconn(timeout=2)  # another request: not this session
    assert other is not conn and conn.closed and len(connector.made) == 2
    assert not pool.unpark(conn)
    pool.putconn(other)


def test_its_own_borrower_takes_a_changed_parked_connection_back(make_pool):
    pool, _ = make_pool(min_size=1, max_size=1)
    pool.wait()
    conn = pool.getconn()
    conn.reported = ("Asia/Tokyo",)
    assert pool.park(conn)  # compared only if someone else wants it
    assert pool.unpark(conn) and not conn.closed
    pool.putconn(conn)
