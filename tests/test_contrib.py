"""django_pool.contrib: the Prometheus collector and the JSON stats view, on real pools.

The pools are the pooled backends' own (the ``default`` alias on PostgreSQL,
``mysql`` when a server answers), made to do real work through the ORM and
the engine; what the collector exports and what the view answers are then
compared with ``get_stats()`` and the pool's histograms.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.utils import load_backend
from django.test import Client, override_settings
from django.urls import reverse
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from django_pool import PoolTimeout, get_stats
from django_pool.backends import close_pools, get_pool, pools
from django_pool.contrib import views
from django_pool.contrib.prometheus import DjangoPoolCollector, register
from tests.databases import ALIASES, django_db
from tests.djangoapp.models import Item
from tests.polling import wait_until

pytestmark = django_db

# What each metric must report, written out here rather than taken from the
# module, so that a metric wired to the wrong key fails.
GAUGES = {
    "django_pool_size": "pool_size",
    "django_pool_idle_connections": "pool_available",
    "django_pool_in_use_connections": "pool_in_use",
    "django_pool_waiting_requests": "requests_waiting",
    "django_pool_min_size": "pool_min",
    "django_pool_max_size": "pool_max",
}
COUNTERS = {
    "django_pool_requests_total": "requests_num",
    "django_pool_request_errors_total": "requests_errors",
    "django_pool_connections_opened_total": "connections_num",
    "django_pool_connection_errors_total": "connections_errors",
    "django_pool_connections_lost_total": "connections_lost",
    "django_pool_leaks_detected_total": "leaks_detected",
    "django_pool_connections_reclaimed_total": "connections_reclaimed",
    "django_pool_sessions_reset_total": "sessions_reset",
    "django_pool_sessions_discarded_total": "sessions_discarded",
}
HISTOGRAMS = {"django_pool_wait_seconds": "wait", "django_pool_usage_seconds": "usage"}
FAMILIES = {
    *((name, "gauge") for name in GAUGES),
    *((name.removesuffix("_total"), "counter") for name in COUNTERS),
    *((name, "histogram") for name in HISTOGRAMS),
}
STATS_KEYS = {
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "pool_in_use",
    "connections_opening",
    "requests_waiting",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "requests_timeouts",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
    "leaks_detected",
    "connections_reclaimed",
    "sessions_reset",
    "sessions_discarded",
}


def end_request(alias: str = "default") -> None:
    """What Django does at the end of a request (CONN_MAX_AGE=0: the connection goes back)."""
    connections[alias].close_if_unusable_or_obsolete()


class Scrape:
    """One ``generate_latest`` of a registry, parsed back with prometheus_client's parser."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.text = generate_latest(registry).decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, alias: str = "default", **labels: str) -> float:
        return self.samples[(name, frozenset({"alias": alias, **labels}.items()))]

    def buckets(self, name: str, alias: str = "default") -> list[tuple[float, float]]:
        """(le, cumulative count) of a histogram, in increasing ``le``."""
        found = [
            (float(dict(labels)["le"]), value)
            for (sample, labels), value in self.samples.items()
            if sample == f"{name}_bucket" and dict(labels)["alias"] == alias
        ]
        return sorted(found)

    def aliases(self) -> set[str]:
        return {dict(labels)["alias"] for _, labels in self.samples}


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DjangoPoolCollector())
    return registry


@pytest.fixture
def monitored() -> Iterator[Any]:
    """A second pooled alias of the same database, with leak detection at 50 ms."""
    wrapper_class = load_backend("django_pool.backends.postgresql").DatabaseWrapper
    settings_dict = {
        **connections["default"].settings_dict,
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 2, "leak_threshold": 0.05}},
    }
    wrapper = wrapper_class(settings_dict, "monitored")
    try:
        yield wrapper
    finally:
        wrapper.close()
        close_pools("monitored")


# -- Prometheus ---------------------------------------------------------------------


