"""What a person sees when something goes wrong: errors, system checks, leak reports.

Real servers throughout. Each pool here has its own alias, so the suite's
"default" pool is never disturbed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.db import connections
from django.db.utils import OperationalError
from django.test import override_settings

from django_pool import PoolTimeout, TooManyRequests
from django_pool.backends import (
    PoolTimeoutError,
    TooManyRequestsError,
    close_pools,
    get_stats,
    pools,
)
from tests.databases import needs_mysql

# Every alias: Django 6.1's system checks ask each database's features, which
# on MySQL takes a query the first time.
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
SECRET = "s3cret-pw-do-not-log"


@contextmanager
def pooled_wrappers(
    alias: str, count: int, base: str = "default", **changes: Any
) -> Iterator[list[Any]]:
    """``count`` wrappers (as if from ``count`` threads) sharing one pool for ``alias``."""
    source = connections[base]
    pool = changes.pop("pool", {})
    settings_dict = {
        **source.settings_dict,
        **changes,
        "OPTIONS": {**source.settings_dict["OPTIONS"], "pool": pool},
    }
    wrappers = [type(source)(dict(settings_dict), alias) for _ in range(count)]
    try:
        yield wrappers
    finally:
        for wrapper in wrappers:
            wrapper.close()
        close_pools(alias)


def test_a_full_pool_says_which_database_its_limits_and_how_long_it_waited():
    pool = {"min_size": 1, "max_size": 1, "timeout": 0.3}
    with pooled_wrappers("tiny", 2, pool=pool) as (holder, other):
        holder.ensure_connection()
        with pytest.raises(PoolTimeoutError) as caught:
            other.ensure_connection()
    error = caught.value
    assert isinstance(error, OperationalError) and isinstance(error, PoolTimeout)
    message = str(error)
    assert message.startswith("DATABASES['tiny'] (postgresql database ")
    assert "after 0.3" in message  # how long it waited
    assert "1 open (min_size=1, max_size=1), 1 in use, 0 other requests waiting" in message
    assert "timeout=0.3 s, max_waiting=unlimited" in message


def test_a_database_that_refuses_gives_the_servers_reason_without_the_password(caplog):
    caplog.set_level(logging.DEBUG, logger="django_pool")
    pool = {"min_size": 1, "timeout": 1}
    with (
        pooled_wrappers("missing", 1, NAME="no_such_database", PASSWORD=SECRET, pool=pool) as (
            wrapper,
        ),
        pytest.raises(OperationalError) as caught,
    ):
        wrapper.ensure_connection()
    assert isinstance(caught.value, PoolTimeout)
    assert 'database "no_such_database" does not exist' in str(caught.value)
    assert "last connection error" in str(caught.value)
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in str(caught.value)


@needs_mysql
def test_mysql_wrong_password_is_reported_without_it(caplog):
    caplog.set_level(logging.DEBUG, logger="django_pool")
    pool = {"min_size": 1, "timeout": 1}
    with (
        pooled_wrappers("denied", 1, base="mysql", PASSWORD=SECRET, pool=pool) as (wrapper,),
        pytest.raises(PoolTimeoutError) as caught,
    ):
        wrapper.ensure_connection()
    assert "Access denied" in str(caught.value)
    assert "(using password: YES)" in str(caught.value)  # not mistaken for one
    assert SECRET not in str(caught.value)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_too_many_waiting_fails_at_once_as_an_operational_error():
    pool = {"min_size": 1, "max_size": 1, "max_waiting": 1, "timeout": 5}
    with pooled_wrappers("queue", 3, pool=pool) as (holder, waiter, third):
        holder.ensure_connection()
        waiting = threading.Thread(target=waiter.ensure_connection)
        waiting.start()
        try:
            while get_stats("queue")["requests_waiting"] < 1:
                time.sleep(0.01)
            with pytest.raises(TooManyRequestsError) as caught:
                third.ensure_connection()
        finally:
            holder.close()
            waiting.join()
        assert isinstance(caught.value, OperationalError)
        assert isinstance(caught.value, TooManyRequests)
        assert "DATABASES['queue']" in str(caught.value) and "max_waiting=1" in str(caught.value)
        waiter.close()


def check_ids(**kwargs: Any) -> list[str]:
    return [message.id for message in checks.run_checks(**kwargs)]


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_system_check_reports_bad_pool_options():
    bad = {
        **settings.DATABASES["default"],
        "OPTIONS": {"pool": {"min_size": 5, "max_size": 2}},
    }
    with override_settings(DATABASES={**settings.DATABASES, "bad": bad}):
        messages = [m for m in checks.run_checks() if m.id == "django_pool.E001"]
    assert len(messages) == 1
    assert "DATABASES['bad']['OPTIONS']['pool']" in messages[0].msg
    assert "max_size (2) must be >= min_size (5)" in messages[0].msg
    assert "django_pool.E001" not in check_ids()  # the suite's own settings are fine


def test_live_check_warns_when_the_pools_outgrow_the_server(monkeypatch):
    database_checks = {"databases": ["default"], "tags": [checks.Tags.database]}
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    assert "django_pool.W001" not in check_ids(**database_checks)
    monkeypatch.setenv("WEB_CONCURRENCY", "100000")
    messages = [m for m in checks.run_checks(**database_checks) if m.id == "django_pool.W001"]
    assert len(messages) == 1 and "x 100000 process(es)" in messages[0].msg
    assert "django_pool.W001" not in check_ids()  # never without --database


def test_live_check_adds_up_every_alias_on_the_server(monkeypatch):
    """default and its release="transaction" twin share a server: each fits, both do not."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        )
        capacity = cursor.fetchone()[0]
    connections["default"].close()
    default = settings.DATABASES["default"]
    on_server = [
        alias
        for alias, entry in settings.DATABASES.items()
        if entry.get("OPTIONS", {}).get("pool") and entry["PORT"] == default["PORT"]
        and entry["HOST"] == default["HOST"]
    ]  # fmt: skip
    assert {"default", "default_tx"} <= set(on_server)
    max_size = settings.POOL["max_size"]
    processes = capacity // (max_size * len(on_server)) + 1
    assert processes * max_size <= capacity  # one alias alone fits
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    monkeypatch.setenv("DJANGO_POOL_PROCESSES", str(processes))  # counted first
    database_checks = {"databases": ["default"], "tags": [checks.Tags.database]}
    messages = [m for m in checks.run_checks(**database_checks) if m.id == "django_pool.W001"]
    assert len(messages) == 1, messages
    assert f"x {processes} process(es)" in messages[0].msg
    for alias in on_server:
        assert f"{alias!r} max_size={max_size}" in messages[0].msg
    assert f"{processes * max_size * len(on_server)} connections" in messages[0].msg


