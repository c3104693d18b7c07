"""Where django-pool must behave as Django's own backends do, seen by code that inspects them.

Each test reproduces a difference Django's own test suite found through the
pooled backends (``tests/django_suite``, ``nox -s django_suite``), on the
real servers, and fails without its fix.
"""

from __future__ import annotations

import copy
import datetime
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import OperationalError, connections
from django.test.utils import CaptureQueriesContext, override_settings

from django_pool import PoolTimeout, testservers
from django_pool.backends import close_pools, get_pool, get_stats
from django_pool.backends.errors import PoolTimeoutError
from tests.databases import ALIASES, django_db, needs_mysql

pytestmark = django_db


def pooled_copy(alias: str, name: str, **pool: Any) -> Any:
    """A new pooled wrapper on ``alias``'s database, under alias ``name``."""
    base = connections[alias]
    options = {**base.settings_dict["OPTIONS"], "pool": {"min_size": 1, "max_size": 2, **pool}}
    return type(base)({**base.settings_dict, "OPTIONS": options}, name)


@pytest.fixture
def wrappers() -> Iterator[Callable[..., Any]]:
    """Make pooled copies (see :func:`pooled_copy`); closed, with their pools, after."""
    made: list[Any] = []

    def make(alias: str, name: str, **pool: Any) -> Any:
        made.append(pooled_copy(alias, name, **pool))
        return made[-1]

    yield make
    for wrapper in made:
        wrapper.close()
        close_pools(wrapper.alias)


def in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread, with Django's connections as a new thread has them."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert result, "the thread failed"
    return result[0]


def fetch_one(alias: str, sql: str) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


@pytest.mark.parametrize("alias", ALIASES)
def test_the_wrapper_keeps_the_handlers_settings_dict(alias):
    # Django's test runner updates this dict in place for --parallel workers.
    assert connections[alias].settings_dict is connections.settings[alias]


def test_threads_follow_a_database_renamed_in_place():
    # What Django's setup_worker_connection() does in a --parallel worker:
    # threads started afterwards must use the worker's clone.
    clone = "django_pool_worker_clone"
    testservers.postgres_server().ensure_database(clone)
    wrapper = connections["default"]
    original = dict(wrapper.settings_dict)
    try:
        wrapper.settings_dict.update({"NAME": clone})
        wrapper.close()
        assert in_thread(lambda: fetch_one("default", "SELECT current_database()")) == clone
    finally:
        wrapper.settings_dict.update(original)
        close_pools("default")


def test_idle_connections_follow_a_time_zone_change():
    # The pool keeps a connection opened with TIME_ZONE="UTC" and USE_TZ=True.
    fetch_one("default", "SELECT 1")
    connections["default"].close()
    assert get_pool("default").get_stats()["pool_available"] >= 1
    sql = "SELECT TIMESTAMPTZ '2020-01-01 12:00:00+00'"
    with override_settings(USE_TZ=False, TIME_ZONE="Asia/Tokyo"):
        # A new thread borrows an idle connection: its session must be in Tokyo,
        # as Django's loaders assume, or the value comes back 9 hours off.
        assert in_thread(lambda: fetch_one("default", sql)) == datetime.datetime(2020, 1, 1, 21)
        zone = in_thread(lambda: fetch_one("default", "SELECT current_setting('TimeZone')"))
        assert zone == "Asia/Tokyo"
    assert in_thread(lambda: fetch_one("default", "SELECT current_setting('TimeZone')")) == "UTC"


def test_pools_of_aliases_made_in_tests_do_not_block_dropping_the_database():
    name = "django_pool_dropped"
    server = testservers.postgres_server()
    server.ensure_database(name)
    base = connections["default"]
    made_in_a_test = type(base)({**base.settings_dict, "NAME": name}, "made_in_a_test")
    with made_in_a_test.cursor() as cursor:
        cursor.execute("SELECT 1")
    made_in_a_test.close()  # back to its pool: an idle session on the database
    assert get_pool("made_in_a_test").get_stats()["pool_available"] == 1
    base.creation._destroy_test_db(name, verbosity=0)
    assert get_pool("made_in_a_test") is None
    assert not server.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=[name])