def test_prometheus_metrics_match_the_pool(registry):
    connections["default"].close()
    close_pools("default")  # a fresh pool: every figure below is known
    for i in range(3):  # three requests, each a checkout and a return
        Item.objects.create(name=f"item{i}")
        end_request()
    pool = get_pool("default")
    broken = pool.getconn()  # returned broken: lost, and replaced
    broken.close()
    pool.putconn(broken)
    assert Item.objects.count() == 3  # this thread now holds a connection
    held = [pool.getconn() for _ in range(pool.max_size - 1)]  # and the rest are lent
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.05)  # a request error
    waited: list[Any] = []
    waiter = threading.Thread(target=lambda: waited.append(pool.getconn(timeout=30)))
    waiter.start()
    try:
        wait_until(lambda: get_stats("default")["requests_waiting"] == 1)
        wait_until(lambda: get_stats("default")["connections_opening"] == 0)

        scrape = Scrape(registry)
        stats = get_stats("default")
        histograms = pool.get_histograms()
    finally:
        for conn in held:
            pool.putconn(conn)
        waiter.join(30)
        for conn in waited:
            pool.putconn(conn)

    assert stats["pool_in_use"] == pool.max_size == 4
    assert scrape.value("django_pool_in_use_connections") == 4
    assert scrape.value("django_pool_waiting_requests") == 1
    assert scrape.value("django_pool_idle_connections") == 0
    assert scrape.value("django_pool_max_size") == 4
    assert scrape.value("django_pool_min_size") == 1
    assert scrape.value("django_pool_requests_total") == stats["requests_num"] == 10
    assert scrape.value("django_pool_request_errors_total") == stats["requests_errors"] == 1
    assert scrape.value("django_pool_connections_lost_total") == stats["connections_lost"] == 1
    for name, key in {**GAUGES, **COUNTERS}.items():
        assert scrape.value(name) == stats[key], name

    # Every checkout that got a connection was timed, and every return.
    checkouts = stats["requests_num"] - stats["requests_errors"] - stats["requests_waiting"]
    returns = checkouts - stats["pool_in_use"]
    for name, key, count in (
        ("django_pool_wait_seconds", "wait", checkouts),
        ("django_pool_usage_seconds", "usage", returns),
    ):
        snapshot = histograms[key]
        buckets = scrape.buckets(name)
        assert [le for le, _ in buckets] == [*snapshot.bounds, math.inf]
        values = [value for _, value in buckets]
        assert values == sorted(values), "buckets must be cumulative"
        running = 0
        for value, bucket_count in zip(values, snapshot.counts, strict=True):
            running += bucket_count
            assert value == running
        assert values[-1] == scrape.value(f"{name}_count") == snapshot.count == count
        assert scrape.value(f"{name}_sum") == pytest.approx(snapshot.total)
    assert scrape.value("django_pool_wait_seconds_sum") > 0  # some requests waited
    assert scrape.value("django_pool_usage_seconds_sum") > 0