def hold_a_connection_in_a_view(wrapper: Any) -> None:
    """Stands for application code that keeps a connection too long."""
    wrapper.ensure_connection()


def test_a_leaked_connection_is_logged_with_the_code_that_took_it(caplog):
    caplog.set_level(logging.INFO, logger="django_pool")
    pool = {"min_size": 1, "leak_threshold": 0.2}

    def reports() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.levelno == logging.WARNING and "leak" in r.getMessage()
        ]

    with pooled_wrappers("leaky", 1, pool=pool) as (wrapper,):
        hold_a_connection_in_a_view(wrapper)
        # Counted under the pool's lock and logged just after: wait for the log.
        deadline = time.monotonic() + 5
        while not reports() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert get_stats("leaky")["leaks_detected"] == 1
        wrapper.close()
    assert len(reports()) == 1
    message = reports()[0].getMessage()
    assert "hold_a_connection_in_a_view" in message
    assert "wrapper.ensure_connection()" in message
    assert any("came back" in r.getMessage() for r in caplog.records)


def test_no_password_in_the_pools_reprs_or_stats():
    with pooled_wrappers("secret", 1, PASSWORD=SECRET, pool={"min_size": 1}) as (wrapper,):
        wrapper.ensure_connection()  # trust auth: the password is sent, not checked
        entry = pools._entries["secret"]
        shown = [repr(entry), repr(entry.pool), str(get_stats("secret"))]
        assert all(SECRET not in text for text in shown)
        assert entry.key["PASSWORD"] == SECRET  # it is there, only never shown


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400])
@pytest.mark.parametrize("key", ["timeout", "max_lifetime", "leak_threshold"])
def test_system_check_refuses_absurd_times(key, value):
    bad = {**settings.DATABASES["default"], "OPTIONS": {"pool": {key: value}}}
    with override_settings(DATABASES={**settings.DATABASES, "bad": bad}):
        messages = [m for m in checks.run_checks() if m.id == "django_pool.E001"]
    assert len(messages) == 1
    assert f"DATABASES['bad']['OPTIONS']['pool']: {key} must be a number" in messages[0].msg
