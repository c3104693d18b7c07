"""OpenTelemetry metrics for the pools (``pip install django-pool[opentelemetry]``).

Only ``opentelemetry-api`` is used: the SDK, its exporters and readers are the
application's, as the API intends for libraries. Until an SDK is set up the
measurements go nowhere, at almost no cost.

:func:`instrument` reports every Django pool of this process (made already or
later); :func:`instrument_pool` one engine :class:`~django_pool.Pool` used
without Django. Call :func:`instrument` once per process, for example in an
``AppConfig.ready()``, before or after the SDK is set up: the API's global
meter provider hands the instruments over to the SDK's once it is set::

    from django_pool.contrib.opentelemetry import instrument

    instrument()  # the global meter provider; instrument(meter_provider) for another

Conventions followed
--------------------

The database client connection-pool metrics of the OpenTelemetry semantic
conventions **v1.44.0** (status: development; the meter carries that schema
URL, :data:`SCHEMA_URL`). A change merged after v1.44.0 (semantic-conventions
pull request 4073) renames ``db.client.connection.max`` to
``db.client.connection.limit``; this module emits the v1.44.0 name.

Every point has the attribute ``db.client.connection.pool.name``: the alias
(the ``DATABASES`` key) for a Django pool, ``pool.name`` for an engine pool.
Nothing else about the database is reported: no host, user or password.

Observed at each collection, from ``Pool.get_stats()`` (asynchronous
instruments, read when the SDK collects):

* ``db.client.connection.count`` (UpDownCounter, ``{connection}``):
  ``pool_available`` with ``db.client.connection.state`` ``idle``, and
  ``pool_in_use`` with ``used``;
* ``db.client.connection.idle.max`` (UpDownCounter, ``{connection}``): ``pool_max``;
* ``db.client.connection.idle.min`` (UpDownCounter, ``{connection}``): ``pool_min``;
* ``db.client.connection.max`` (UpDownCounter, ``{connection}``): ``pool_max``;
* ``db.client.connection.pending_requests`` (UpDownCounter, ``{request}``):
  ``requests_waiting``;
* ``db.client.connection.timeouts`` (Counter, ``{timeout}``):
  ``requests_timeouts``, checkouts that raised ``PoolTimeout``.

``idle.max`` is ``max_size``: every open connection may be idle (those above
``min_size`` close after ``max_idle`` seconds). Connections being opened are
in neither state of ``count``.

Recorded as each happens, through ``Pool.add_listener`` (histograms, in
seconds):

* ``db.client.connection.create_time``: opening a connection, with the
  ``configure`` hook and, under Django, the backend's connection setup;
* ``db.client.connection.wait_time``: each checkout, from the request to the
  connection in hand (near 0 when one was idle); checkouts that failed
  (timed out, refused, pool closed) have none;
* ``db.client.connection.use_time``: each loan, from checkout to return (or
  to being parked between transactions, ``"release": "transaction"``).

Their bucket boundaries are advised to the SDK as those of
:data:`django_pool.engine.histogram.BOUNDS` (0.1 ms to 60 s); a View of the
application's takes precedence. With ``opentelemetry-api`` older than 1.30,
which cannot advise them, the SDK's default boundaries apply, which are meant
for milliseconds: give these three a View with
``ExplicitBucketHistogramAggregation(BOUNDS)``.

What a pool's life means for them
---------------------------------

* Everything is **per process**: each worker reports its own pools, which
  the collector or backend adds up by the resource's attributes.
* A pool closed (``close_pools()``) or replaced (a settings change) stops
  being reported at the next collection; its replacement is reported under
  the same name, its ``timeouts`` from zero, which a backend takes for a
  counter reset. So does ``Pool.pop_stats()``, which zeroes the counter: do
  not call it on a pool this module reports. The histograms are not touched
  by either. Pools are held weakly: reporting one keeps nothing alive.
* A forked child (gunicorn ``--preload``, Celery prefork) goes on reporting
  the pools it inherited (they keep their listeners), each starting afresh
  as the engine makes it.
* Each checkout and each return costs one histogram ``record()`` of the SDK,
  in the borrowing thread, so that the SDK sees the request's context (its
  exemplars can name the trace). With opentelemetry-sdk 1.45 that is about
  15 microseconds each, where a checkout and return of the engine alone take
  about 3. Collections cost one ``get_stats()`` per pool and observed
  instrument.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation

from .. import __version__
from ..engine import Pool
from ..engine.histogram import BOUNDS

__all__ = ["POOL_NAME", "SCHEMA_URL", "instrument", "instrument_pool", "uninstrument"]

logger = logging.getLogger("django_pool")

#: The semantic conventions followed (see the module's documentation).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
#: The attribute naming the pool on every point.
POOL_NAME = "db.client.connection.pool.name"
_STATE = "db.client.connection.state"

_Attributes = Mapping[str, str]
_Listener = Callable[[str, float], None]

#: Observed instruments: (name, unit, description, {``get_stats()`` key: the
#: point's attributes besides the pool name}). Descriptions are the conventions'.
_UP_DOWN_COUNTERS: tuple[tuple[str, str, str, Mapping[str, _Attributes]], ...] = (
    (
        "db.client.connection.count",
        "{connection}",
        "The number of connections that are currently in state described by the "
        "`state` attribute.",
        {"pool_available": {_STATE: "idle"}, "pool_in_use": {_STATE: "used"}},
    ),
    (
        "db.client.connection.idle.max",
        "{connection}",
        "The maximum number of idle open connections allowed.",
        {"pool_max": {}},
    ),
    (
        "db.client.connection.idle.min",
        "{connection}",
        "The minimum number of idle open connections allowed.",
        {"pool_min": {}},
    ),
    (
        "db.client.connection.max",
        "{connection}",
        "The maximum number of open connections allowed.",
        {"pool_max": {}},
    ),
    (
        "db.client.connection.pending_requests",
        "{request}",
        "The number of current pending requests for an open connection.",
        {"requests_waiting": {}},
    ),
)
_COUNTERS: tuple[tuple[str, str, str, Mapping[str, _Attributes]], ...] = (
    (
        "db.client.connection.timeouts",
        "{timeout}",
        "The number of connection timeouts that have occurred trying to obtain a "
        "connection from the pool.",
        {"requests_timeouts": {}},
    ),
)
#: Histograms: (``Pool.add_listener`` kind, name, description).
_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    (
        "connect",
        "db.client.connection.create_time",
        "The time it took to create a new connection.",
    ),
    (
        "wait",
        "db.client.connection.wait_time",
        "The time it took to obtain an open connection from the pool.",
    ),
    (
        "use",
        "db.client.connection.use_time",
        "The time between borrowing a connection and returning it to the pool.",
    ),
)


class _PoolMetrics:
    """The instruments of one meter provider, and the pools they report.

    One per provider: asked for the same instruments again, a meter gives
    back the ones it has (the SDK does), without the new callbacks.
    """

    def __init__(self, meter: Meter) -> None:
        # Each pool with its attributes and its listener (kept, to be removed).
        self._pools: weakref.WeakKeyDictionary[Pool, tuple[_Attributes, _Listener]] = (
            weakref.WeakKeyDictionary()
        )
        # Guards _pools against a pool added while a collection copies it.
        self._lock = threading.Lock()
        self._histograms = {
            kind: _create_histogram(meter, name, description)
            for kind, name, description in _HISTOGRAMS
        }
        for name, unit, description, readings in _UP_DOWN_COUNTERS:
            meter.create_observable_up_down_counter(
                name, callbacks=[self._observer(readings)], unit=unit, description=description
            )
        for name, unit, description, readings in _COUNTERS:
            meter.create_observable_counter(
                name, callbacks=[self._observer(readings)], unit=unit, description=description
            )

    def add(self, pool: Pool, name: str) -> None:
        """Report ``pool`` under ``name``; nothing if it is reported already.

        Called under the lock that makes Django's pools: attaches, reads nothing.
        """
        # The listener is attached under the lock too, so that a concurrent
        # remove_all() finds every pool it must detach from. (The pool's lock,
        # taken inside, is never held while this one is taken.)
        with self._lock:
            if pool in self._pools:
                return
            attributes = {POOL_NAME: name}
            listener = partial(self._record, attributes)
            self._pools[pool] = (attributes, listener)
            pool.add_listener(listener)

    def remove_all(self) -> None:
        with self._lock:
            for pool, (_, listener) in list(self._pools.items()):
                pool.remove_listener(listener)
            self._pools.clear()

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at fork(): it never releases
        # it here. A dict update is atomic under the GIL, so _pools is whole,
        # and the pools keep their listeners in the child.
        self._lock = threading.Lock()

    def _record(self, attributes: _Attributes, kind: str, seconds: float) -> None:
        histogram = self._histograms.get(kind)
        if histogram is not None:
            histogram.record(seconds, attributes)

    def _observer(
        self, readings: Mapping[str, _Attributes]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback observing each ``get_stats()`` key of ``readings``, per pool name."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            # Summed by name: while Django replaces a pool, the old one may be
            # open a moment longer, and two points with the same attributes
            # would leave only the last.
            totals: dict[tuple[str, str], int] = {}
            for name, stats in self._live_stats():
                for key in readings:
                    totals[name, key] = totals.get((name, key), 0) + stats[key]
            return [
                Observation(value, {POOL_NAME: name, **readings[key]})
                for (name, key), value in totals.items()
            ]

        return observe

    def _live_stats(self) -> Iterator[tuple[str, dict[str, int]]]:
        """The name and ``get_stats()`` of every open pool reported; never raises."""
        with self._lock:
            reported = [
                (pool, attributes[POOL_NAME]) for pool, (attributes, _) in self._pools.items()
            ]
        for pool, name in reported:
            if pool.closed:
                continue  # closed or replaced; weakly held, it goes when collected
            try:
                stats = pool.get_stats()
            except Exception:
                # Raised into the SDK it would cost every pool this collection.
                logger.exception("opentelemetry: reading the stats of pool %r failed", name)
                continue
            yield name, stats


def _create_histogram(meter: Meter, name: str, description: str) -> Histogram:
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=BOUNDS
        )
    except TypeError:  # opentelemetry-api < 1.30 cannot advise boundaries
        return meter.create_histogram(name, unit="s", description=description)


# One _PoolMetrics per meter provider; None stands for the global one, as
# resolved at the first call (the API's proxy until an SDK is set, which then
# forwards to it), so that a later call finds the same instruments.
_metrics: dict[MeterProvider | None, _PoolMetrics] = {}
# Those to which every Django pool goes (see _django_pool_made); a tuple,
# replaced whole, read by the hook without _lock.
_django_targets: tuple[_PoolMetrics, ...] = ()
_lock = threading.Lock()


def _metrics_for(meter_provider: MeterProvider | None) -> _PoolMetrics:
    with _lock:
        found = _metrics.get(meter_provider)
        if found is None:
            meter = metrics.get_meter(
                "django_pool", __version__, meter_provider, schema_url=SCHEMA_URL
            )
            found = _metrics[meter_provider] = _PoolMetrics(meter)
        return found


def instrument(meter_provider: MeterProvider | None = None) -> None:
    """Report every Django pool of this process: those made already and each one made later.

    ``meter_provider``: where the instruments are made (default: the global
    provider, ``opentelemetry.metrics.get_meter_provider()``). Calling again
    with the same provider does nothing more; with another provider, the
    pools are reported to both.
    """
    from ..backends import pools

    global _django_targets
    target = _metrics_for(meter_provider)
    with _lock:
        if target not in _django_targets:
            _django_targets = (*_django_targets, target)
    # The first call hears of the pools made so far here; later calls find
    # them in active_pools(). A pool met both ways is added once.
    pools.when_pool_made(_django_pool_made)
    for alias, pool in pools.active_pools().items():
        target.add(pool, alias)


def instrument_pool(pool: Pool, meter_provider: MeterProvider | None = None) -> None:
    """Report one engine pool, under ``pool.name``, until it is closed or collected.

    For pools made without Django (a Django pool is reported by
    :func:`instrument`). Make the pool with ``open=False`` and open it after
    this call for ``create_time`` to see its first connections too. Calling
    again does nothing more.
    """
    _metrics_for(meter_provider).add(pool, pool.name)


def uninstrument() -> None:
    """Stop reporting: detach from every pool, for every meter provider.

    Django's pools made later are no longer reported either. The instruments
    stay in their meters (the API cannot remove them) and report nothing; a
    later :func:`instrument` with the same provider uses them again. Mostly
    for tests.
    """
    global _django_targets
    with _lock:
        _django_targets = ()
        reporting = list(_metrics.values())
    for pool_metrics in reporting:
        pool_metrics.remove_all()


def _django_pool_made(alias: str, pool: Pool) -> None:
    # Called under the lock that makes Django's pools: attach, nothing more.
    for target in _django_targets:
        target.add(pool, alias)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # possibly held by another thread at fork()
    for pool_metrics in _metrics.values():
        pool_metrics.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
