"""Prometheus metrics for this process's Django pools (``pip install django-pool[prometheus]``).

:class:`DjangoPoolCollector` is a ``prometheus_client`` custom collector: at
each scrape it reads :func:`django_pool.backends.get_stats` and each pool's
histograms, so it costs nothing between scrapes. Every sample carries the
label ``alias`` (the ``DATABASES`` key); an alias appears once its pool was
made by the first query in this process.

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
``_sum``, ``_count``):

* ``django_pool_wait_seconds``: how long each checkout waited for a connection
  (0 when one was idle);
* ``django_pool_usage_seconds``: how long each connection was lent, checkout
  to return.

Register it once per process, for example in an ``AppConfig.ready()`` or in
the root URL conf (:func:`register` may be called any number of times)::

    from django_pool.contrib.prometheus import register

    register()  # into prometheus_client.REGISTRY

Then expose that registry as usual. With django-prometheus (its ``/metrics``
view serves ``prometheus_client.REGISTRY``)::

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

Caveats:

* **Do not call** ``Pool.pop_stats()`` **on a pool this collector reports.**
  ``pop_stats`` zeroes the counters; Prometheus takes the drop for a restart
  and the increments between the last scrape and the reset are lost. (A pool
  replaced by a new one, after ``close_pools()`` or a settings change, also
  starts its counters at zero: that is an ordinary counter reset.) The
  histograms are never reset.
* The figures are **this process's** pools. With several worker processes
  (gunicorn, uWSGI), a scrape of ``/metrics`` through the web server reaches
  one worker; scrape each worker (say, ``prometheus_client.start_http_server``
  on a port per worker) to see them all. prometheus_client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``) serves only what its own metric classes wrote
  to disk, so custom collectors such as this one are not exported in that mode.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client.core import (
    REGISTRY,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..backends import pools

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "DjangoPoolCollector", "register"]

LABELS = ("alias",)

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


_registered: weakref.WeakKeyDictionary[CollectorRegistry, DjangoPoolCollector] = (
    weakref.WeakKeyDictionary()
)
_register_lock = threading.Lock()


def register(registry: CollectorRegistry = REGISTRY) -> DjangoPoolCollector:
    """Register a :class:`DjangoPoolCollector` with ``registry``, once.

    Calling it again with the same registry returns the collector already
    there (and puts it back if it was unregistered since). A clash with
    metrics registered by someone else raises ``ValueError``, as
    ``registry.register`` does.
    """
    with _register_lock:
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
