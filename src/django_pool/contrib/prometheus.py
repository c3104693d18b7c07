"""Prometheus metrics for the Django pools (``pip install django-pool[prometheus]``).

:func:`register` exports every pool of the process, under the metric names
below; every sample carries the label ``alias`` (the ``DATABASES`` key), and
an alias appears once its pool was made by the first query in the process.
Without ``PROMETHEUS_MULTIPROC_DIR`` a scrape sees the process that answers
it; with it (prometheus_client's multiprocess mode) a scrape through any
worker sees the pools of every live worker. See "Several worker processes"
below.

Gauges, from ``get_stats()``:

* ``django_pool_size`` (``pool_size``: open or being opened),
  ``django_pool_idle_connections`` (``pool_available``),
  ``django_pool_in_use_connections`` (``pool_in_use``),
  ``django_pool_waiting_requests`` (``requests_waiting``),
  ``django_pool_min_size`` (``pool_min``), ``django_pool_max_size`` (``pool_max``).

Counters, from ``get_stats()``:

* ``django_pool_requests_total`` (``requests_num``),
  ``django_pool_request_errors_total`` (``requests_errors``: timeouts and
  ``TooManyRequests``), ``django_pool_connections_opened_total``
  (``connections_num``), ``django_pool_connection_errors_total``
  (``connections_errors``), ``django_pool_connections_lost_total``
  (``connections_lost``), ``django_pool_leaks_detected_total``
  (``leaks_detected``), ``django_pool_connections_reclaimed_total``
  (``connections_reclaimed``), ``django_pool_sessions_reset_total``
  (``sessions_reset``), ``django_pool_sessions_discarded_total``
  (``sessions_discarded``).

Histograms, from ``Pool.get_histograms()`` (seconds; ``_bucket`` with ``le``,
``_sum``, ``_count``; the bounds of :data:`django_pool.engine.histogram.BOUNDS`):

* ``django_pool_wait_seconds``: how long each checkout waited for a connection
  (0 when one was idle);
* ``django_pool_usage_seconds``: how long each connection was lent, checkout
  to return.

Register once per process, for example in an ``AppConfig.ready()`` or in the
root URL conf (:func:`register` may be called any number of times)::

    from django_pool.contrib.prometheus import register

    register()  # into prometheus_client.REGISTRY

Then expose that registry as usual. With django-prometheus (its ``/metrics``
view serves ``prometheus_client.REGISTRY``, or the multiprocess files when
``PROMETHEUS_MULTIPROC_DIR`` is set)::

    urlpatterns = [
        ...,
        path("", include("django_prometheus.urls")),
    ]

With prometheus_client alone, a view of your own::

    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def metrics(request):
        return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)

or its WSGI app in front of Django's, in ``wsgi.py``::

    from django.core.wsgi import get_wsgi_application
    from prometheus_client import make_wsgi_app

    django_app, metrics_app = get_wsgi_application(), make_wsgi_app()

    def application(environ, start_response):
        if environ.get("PATH_INFO") == "/metrics":
            return metrics_app(environ, start_response)
        return django_app(environ, start_response)

In a single process, :class:`DjangoPoolCollector` (what :func:`register`
registers) reads the pools at each scrape and costs nothing in between.

Several worker processes (gunicorn, uWSGI)
------------------------------------------

A scrape through the web server reaches one worker. To see them all in one
scrape, use prometheus_client's multiprocess mode:

1. Set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory, the same for the
   master and every worker, before they start (prometheus_client reads it
   when it is imported); empty it at each deployment.
2. Call :func:`register` as above, in every process (``AppConfig.ready()``
   does). Seeing the variable, it also makes the process write its own
   figures into that directory with prometheus_client's metric classes, under
   the same names and labels: the histograms at each checkout and return (a
   ``Pool.add_listener`` listener on every pool, made already or later), the
   gauges and counters from a sample of ``get_stats()`` every ``interval``
   seconds (:data:`SAMPLE_INTERVAL`, 1 s; ``register(interval=...)``, the last
   call's value wins) by a daemon thread, ``django-pool-prometheus``, and
   again just before a fork and at exit.
3. Serve the directory, not the registry: a fresh registry per scrape, with
   ``MultiProcessCollector``::

       from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
       from prometheus_client.multiprocess import MultiProcessCollector

       def metrics(request):
           registry = CollectorRegistry()
           MultiProcessCollector(registry)
           return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

   (django-prometheus's view does this when the variable is set.)
4. Tell prometheus_client when a worker dies, in ``gunicorn.conf.py``::

       from prometheus_client import multiprocess

       def child_exit(server, worker):
           multiprocess.mark_process_dead(worker.pid)

   Without it the gauges of dead workers stay in the sums.

What a scrape then shows, over the live processes:

* every gauge is ``livesum``, the sum over live processes: connections open,
  idle, in use and requests waiting are the totals of the fleet (compare
  ``django_pool_size`` with the server's ``max_connections``), and
  ``django_pool_max_size`` is the most sessions the fleet may open, the sum of
  each process's ``max_size``, ``django_pool_min_size`` the sessions it keeps
  open at least; a process whose pool is not made yet adds nothing. A process
  that exits, or whose alias's pool is closed, no longer counts.
* counters are summed over every process that ever wrote, dead ones included,
  as Prometheus expects of a counter. Each sample adds what the pool counted
  since the previous one: a pool that replaces another starts from zero, a
  drop (``pop_stats()``) counts as a restart from zero, and what a pool
  counted in its last interval before being closed or replaced is lost; so is
  a killed (``SIGKILL``) worker's last interval.
* histograms are summed over every process, as counters.

With ``gunicorn --preload`` the master imports the application, and may
register and make pools, before it forks: each worker starts a sampler of its
own (threads do not survive ``fork()``); the pools it inherited keep their
listeners and count again from zero in the child, so that nothing the master
counted is counted again.

Caveats:

* **Do not call** ``Pool.pop_stats()`` **on a pool these metrics report.**
  ``pop_stats`` zeroes the counters; Prometheus takes the drop for a restart
  and the increments between the last scrape (or sample) and the reset are
  lost. (A pool replaced by a new one, after ``close_pools()`` or a settings
  change, also starts its counters at zero: that is an ordinary counter
  reset.) The histograms are never reset.
* In multiprocess mode the gauges and counters are as old as the latest
  sample, up to ``interval`` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from functools import partial
from itertools import accumulate

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import (
    REGISTRY,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..backends import pools
from ..engine import Pool
from ..engine.histogram import BOUNDS

__all__ = [
    "COUNTERS",
    "GAUGES",
    "HISTOGRAMS",
    "SAMPLE_INTERVAL",
    "DjangoPoolCollector",
    "register",
]

logger = logging.getLogger("django_pool")

LABELS = ("alias",)

#: Seconds between two samples of ``get_stats()`` in multiprocess mode (the
#: default of ``register(interval=...)``): how old the gauges and counters a
#: scrape shows may be.
SAMPLE_INTERVAL = 1.0

#: Gauges: (metric name, ``get_stats()`` key, help).
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("django_pool_size", "pool_size", "Connections open or being opened."),
    (
        "django_pool_idle_connections",
        "pool_available",
        "Open connections not in use, ready to be lent.",
    ),
    ("django_pool_in_use_connections", "pool_in_use", "Connections lent out."),
    (
        "django_pool_waiting_requests",
        "requests_waiting",
        "Requests waiting for a connection now.",
    ),
    ("django_pool_min_size", "pool_min", "Connections kept open even when idle (min_size)."),
    ("django_pool_max_size", "pool_max", "Most connections open at once (max_size)."),
)

#: Counters: (metric name without ``_total``, ``get_stats()`` key, help).
COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "django_pool_requests",
        "requests_num",
        "Requests for a connection, including those that failed.",
    ),
    (
        "django_pool_request_errors",
        "requests_errors",
        "Requests that got no connection: timed out, or refused because max_waiting "
        "requests were already waiting.",
    ),
    ("django_pool_connections_opened", "connections_num", "Connections opened."),
    ("django_pool_connection_errors", "connections_errors", "Failed connection attempts."),
    (
        "django_pool_connections_lost",
        "connections_lost",
        "Connections found broken: returned broken, or failing the check before being lent.",
    ),
    (
        "django_pool_leaks_detected",
        "leaks_detected",
        "Connections held longer than leak_threshold.",
    ),
    (
        "django_pool_connections_reclaimed",
        "connections_reclaimed",
        "Connections taken back from a borrower whose thread ended without returning them.",
    ),
    (
        "django_pool_sessions_reset",
        "sessions_reset",
        "Returned connections whose session state was reset.",
    ),
    (
        "django_pool_sessions_discarded",
        "sessions_discarded",
        "Returned connections closed because their session state could not be reset.",
    ),
)

#: Histograms: (metric name, ``Pool.get_histograms()`` key, help).
HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    (
        "django_pool_wait_seconds",
        "wait",
        "Time a request waited for a connection (0 when one was idle).",
    ),
    (
        "django_pool_usage_seconds",
        "usage",
        "Time a connection was lent, from checkout to return.",
    ),
)

#: The ``HISTOGRAMS`` key of each timing kind of ``Pool.add_listener`` that has
#: a histogram here (``"connect"`` has none).
_HISTOGRAM_OF_TIMING = {"wait": "wait", "use": "usage"}


class DjangoPoolCollector:
    """A ``prometheus_client`` collector of every Django pool of this process.

    ``registry.register(DjangoPoolCollector())`` works too, but :func:`register`
    does it at most once per registry. :meth:`describe` names the metrics
    without reading any pool, so registering never touches the database.
    """

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (what the registry checks for clashes)."""
        gauges, counters, histograms = _families()
        yield from gauges
        yield from counters
        yield from histograms

    def collect(self) -> Iterator[Metric]:
        """The current samples, one per pool and metric, labelled with the alias."""
        gauges, counters, histograms = _families()
        stats_by_alias = pools.get_stats()
        live = pools.active_pools()
        for alias in sorted(stats_by_alias):
            stats = stats_by_alias[alias]
            for gauge, (_, key, _) in zip(gauges, GAUGES, strict=True):
                if key in stats:
                    gauge.add_metric([alias], stats[key])
            for counter, (_, key, _) in zip(counters, COUNTERS, strict=True):
                if key in stats:
                    counter.add_metric([alias], stats[key])
            pool = live.get(alias)
            if pool is None:  # closed since get_stats() was read
                continue
            snapshots = pool.get_histograms()
            for histogram, (_, key, _) in zip(histograms, HISTOGRAMS, strict=True):
                snapshot = snapshots[key]
                cumulative = list(accumulate(snapshot.counts))
                buckets = [
                    (repr(float(bound)), float(count))
                    for bound, count in zip(snapshot.bounds, cumulative, strict=False)
                ]
                buckets.append(("+Inf", float(cumulative[-1])))
                histogram.add_metric([alias], buckets, snapshot.total)
        yield from gauges
        yield from counters
        yield from histograms