def test_prometheus_labels_each_alias_apart(registry, monitored, caplog):
    caplog.set_level(logging.INFO, logger="django_pool")
    Item.objects.count()
    end_request()
    with monitored.cursor() as cursor:  # held past leak_threshold
        cursor.execute("SET application_name = 'monitored'")  # a session change
        wait_until(lambda: get_stats("monitored")["leaks_detected"] == 1)
    monitored.close()  # the session is reset on the way back
    # PostgreSQL sessions are reset in place; count one that could not be, as
    # the Django layer does when it closes and replaces one.
    pools.entry_for(monitored).count_session(reset=False)

    scrape = Scrape(registry)
    assert {"default", "monitored"} <= scrape.aliases()
    assert scrape.value("django_pool_leaks_detected_total", "monitored") == 1
    assert scrape.value("django_pool_sessions_reset_total", "monitored") == 1
    assert scrape.value("django_pool_sessions_discarded_total", "monitored") == 1
    assert scrape.value("django_pool_max_size", "monitored") == 2
    assert scrape.value("django_pool_max_size", "default") == 4
    every = get_stats()
    for alias in ("default", "monitored"):
        for name, key in {**GAUGES, **COUNTERS}.items():
            assert scrape.value(name, alias) == every[alias][key], (alias, name)

    # The leak was logged with the stack of the code that took the connection.
    [warning] = [r for r in caplog.records if "leak_threshold" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "test_prometheus_labels_each_alias_apart" in warning.getMessage()
    assert any(r.levelno == logging.INFO and "came back" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("alias", ALIASES)
def test_prometheus_reports_a_connection_held_by_a_request(registry, alias):
    end_request(alias)
    before = Scrape(registry).value("django_pool_requests_total", alias)
    Item.objects.using(alias).count()
    scrape = Scrape(registry)
    assert scrape.value("django_pool_in_use_connections", alias) == 1
    assert scrape.value("django_pool_requests_total", alias) == before + 1
    end_request(alias)
    assert Scrape(registry).value("django_pool_in_use_connections", alias) == 0


def test_prometheus_families_have_types_and_help(registry):
    Item.objects.count()
    scrape = Scrape(registry)
    assert {(f.name, f.type) for f in scrape.families.values()} == FAMILIES
    for family in scrape.families.values():
        assert family.documentation.strip(), family.name
    for line in scrape.text.splitlines():
        if not line.startswith("#"):
            assert line.startswith("django_pool_"), line


def test_describe_names_the_metrics_without_reading_a_pool(monkeypatch):
    def no_reading(*args: Any) -> Any:
        raise AssertionError("describe() must not read the pools")

    collector = DjangoPoolCollector()
    Item.objects.count()
    collected = {(m.name, m.type) for m in collector.collect()}
    monkeypatch.setattr(pools, "get_stats", no_reading)
    monkeypatch.setattr(pools, "active_pools", no_reading)
    described = list(collector.describe())
    assert {(m.name, m.type) for m in described} == collected == FAMILIES
    assert all(not m.samples for m in described)

    registry = CollectorRegistry()
    registry.register(collector)  # registering uses describe()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(DjangoPoolCollector())  # the names are known, so clashes are seen


def test_register_twice_registers_once(registry):
    fresh = CollectorRegistry()
    first = register(fresh)
    assert register(fresh) is first
    Item.objects.count()
    text = generate_latest(fresh).decode()
    assert text.count("# TYPE django_pool_size gauge") == 1
    assert 'django_pool_in_use_connections{alias="default"} 1.0' in text
    fresh.unregister(first)
    assert register(fresh) is first  # put back after an unregister
    assert "django_pool_size" in generate_latest(fresh).decode()

    default = register()  # prometheus_client's global registry
    try:
        assert register() is default
        assert register(REGISTRY) is default
        assert "django_pool_size" in generate_latest().decode()
    finally:
        REGISTRY.unregister(default)


# -- the JSON view --------------------------------------------------------------------

WITH_AUTH = {
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    # Sessions in the cookie: no django.contrib.sessions table needed.
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
}
TOKEN = "s3cret-Token-for-tests"


@pytest.fixture
def url() -> str:
    return reverse("django_pool_stats")


@pytest.fixture
def auth_client() -> Iterator[Client]:
    with override_settings(**WITH_AUTH):
        yield Client()


def user(username: str, superuser: bool = False) -> Any:
    from django.contrib.auth.models import User

    make = User.objects.create_superuser if superuser else User.objects.create_user
    return make(username, f"{username}@example.com", "a-password")


def body(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)  # type: ignore[no-any-return]


def assert_forbidden(response: Any) -> None:
    assert response.status_code == 403
    # The same words for everybody: nothing on what would let the caller in
    # (which permission, whether a token is set up).
    assert body(response) == {"error": views.FORBIDDEN}
    for hint in ("TOKEN", "Bearer", "superuser", "permission", "view_pool_stats"):
        assert hint not in views.FORBIDDEN


def assert_stats(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    data = body(response)
    assert data["pid"] == os.getpid()
    assert set(data["default"]) >= STATS_KEYS
    assert data["default"]["pool_size"] >= 1
    assert data["default"]["pool_max"] == 4
    assert "no-store" in response["Cache-Control"]
    # Stats only: no settings dict, no password.
    text = response.content.decode()
    assert "PASSWORD" not in text
    password = settings.DATABASES["default"]["PASSWORD"]
    assert not password or password not in text
    assert "DATABASES" not in text and "OPTIONS" not in text
    for alias, stats in data.items():
        if alias != "pid":
            assert set(stats) <= STATS_KEYS | {"last_connection_error"}, alias
    return data


def test_view_is_closed_by_default(client, url):
    Item.objects.count()  # the pool exists
    end_request()
    assert_forbidden(client.get(url))  # no auth middleware: no request.user
    assert_forbidden(client.get(url, HTTP_AUTHORIZATION="Bearer anything"))
    assert_forbidden(client.get(url, HTTP_AUTHORIZATION="Bearer "))
    with override_settings(DJANGO_POOL_STATS_TOKEN=""):  # empty: still off
        assert_forbidden(client.get(url, HTTP_AUTHORIZATION="Bearer "))


def test_view_refuses_anonymous_and_plain_users(auth_client, url):
    assert_forbidden(auth_client.get(url))
    auth_client.force_login(user("plain"))
    assert_forbidden(auth_client.get(url))


def test_view_serves_a_superuser(auth_client, url):
    auth_client.force_login(user("root", superuser=True))
    data = assert_stats(auth_client.get(url))
    assert set(data) == {"pid", *get_stats()}
    head = auth_client.head(url)
    assert head.status_code == 200 and head.content == b""


def test_view_refuses_an_inactive_superuser(auth_client, url):
    root = user("root", superuser=True)
    auth_client.force_login(root)
    root.is_active = False
    root.save()
    assert_forbidden(auth_client.get(url))


def test_view_with_a_bearer_token(client, url):
    Item.objects.count()
    end_request()
    with override_settings(DJANGO_POOL_STATS_TOKEN=TOKEN):
        assert_stats(client.get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
        assert_stats(client.get(url, HTTP_AUTHORIZATION=f"bearer {TOKEN}"))
        assert_forbidden(client.get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x"))
        assert_forbidden(client.get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN[:-1]}"))
        assert_forbidden(client.get(url, HTTP_AUTHORIZATION=f"Basic {TOKEN}"))
        assert_forbidden(client.get(url, HTTP_AUTHORIZATION=TOKEN))
        assert_forbidden(client.get(url))
    with override_settings(DJANGO_POOL_STATS_TOKEN=12345), pytest.raises(ImproperlyConfigured):
        client.get(url, HTTP_AUTHORIZATION="Bearer 12345")


def test_a_token_read_from_a_file_matches_without_its_newline(client, url):
    Item.objects.count()
    end_request()
    with override_settings(DJANGO_POOL_STATS_TOKEN=f"{TOKEN}\n"):
        assert_stats(client.get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))


# Every alias: Django 6.1's own checks look at every database.
@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("token", ["x", "short-token", " 0123456789abcde "])
def test_a_short_token_is_refused_by_a_system_check(client, url, token):
    from django.core import checks

    with override_settings(DJANGO_POOL_STATS_TOKEN=token):
        errors = [m for m in checks.run_checks() if m.id == "django_pool.E002"]
        assert len(errors) == 1 and "at least 16" in errors[0].msg
        assert token.strip() not in errors[0].msg  # the length, never the value
        with pytest.raises(ImproperlyConfigured):
            client.get(url, HTTP_AUTHORIZATION=f"Bearer {token.strip()}")
    with override_settings(DJANGO_POOL_STATS_TOKEN=TOKEN):
        assert not [m for m in checks.run_checks() if m.id == "django_pool.E002"]


def test_view_with_a_permission(auth_client, url):
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    permission = Permission.objects.create(
        codename="view_pool_stats",
        name="Can view the connection pool stats",
        content_type=ContentType.objects.get_for_model(Item),
    )
    granted, other = user("operator"), user("plain")
    granted.user_permissions.add(permission)
    with override_settings(DJANGO_POOL_STATS_PERMISSION="djangoapp.view_pool_stats"):
        auth_client.force_login(other)
        assert_forbidden(auth_client.get(url))
        auth_client.force_login(granted)
        assert_stats(auth_client.get(url))
    # Without the setting the permission is not enough: superusers only.
    assert_forbidden(auth_client.get(url))


def test_view_allows_only_get_and_head(auth_client, url):
    auth_client.force_login(user("root", superuser=True))
    for method in ("post", "put", "patch", "delete"):
        response = getattr(auth_client, method)(url)
        assert response.status_code == 405, method
        assert response["Allow"] == "GET, HEAD"
        assert "error" in body(response)
    with override_settings(DJANGO_POOL_STATS_TOKEN=TOKEN):
        response = auth_client.post(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 405
