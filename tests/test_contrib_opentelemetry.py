"""django_pool.contrib.opentelemetry: pool metrics after the semantic conventions.

Each test has a MeterProvider of its own with an in-memory reader (never the
global provider), so that what it collects is what its own pools did. Engine
pools run on the fake driver, whose timings the tests set; the last test
goes through Django's ``default`` alias on the real PostgreSQL.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="opentelemetry-sdk is not installed (its in-memory reader checks the metrics)",
)

from django.db import connections
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    Sum,
)

from django_pool import Pool, PoolTimeout
from django_pool.backends import active_pools, get_pool
from django_pool.contrib.opentelemetry import (
    instrument,
    instrument_pool,
    uninstrument,
)
from django_pool.engine.histogram import BOUNDS
from tests.djangoapp.models import Item
from tests.fakes import FakeAdapter, FakeConnector
from tests.polling import wait_until

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

# What the conventions (v1.44.0) say of each metric, written out here rather
# than taken from the module, so that a wrong name, unit or kind fails:
# (kind, monotonic, unit, description).
CONVENTIONS: dict[str, tuple[type, bool | None, str, str]] = {
    "db.client.connection.count": (
        Sum,
        False,
        "{connection}",
        "The number of connections that are currently in state described by the "
        "`state` attribute.",
    ),
    "db.client.connection.idle.max": (
        Sum,
        False,
        "{connection}",
        "The maximum number of idle open connections allowed.",
    ),
    "db.client.connection.idle.min": (
        Sum,
        False,
        "{connection}",
        "The minimum number of idle open connections allowed.",
    ),
    "db.client.connection.max": (
        Sum,
        False,
        "{connection}",
        "The maximum number of open connections allowed.",
    ),
    "db.client.connection.pending_requests": (
        Sum,
        False,
        "{request}",
        "The number of current pending requests for an open connection.",
    ),
    "db.client.connection.timeouts": (
        Sum,
        True,
        "{timeout}",
        "The number of connection timeouts that have occurred trying to obtain a "
        "connection from the pool.",
    ),
    "db.client.connection.create_time": (
        Histogram,
        None,
        "s",
        "The time it took to create a new connection.",
    ),
    "db.client.connection.wait_time": (
        Histogram,
        None,
        "s",
        "The time it took to obtain an open connection from the pool.",
    ),
    "db.client.connection.use_time": (
        Histogram,
        None,
        "s",
        "The time between borrowing a connection and returning it to the pool.",
    ),
}
OBSERVED = [name for name, (kind, _, _, _) in CONVENTIONS.items() if kind is Sum]


class Collected:
    """One collection of a reader, by metric name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        self.metrics: dict[str, Metric] = {}
        if data is not None:
            for resource_metrics in data.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self.metrics[metric.name] = metric

    def points(self, name: str) -> list[Any]:
        metric = self.metrics.get(name)
        return list(metric.data.data_points) if metric is not None else []

    def value(self, name: str, pool: str, **attributes: str) -> int | None:
        """The point of ``name`` for ``pool`` (and ``attributes``); None if there is none."""
        wanted = {POOL_NAME: pool, **attributes}
        found = [p for p in self.points(name) if dict(p.attributes) == wanted]
        assert len(found) <= 1
        return found[0].value if found else None

    def histogram(self, name: str, pool: str) -> HistogramDataPoint | None:
        found = [p for p in self.points(name) if dict(p.attributes) == {POOL_NAME: pool}]
        assert len(found) <= 1
        return found[0] if found else None

    def pool_names(self, name: str) -> set[str]:
        return {p.attributes[POOL_NAME] for p in self.points(name)}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """The test's own provider; every pool is detached before it shuts down."""
    meter_provider = MeterProvider(metric_readers=[reader])
    yield meter_provider
    uninstrument()
    meter_provider.shutdown()


def test_metrics_have_the_conventions_names_units_kinds_and_descriptions(
    make_pool, provider, reader
):
    pool, _ = make_pool(open=False, min_size=1)
    instrument_pool(pool, provider)
    pool.open(wait=True)
    pool.putconn(pool.getconn())
    collected = Collected(reader)
    assert set(collected.metrics) == set(CONVENTIONS)
    for name, (kind, monotonic, unit, description) in CONVENTIONS.items():
        metric = collected.metrics[name]
        assert isinstance(metric.data, kind), name
        if monotonic is not None:
            assert metric.data.is_monotonic is monotonic, name
        assert (metric.unit, metric.description) == (unit, description), name