def _families() -> tuple[
    list[GaugeMetricFamily], list[CounterMetricFamily], list[HistogramMetricFamily]
]:
    return (
        [GaugeMetricFamily(name, text, labels=LABELS) for name, _, text in GAUGES],
        [CounterMetricFamily(name, text, labels=LABELS) for name, _, text in COUNTERS],
        [HistogramMetricFamily(name, text, labels=LABELS) for name, _, text in HISTOGRAMS],
    )


class _MultiProcessWriter:
    """This process's pool figures, written with prometheus_client's metric classes.

    In multiprocess mode those classes keep their values in files of
    ``PROMETHEUS_MULTIPROC_DIR``, one set per process, which
    ``MultiProcessCollector`` adds up at each scrape. There is one writer per
    process (forked children carry on with their copy); its metrics are in no
    registry, so the same names stay free for :class:`DjangoPoolCollector`.

    * Histograms: a timing listener on every pool observes each wait and
      usage as it happens (a prometheus_client ``Histogram`` takes values one
      by one; its buckets cannot be set from ``get_histograms()``).
    * Gauges (all ``livesum``) are set, and counters increased by what the
      pool counted since, at each sample of ``get_stats()``: every
      ``interval`` seconds in a daemon thread, just before a fork (what the
      child inherits is then what was written) and at exit (a worker's last
      counts). A ``Counter`` can only be increased, hence the increments.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._gauges = {
            key: Gauge(name, text, LABELS, registry=None, multiprocess_mode="livesum")
            for name, key, text in GAUGES
        }
        self._counters = {
            key: Counter(name, text, LABELS, registry=None) for name, key, text in COUNTERS
        }
        self._histograms = {
            key: Histogram(name, text, LABELS, registry=None, buckets=BOUNDS)
            for name, key, text in HISTOGRAMS
        }
        # Each alias's pool at the last sample and its counters then: the next
        # increments are measured from them.
        self._sampled: dict[str, tuple[Pool, dict[str, int]]] = {}
        # Taken by every sample, and held across fork() (see _before_fork).
        self._lock = threading.Lock()
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._lock.release,
            after_in_child=self._after_fork_in_child,
        )
        atexit.register(self.sample)
        pools.when_pool_made(self._pool_made)
        self._start_sampler()

    def _pool_made(self, alias: str, pool: Pool) -> None:
        # Under the lock that makes pools: listen, nothing more (a forked
        # child's pool keeps its listeners).
        pool.add_listener(partial(self._observe, alias))

    def _observe(self, alias: str, kind: str, seconds: float) -> None:
        key = _HISTOGRAM_OF_TIMING.get(kind)
        if key is not None:
            self._histograms[key].labels(alias).observe(seconds)

    def _start_sampler(self) -> None:
        thread = threading.Thread(
            target=self._sample_forever, name="django-pool-prometheus", daemon=True
        )
        thread.start()

    def _sample_forever(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                logger.exception("prometheus: sampling the pools' stats failed")
            time.sleep(self.interval)

    def sample(self) -> None:
        """Write every pool's gauges, and its counters' increments since the last sample."""
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        before = pools.active_pools()
        stats_by_alias = pools.get_stats()
        after = pools.active_pools()
        for alias in self._sampled.keys() - after.keys():
            # Its pool was closed (close_pools): this process holds nothing for it now.
            for gauge in self._gauges.values():
                gauge.labels(alias).set(0)
            del self._sampled[alias]
        for alias, stats in stats_by_alias.items():
            pool = after.get(alias)
            if pool is None or before.get(alias) is not pool:
                continue  # replaced while being read: left to the next sample
            for key, gauge in self._gauges.items():
                gauge.labels(alias).set(stats[key])
            sampled_pool, previous = self._sampled.get(alias, (pool, {}))
            if sampled_pool is not pool:
                previous = {}  # a new pool, counting from zero
            for key, counter in self._counters.items():
                increase = stats[key] - previous.get(key, 0)
                if increase < 0:  # zeroed by pop_stats(): counting from zero again
                    increase = stats[key]
                if increase:
                    counter.labels(alias).inc(increase)
            self._sampled[alias] = (pool, {key: stats[key] for key in self._counters})

    def _before_fork(self) -> None:
        # Held until the fork is over, so that the child's copy of the files
        # is never caught half written by the sampler; sampled now, so that
        # what the child inherits as its baseline is what this process wrote.
        self._lock.acquire()
        try:
            self._sample_locked()
        except Exception:
            logger.exception("prometheus: sampling the pools' stats before fork() failed")

    def _after_fork_in_child(self) -> None:
        self._lock.release()
        # The engine's and the backends' fork hooks, registered before this
        # one (at import) and so run before it, have started every inherited
        # pool's counters again at zero; the pools keep their listeners.
        self._sampled = {
            alias: (pool, dict.fromkeys(previous, 0))
            for alias, (pool, previous) in self._sampled.items()
        }
        self._start_sampler()


_registered: weakref.WeakKeyDictionary[CollectorRegistry, DjangoPoolCollector] = (
    weakref.WeakKeyDictionary()
)
_register_lock = threading.Lock()
_writer: _MultiProcessWriter | None = None


def register(
    registry: CollectorRegistry = REGISTRY, *, interval: float = SAMPLE_INTERVAL
) -> DjangoPoolCollector:
    """Register a :class:`DjangoPoolCollector` with ``registry``, once.

    Calling it again with the same registry returns the collector already
    there (and puts it back if it was unregistered since). A clash with
    metrics registered by someone else raises ``ValueError``, as
    ``registry.register`` does.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, the first call in a process also
    starts writing the process's figures for ``MultiProcessCollector`` (see the
    module's documentation): the gauges and counters every ``interval``
    seconds (the last call's value counts).
    """
    global _writer
    with _register_lock:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            if _writer is None:
                _writer = _MultiProcessWriter(interval)
            else:
                _writer.interval = interval
        collector = _registered.get(registry)
        if collector is None:
            collector = DjangoPoolCollector()
            registry.register(collector)
            _registered[registry] = collector
        else:
            # Unregistered since? Put it back; otherwise its names clash with itself.
            with contextlib.suppress(ValueError):
                registry.register(collector)
        return collector