@pytest.mark.parametrize("alias", ALIASES)
def test_execute_wrappers_hold_only_the_users_own(alias):
    connection = connections[alias]
    assert connection.execute_wrappers == []
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    before = get_stats(alias)
    with connection.execute_wrapper(wrapper):
        assert connection.execute_wrappers == [wrapper]
        with connection.cursor() as cursor:
            cursor.execute(
                "SET @django_pool_x = 1" if alias == "mysql" else "SET search_path TO public"
            )
    assert seen and connection.execute_wrappers == []
    connection.close()
    after = get_stats(alias)
    # The scan still saw the SET: the session was reset (PostgreSQL) or replaced (MySQL).
    cleaned = ("sessions_reset", "sessions_discarded")
    assert sum(after[key] for key in cleaned) == sum(before.get(key, 0) for key in cleaned) + 1


def test_a_timeout_is_also_psycopg_pools_and_passes_djangos_error_wrapper(wrappers):
    psycopg_pool = pytest.importorskip("psycopg_pool", reason="psycopg 3 is hidden in this run")
    holder = wrappers("default", "tiny", max_size=1, timeout=0.2)
    holder.ensure_connection()
    other = wrappers("default", "tiny", max_size=1, timeout=0.2)
    # Code written for Django's built-in pool catches psycopg_pool's class.
    with pytest.raises(psycopg_pool.PoolTimeout):
        other.connect()
    # Through the ORM's path Django's error wrapper would make it a plain
    # OperationalError: it stays ours, which is one.
    with pytest.raises(PoolTimeoutError) as info:
        other.cursor()
    assert isinstance(info.value, OperationalError) and isinstance(info.value, PoolTimeout)
    assert "DATABASES['tiny']" in str(info.value)


@pytest.mark.parametrize("alias", ALIASES)
def test_is_usable_is_false_once_the_connection_went_back(alias):
    connection = connections[alias]
    with connection.cursor():
        pass
    connection._close()
    assert connection.is_usable() is False
    connection.close()


@needs_mysql
def test_init_connection_state_called_directly_runs(wrappers):
    wrapper = wrappers("mysql", "mysql-isolated")
    wrapper.settings_dict["OPTIONS"]["isolation_level"] = "read committed"
    wrapper.ensure_connection()
    with CaptureQueriesContext(wrapper) as queries:
        wrapper.init_connection_state()
    assert any("ISOLATION LEVEL READ COMMITTED" in query["sql"] for query in queries)


def test_options_pool_replaced_on_a_live_wrapper_is_followed(wrappers):
    wrapper = wrappers("default", "switched")
    assert wrapper.pool is get_pool("switched") is not None  # Django's name for it
    # As Django's own tests switch a copy's pooling off.
    wrapper.settings_dict = copy.deepcopy(wrapper.settings_dict)
    wrapper.settings_dict["OPTIONS"]["pool"] = False
    assert wrapper.pool is None
    pids = []
    for _ in range(2):
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids.append(cursor.fetchone()[0])
        wrapper.close()  # really closed: unpooled
    assert pids[0] != pids[1]
    wrapper.settings_dict["OPTIONS"]["pool"] = {"min_size": 0, "max_size": 1}
    wrapper.ensure_connection()
    assert get_pool("switched").max_size == 1
    wrapper.close()
    wrapper.close_pool()
    assert get_pool("switched") is None


def test_conn_max_age_changed_in_place_keeps_the_connection(wrappers):
    # Django's own health-check tests patch CONN_MAX_AGE on a live wrapper.
    wrapper = wrappers("default", "persistent")
    wrapper.settings_dict["CONN_MAX_AGE"] = None
    wrapper.ensure_connection()
    kept = wrapper.connection
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is kept
    assert get_pool("persistent").get_stats()["pool_in_use"] == 1
    wrapper.close()
    wrapper.settings_dict["CONN_MAX_AGE"] = 0
    wrapper.ensure_connection()
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is None
    assert get_pool("persistent").get_stats()["pool_in_use"] == 0