def test_observed_values_are_get_stats_at_collection(make_pool, provider, reader):
    pool, _ = make_pool(open=False, min_size=3, max_size=7, name="orders")
    instrument_pool(pool, provider)
    pool.open(wait=True)
    lent = [pool.getconn(), pool.getconn()]
    stats = pool.get_stats()
    collected = Collected(reader)
    assert stats["pool_available"] == 1 and stats["pool_in_use"] == 2  # as set up
    assert collected.value("db.client.connection.count", "orders", **{STATE: "idle"}) == 1
    assert collected.value("db.client.connection.count", "orders", **{STATE: "used"}) == 2
    assert collected.value("db.client.connection.idle.max", "orders") == stats["pool_max"] == 7
    assert collected.value("db.client.connection.idle.min", "orders") == stats["pool_min"] == 3
    assert collected.value("db.client.connection.max", "orders") == 7
    assert collected.value("db.client.connection.pending_requests", "orders") == 0
    assert collected.value("db.client.connection.timeouts", "orders") == 0
    # Every point carries the pool's name, and the state only on count.
    for name in OBSERVED:
        for point in collected.points(name):
            expected = {POOL_NAME, STATE} if name == "db.client.connection.count" else {POOL_NAME}
            assert set(point.attributes) == expected, name
    for conn in lent:
        pool.putconn(conn)
    collected = Collected(reader)
    assert collected.value("db.client.connection.count", "orders", **{STATE: "idle"}) == 3
    assert collected.value("db.client.connection.count", "orders", **{STATE: "used"}) == 0


def test_pending_requests_and_timeouts(make_pool, provider, reader):
    pool, _ = make_pool(open=False, min_size=1, timeout=0.05, name="busy")
    instrument_pool(pool, provider)
    pool.open(wait=True)
    held = pool.getconn()
    for _ in range(2):
        with pytest.raises(PoolTimeout):
            pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
    waiter.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    collected = Collected(reader)
    assert collected.value("db.client.connection.pending_requests", "busy") == 1
    assert collected.value("db.client.connection.timeouts", "busy") == 2
    assert pool.get_stats()["requests_timeouts"] == 2
    pool.putconn(held)
    waiter.join()
    collected = Collected(reader)
    assert collected.value("db.client.connection.pending_requests", "busy") == 0
    assert collected.value("db.client.connection.timeouts", "busy") == 2


def test_histograms_see_every_connect_wait_and_use(make_pool, provider, reader):
    pool, connector = make_pool(open=False, delay=0.01, min_size=2, name="timed")
    instrument_pool(pool, provider)
    pool.open(wait=True)
    checkouts, held_for = 5, 0.02
    for _ in range(checkouts):
        conn = pool.getconn()
        time.sleep(held_for)
        pool.putconn(conn)
    stats = pool.get_stats()
    collected = Collected(reader)

    create = collected.histogram("db.client.connection.create_time", "timed")
    assert create is not None
    assert create.count == stats["connections_num"] == len(connector.made) == 2
    assert create.sum >= 2 * connector.delay
    wait = collected.histogram("db.client.connection.wait_time", "timed")
    assert wait is not None
    assert wait.count == checkouts
    assert 0 <= wait.sum < held_for  # each found an idle connection
    use = collected.histogram("db.client.connection.use_time", "timed")
    assert use is not None
    assert use.count == checkouts
    assert use.sum >= checkouts * held_for
    assert use.sum == pytest.approx(stats["usage_ms"] / 1000, abs=0.001)
    for point in (create, wait, use):
        assert tuple(point.explicit_bounds) == BOUNDS
        assert set(point.attributes) == {POOL_NAME}


def test_a_wait_for_a_busy_pool_is_recorded_as_long_as_it_was(make_pool, provider, reader):
    pool, _ = make_pool(open=False, min_size=1, name="queue")
    instrument_pool(pool, provider)
    pool.open(wait=True)
    held = pool.getconn()
    release = threading.Timer(0.1, pool.putconn, [held])
    release.start()
    pool.putconn(pool.getconn())  # waits for the timer
    release.join()
    wait = Collected(reader).histogram("db.client.connection.wait_time", "queue")
    assert wait is not None
    assert wait.count == 2
    assert wait.sum >= 0.09


def test_instrumenting_twice_does_not_count_twice(make_pool, provider, reader):
    pool, _ = make_pool(open=False, min_size=2, name="twice")
    instrument_pool(pool, provider)
    instrument_pool(pool, provider)
    pool.open(wait=True)
    for _ in range(3):
        pool.putconn(pool.getconn())
    collected = Collected(reader)
    assert collected.histogram("db.client.connection.wait_time", "twice").count == 3
    assert collected.histogram("db.client.connection.use_time", "twice").count == 3
    assert collected.histogram("db.client.connection.create_time", "twice").count == 2
    assert collected.value("db.client.connection.count", "twice", **{STATE: "idle"}) == 2
    assert collected.value("db.client.connection.max", "twice") == 2


def test_a_closed_pool_is_no_longer_reported(make_pool, provider, reader):
    closing, _ = make_pool(open=False, min_size=1, name="closing")
    staying, _ = make_pool(open=False, min_size=1, name="staying")
    for pool in (closing, staying):
        instrument_pool(pool, provider)
        pool.open(wait=True)
    collected = Collected(reader)
    for name in OBSERVED:
        assert collected.pool_names(name) == {"closing", "staying"}, name
    closing.close()
    collected = Collected(reader)
    for name in OBSERVED:
        assert collected.pool_names(name) == {"staying"}, name


