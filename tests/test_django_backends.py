"""The pooled Django backends against real servers, through Django's own ORM.

The test databases are created by Django's test machinery (pytest-django), so
creation and migrations run through the pooled backends too.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.backends.signals import connection_created
from django.db.utils import load_backend

from django_pool.backends import active_pools, close_pools, get_pool, get_stats, when_pool_made
from django_pool.threads import PooledThreadPoolExecutor, returns_connections
from tests.databases import ALIASES, BOUNCER_ALIASES, django_db
from tests.djangoapp.models import Item

pytestmark = django_db


def session_id(alias: str) -> int:
    sql = "SELECT pg_backend_pid()" if alias == "default" else "SELECT CONNECTION_ID()"
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


def end_request(alias: str) -> None:
    """What Django does at the end of a request (CONN_MAX_AGE=0: close)."""
    connections[alias].close_if_unusable_or_obsolete()


@pytest.mark.parametrize("alias", [*ALIASES, *BOUNCER_ALIASES])
def test_the_orm_works_unchanged(alias):
    items = Item.objects.using(alias)
    items.create(name="a", quantity=1)
    items.bulk_create([Item(name=f"b{i}", quantity=i) for i in range(50)])
    items.filter(name__startswith="b").update(quantity=7)
    assert items.filter(quantity=7).count() == 50

    with transaction.atomic(using=alias):
        items.create(name="kept")
        try:
            with transaction.atomic(using=alias):  # a savepoint
                items.create(name="rolled back")
                raise RuntimeError
        except RuntimeError:
            pass
        locked = items.select_for_update().get(name="kept")
        locked.quantity = 3
        locked.save()
    assert items.filter(name="rolled back").count() == 0
    assert items.get(name="kept").quantity == 3

    # .iterator() uses a server-side cursor on PostgreSQL, streamed chunk by chunk.
    names = [item.name for item in items.order_by("id").iterator(chunk_size=7)]
    assert len(names) == 52 and names[0] == "a"
    to_update = list(items.filter(name__startswith="b"))
    for item in to_update:
        item.quantity = 9
    items.bulk_update(to_update, ["quantity"])
    assert items.filter(quantity=9).count() == 50
    assert get_pool(alias) is not None


@pytest.mark.parametrize("alias", ALIASES)
def test_connection_goes_back_to_the_pool_at_the_end_of_a_request(alias):
    Item.objects.using(alias).count()
    pool = get_pool(alias)
    assert pool.get_stats()["pool_in_use"] == 1
    end_request(alias)
    assert connections[alias].connection is None
    assert pool.get_stats()["pool_in_use"] == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_connection_comes_back_clean(alias):
    close_pools(alias)  # counters from this test only
    transaction.set_autocommit(False, using=alias)
    Item.objects.using(alias).create(name="uncommitted")
    connections[alias].close()  # mid-transaction, autocommit off
    assert connections[alias].get_autocommit() is True  # a new checkout
    assert not Item.objects.using(alias).filter(name="uncommitted").exists()
    assert get_pool(alias).get_stats()["returns_bad"] == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_autocommit_left_off_is_restored_on_the_same_session(alias):
    # A checkout trusts the connection's autocommit mode without setting it, so
    # the return must restore it at the driver, not only in Django's wrapper.
    close_pools(alias)  # counters from this test only
    before = session_id(alias)
    transaction.set_autocommit(False, using=alias)
    Item.objects.using(alias).create(name="uncommitted")
    end_request(alias)
    assert session_id(alias) == before  # reused, not replaced
    Item.objects.using(alias).create(name="autocommitted")
    other = connections.create_connection(alias)
    try:
        with other.cursor() as cursor:  # another session sees only committed rows
            cursor.execute("SELECT name FROM djangoapp_item")
            assert [row[0] for row in cursor.fetchall()] == ["autocommitted"]
    finally:
        other.close()
    assert get_pool(alias).get_stats()["connections_num"] <= 2


@pytest.mark.parametrize("alias", ALIASES)
def test_closed_inside_atomic_rolls_back_and_next_checkout_is_clean(alias):
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="lost")
        connections[alias].close()
    assert get_pool(alias).get_stats()["pool_in_use"] == 0
    assert not Item.objects.using(alias).filter(name="lost").exists()
    assert connections[alias].get_autocommit() is True
    end_request(alias)  # Django's per-connection state was reset at checkout
    assert get_pool(alias).get_stats()["pool_in_use"] == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_broken_connection_is_discarded(alias):
    victim = session_id(alias)
    kill = "SELECT pg_terminate_backend(%s)" if alias == "default" else "KILL %s"
    other = connections.create_connection(alias)  # its own pooled checkout
    try:
        with other.cursor() as cursor:
            cursor.execute(kill, [victim])
    finally:
        other.close()
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error, wrapped by Django
        Item.objects.using(alias).count()
    assert connections[alias].errors_occurred
    end_request(alias)
    assert session_id(alias) != victim
    assert get_pool(alias).get_stats()["connections_lost"] >= 1


@pytest.mark.parametrize("alias", ALIASES)
def test_connection_setup_runs_once_per_physical_connection(alias, monkeypatch):
    django_class = next(  # Django's own wrapper class, under the pooled one
        cls for cls in type(connections[alias]).__mro__ if cls.__module__.startswith("django.db.")
    )
    calls: list[int] = []
    original = django_class.init_connection_state

    def counting(self: Any) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(django_class, "init_connection_state", counting)
    close_pools()
    for _ in range(30):
        Item.objects.using(alias).count()
        end_request(alias)
    assert len(calls) == get_pool(alias).get_stats()["connections_num"]
    assert len(calls) <= 4


def test_connection_created_fires_on_each_checkout():
    received: list[Any] = []

    def handler(sender: Any, connection: Any, **kwargs: Any) -> None:
        received.append(connection)

    connection_created.connect(handler)
    try:
        for _ in range(3):
            Item.objects.count()
            end_request("default")
    finally:
        connection_created.disconnect(handler)
    assert received == [connections["default"]] * 3


def test_one_pool_per_alias_made_once_when_many_threads_start_together():
    close_pools()
    barrier = threading.Barrier(16)
    pools: list[Any] = []

    @returns_connections
    def work() -> None:
        barrier.wait()
        Item.objects.count()
        pools.append(get_pool("default"))

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(pools) == 16 and len({id(pool) for pool in pools}) == 1
    stats = pools[0].get_stats()
    assert stats["connections_num"] <= stats["pool_max"]
    assert stats["pool_in_use"] == 0


def test_thread_pool_executor_returns_each_tasks_connections():
    def task(i: int) -> int:
        return Item.objects.filter(quantity=i).count()

    with PooledThreadPoolExecutor(max_workers=4) as executor:
        assert list(executor.map(task, range(40))) == [0] * 40
        stats = get_pool("default").get_stats()
        assert stats["pool_in_use"] == 0  # the workers are alive, their connections back
    assert stats["connections_num"] <= stats["pool_max"]


def test_close_pools_closes_every_pool():
    Item.objects.count()
    pool = get_pool("default")
    end_request("default")
    close_pools()
    assert pool.closed and get_pool("default") is None
    assert Item.objects.count() == 0  # and the next query makes a new one
    assert get_pool("default") is not pool


def test_without_pool_option_the_backend_is_djangos():
    wrapper = connections.create_connection("default")
    wrapper.settings_dict = {**wrapper.settings_dict}
    unpooled = type(wrapper)({**wrapper.settings_dict, "OPTIONS": {}}, "default")
    try:
        assert unpooled.pool_options is None
        with unpooled.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            first = cursor.fetchone()[0]
        unpooled.close()
        with unpooled.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] != first  # really closed, really reopened
    finally:
        unpooled.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"OPTIONS": {"pool": {"min_sise": 2}}}, "unknown key 'min_sise'; valid keys: check,"),
        (
            {"OPTIONS": {"pool": {"min_size": 5, "max_size": 2}}},
            "max_size .2. must be >= min_size",
        ),
        ({"OPTIONS": {"pool": {"timeout": "30"}}}, "timeout must be a number"),
        ({"OPTIONS": {"pool": {"kwargs": {}}}}, "'kwargs' is not supported"),
        ({"OPTIONS": {"pool": "yes"}}, "must be True or a dict"),
        ({"OPTIONS": {"pool": {"reset": "no.such.function"}}}, "'reset' could not be imported"),
        ({"CONN_MAX_AGE": 60}, r"\['CONN_MAX_AGE'\] must be 0 with pooling, got 60"),
    ],
)
def test_bad_configuration_names_the_key(changes, message):
    base = {**settings.DATABASES["default"], "OPTIONS": {"pool": True}}
    settings_dict = {**connections["default"].settings_dict, **base, **changes}
    wrapper_class = load_backend("django_pool.backends.postgresql").DatabaseWrapper
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        wrapper_class(settings_dict, "default")
    assert "DATABASES['default']" in str(info.value)


def test_pooled_wraps_a_third_party_backend_subclass():
    from django.db.backends.postgresql.base import DatabaseWrapper as DjangoWrapper

    from django_pool.backends.base import pooled

    cursors_made: list[Any] = []  # the wrappers that made cursors

    class InstrumentedWrapper(DjangoWrapper):  # as django-prometheus and others do
        def create_cursor(self, name: str | None = None) -> Any:
            cursors_made.append(self)
            return super().create_cursor(name)

    wrapper_class = pooled(InstrumentedWrapper)
    settings_dict = {
        **connections["default"].settings_dict,
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 2}},
    }
    wrapper = wrapper_class(settings_dict, "thirdparty")
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone()[0] == settings_dict["NAME"]
        assert cursors_made.count(wrapper) == 1  # its behaviour is kept
        pool = get_pool("thirdparty")
        assert pool is not None and pool.get_stats()["pool_in_use"] == 1  # and it is pooled
        wrapper.close()
        assert pool.get_stats()["pool_in_use"] == 0
    finally:
        wrapper.close()
        close_pools("thirdparty")


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"CONN_HEALTH_CHECKS": True}, id="CONN_HEALTH_CHECKS"),
        pytest.param(
            {"OPTIONS": {"pool": {"min_size": 1, "max_size": 1, "check": True}}}, id="check-key"
        ),
    ],
)
def test_health_checks_ping_every_checkout(changes):
    settings_dict = {
        **connections["default"].settings_dict,
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 1}},
        **changes,
    }
    wrapper_class = load_backend("django_pool.backends.postgresql").DatabaseWrapper
    alias = "healthchecked"
    wrapper = wrapper_class(settings_dict, alias)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            victim = cursor.fetchone()[0]
        wrapper.close()
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [victim])
            for _ in range(500):  # it only signals: wait until the backend is gone
                cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [victim])
                if not cursor.fetchall():
                    break
                time.sleep(0.01)
        # Used a moment ago, so only a per-checkout ping can catch it.
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] != victim
        assert get_pool(alias).get_stats()["connections_lost"] == 1
    finally:
        wrapper.close()
        close_pools(alias)


@pytest.mark.parametrize("alias", ALIASES)
def test_isolation_level_from_options_holds_at_every_checkout(alias):
    base = connections[alias]
    if base.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        level, show, expected = (
            IsolationLevel.SERIALIZABLE,
            "SHOW transaction_isolation",
            "serializable",
        )
    else:
        variable = "tx_isolation" if base.mysql_is_mariadb else "transaction_isolation"
        level, show, expected = (
            "read committed",
            f"SELECT @@{variable}",
            "READ-COMMITTED",
        )
    options = {k: v for k, v in base.settings_dict["OPTIONS"].items() if k != "pool"}
    settings_dict = {
        **base.settings_dict,
        "OPTIONS": {**options, "isolation_level": level, "pool": {"min_size": 1, "max_size": 1}},
    }
    name = f"{alias}-isolated"
    wrapper = type(base)(settings_dict, name)
    try:
        for _ in range(3):
            wrapper.set_autocommit(False)
            with wrapper.cursor() as cursor:
                cursor.execute(show)
                assert str(cursor.fetchone()[0]).lower() == expected.lower()
            wrapper.rollback()
            wrapper.set_autocommit(True)
            wrapper.close_if_unusable_or_obsolete()
            assert wrapper.connection is None
        # Django's attribute, as an unpooled wrapper sets it while connecting.
        assert wrapper.isolation_level == level
        assert get_pool(name).get_stats()["connections_num"] == 1
    finally:
        wrapper.close()
        close_pools(name)


def test_a_database_renamed_in_place_gets_a_new_pool():
    # What the test runner does to a live wrapper when it makes, clones or
    # hands out per-worker test databases.
    base = connections["default"]
    settings_dict = {**base.settings_dict, "OPTIONS": {"pool": {"min_size": 1, "max_size": 1}}}
    wrapper = type(base)(settings_dict, "renamed")

    def current_database() -> str:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            name = cursor.fetchone()[0]
        wrapper.close_if_unusable_or_obsolete()
        return str(name)

    try:
        assert current_database() == settings_dict["NAME"]
        first = get_pool("renamed")
        wrapper.settings_dict["NAME"] = "postgres"
        assert current_database() == "postgres"
        assert get_pool("renamed") is not first
        assert first.get_stats()["pool_size"] == 0  # the old pool was closed
    finally:
        wrapper.close()
        close_pools("renamed")


def test_connections_the_pool_opens_have_a_connect_timeout_by_default():
    from django_pool.backends.pools import DEFAULT_CONNECT_TIMEOUT

    Item.objects.count()
    conn = connections["default"].connection
    info = conn.info
    # psycopg 3, psycopg2
    parameters = info.get_parameters() if hasattr(info, "get_parameters") else info.dsn_parameters
    assert parameters["connect_timeout"] == str(DEFAULT_CONNECT_TIMEOUT)


def test_when_pool_made_hooks_see_every_pool_once():
    Item.objects.count()  # the default alias's pool exists
    seen: list[tuple[str, Any]] = []

    def hook(alias: str, pool: Any) -> None:
        seen.append((alias, pool))

    when_pool_made(hook)
    when_pool_made(hook)  # once is enough
    assert seen == [(alias, pool) for alias, pool in active_pools().items()]
    seen.clear()
    connections["default"].close()
    close_pools("default")
    Item.objects.count()
    assert seen == [("default", get_pool("default"))]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_counts_its_own_sessions_from_zero():
    from tests.test_fork import run_in_child

    with connections["default"].cursor() as cursor:
        cursor.execute("SET search_path TO public")
    end_request("default")  # reset on return: counted
    assert get_stats("default")["sessions_reset"] >= 1

    counted = ("sessions_reset", "sessions_discarded", "requests_num")

    def child() -> dict[str, int]:
        stats = get_stats("default")
        return {key: stats[key] for key in counted}

    assert run_in_child(child) == dict.fromkeys(counted, 0)