def test_pools_are_held_weakly(provider, reader):
    pool = Pool(FakeConnector(), FakeAdapter(), min_size=1, name="dropped", open=False)
    instrument_pool(pool, provider)
    pool.open(wait=True)
    assert "dropped" in Collected(reader).pool_names("db.client.connection.max")
    pool.close()
    gone = weakref.ref(pool)
    del pool
    gc.collect()
    assert gone() is None  # nothing here kept it alive


def test_a_pool_that_fails_to_report_does_not_stop_the_others(
    make_pool, provider, reader, monkeypatch, caplog
):
    failing, _ = make_pool(open=False, min_size=1, name="failing")
    working, _ = make_pool(open=False, min_size=1, name="working")
    for pool in (failing, working):
        instrument_pool(pool, provider)
        pool.open(wait=True)

    def broken() -> dict[str, Any]:
        raise RuntimeError("stats unavailable")

    monkeypatch.setattr(failing, "get_stats", broken)
    with caplog.at_level(logging.ERROR, logger="django_pool"):
        collected = Collected(reader)
    assert collected.pool_names("db.client.connection.max") == {"working"}
    assert collected.value("db.client.connection.max", "working") == 1
    assert "reading the stats of pool 'failing' failed" in caplog.text


def test_uninstrument_detaches_from_every_pool(make_pool, provider, reader):
    pool, _ = make_pool(open=False, min_size=1, name="detached")
    instrument_pool(pool, provider)
    pool.open(wait=True)
    pool.putconn(pool.getconn())
    uninstrument()
    pool.putconn(pool.getconn())
    collected = Collected(reader)
    assert collected.histogram("db.client.connection.wait_time", "detached").count == 1
    assert collected.pool_names("db.client.connection.max") == set()
    instrument_pool(pool, provider)  # the same instruments again, not a second set
    pool.putconn(pool.getconn())
    collected = Collected(reader)
    assert collected.histogram("db.client.connection.wait_time", "detached").count == 2
    assert collected.value("db.client.connection.max", "detached") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_goes_on_recording_its_inherited_pool(make_pool, provider, reader):
    pool, _ = make_pool(open=False, min_size=1, name="forked")
    instrument_pool(pool, provider)
    pool.open(wait=True)
    pool.putconn(pool.getconn())
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its checkouts were recorded
        status = 1
        try:
            for _ in range(2):
                pool.putconn(pool.getconn())
            wait = Collected(reader).histogram("db.client.connection.wait_time", "forked")
            status = 0 if wait is not None and wait.count == 3 else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's figures are its own.
    assert Collected(reader).histogram("db.client.connection.wait_time", "forked").count == 1


@pytest.mark.django_db(transaction=True)
def test_django_pools_are_reported_under_their_alias(provider, reader):
    connections["default"].close()  # what the query below does is then all new
    instrument(provider)
    instrument(provider)  # a second call must not count twice
    pool = get_pool("default")
    assert pool is not None
    instrument_pool(pool, provider)  # nor must this one
    pool.wait()

    Item.objects.create(name="measured")
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.05)")
    connections["default"].close()  # back to the pool: one loan, ended

    stats = pool.get_stats()
    collected = Collected(reader)
    wait = collected.histogram("db.client.connection.wait_time", "default")
    use = collected.histogram("db.client.connection.use_time", "default")
    assert wait is not None and wait.count == 1
    assert use is not None and use.count == 1
    assert use.sum >= 0.05
    idle = collected.value("db.client.connection.count", "default", **{STATE: "idle"})
    used = collected.value("db.client.connection.count", "default", **{STATE: "used"})
    assert (idle, used) == (stats["pool_available"], stats["pool_in_use"])
    assert idle >= 1
    assert collected.value("db.client.connection.max", "default") == pool.max_size
    # The alias names the pool (other tests' pools may be open too); nothing
    # about the server or its password.
    for metric in collected.metrics.values():
        for point in metric.data.data_points:
            assert set(point.attributes) <= {POOL_NAME, STATE}
            assert point.attributes[POOL_NAME] in active_pools()


@pytest.mark.django_db(transaction=True)
def test_a_second_meter_provider_gets_the_pools_made_already(provider, reader):
    instrument(provider)
    Item.objects.count()  # the default alias has its pool now, whatever ran before
    other_reader = InMemoryMetricReader()
    other = MeterProvider(metric_readers=[other_reader])
    try:
        instrument(other)
        pool = get_pool("default")
        assert pool is not None
        assert Collected(other_reader).value("db.client.connection.max", "default") == (
            pool.max_size
        )
        assert Collected(reader).value("db.client.connection.max", "default") == pool.max_size
    finally:
        uninstrument()
        other.shutdown()
