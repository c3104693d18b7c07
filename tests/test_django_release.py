"""``"release": "transaction"``: the connection goes back between transactions.

Through the ORM, on the ``default_tx`` and ``mysql_tx`` aliases (the pooled
test databases, with that option), against the real servers.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.utils import load_backend

from django_pool.backends import get_pool, get_stats
from tests.databases import HAVE_MYSQL, needs_mysql
from tests.djangoapp.models import Item

TX_ALIASES = [
    pytest.param("default_tx", id="postgresql"),
    pytest.param("mysql_tx", id="mysql", marks=needs_mysql),
]

pytestmark = pytest.mark.django_db(
    transaction=True,
    databases=["default", "default_tx", *(["mysql", "mysql_tx"] if HAVE_MYSQL else [])],
)


def session_id(alias: str) -> int:
    mysql = connections[alias].vendor == "mysql"
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()" if mysql else "SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def in_use(alias: str) -> int:
    return int(get_pool(alias).get_stats()["pool_in_use"])


def end_request(alias: str) -> None:
    connections[alias].close_if_unusable_or_obsolete()


@pytest.fixture(autouse=True)
def _end_each_test_like_a_request():
    yield
    for alias in ("default_tx", "mysql_tx"):
        if alias in connections.settings:
            connections[alias].close()


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_a_statement_outside_a_transaction_gives_the_connection_back(alias):
    items = Item.objects.using(alias)
    items.create(name="a")
    assert connections[alias].connection is None and in_use(alias) == 0
    assert items.count() == 1
    assert in_use(alias) == 0
    served = get_stats(alias)["requests_num"]
    list(items.all())
    assert get_stats(alias)["requests_num"] == served + 1  # one checkout per statement


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_atomic_holds_one_connection_with_savepoints_and_on_commit(alias):
    items = Item.objects.using(alias)
    ran = []
    with transaction.atomic(using=alias):
        first = session_id(alias)
        items.create(name="kept")
        try:
            with transaction.atomic(using=alias):  # a savepoint
                items.create(name="rolled back")
                assert session_id(alias) == first
                raise RuntimeError
        except RuntimeError:
            pass
        locked = items.select_for_update().get(name="kept")
        locked.quantity = 3
        locked.save()
        transaction.on_commit(lambda: ran.append(items.count()), using=alias)
        assert session_id(alias) == first and in_use(alias) == 1
        assert ran == []
    # on_commit ran after the commit, its query on a connection borrowed again,
    # and nothing is held afterwards.
    assert ran == [1] and in_use(alias) == 0
    assert items.get(name="kept").quantity == 3


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_autocommit_off_holds_until_it_is_on_again(alias):
    items = Item.objects.using(alias)
    transaction.set_autocommit(False, using=alias)
    items.create(name="uncommitted")
    first = session_id(alias)
    assert in_use(alias) == 1 and session_id(alias) == first
    transaction.rollback(using=alias)
    transaction.set_autocommit(True, using=alias)
    assert in_use(alias) == 0
    assert items.count() == 0


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_a_raw_cursor_holds_until_closed(alias):
    connection = connections[alias]
    cursor = connection.cursor()
    cursor.execute("SELECT 1")
    assert in_use(alias) == 1
    assert Item.objects.using(alias).count() == 0  # on the same connection meanwhile
    assert in_use(alias) == 1
    cursor.close()
    assert in_use(alias) == 0 and connection.connection is None
    cursor.close()  # closing twice counts once
    with connection.cursor() as again:
        again.execute("SELECT 1")
        assert in_use(alias) == 1
    assert in_use(alias) == 0


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_a_transaction_opened_by_a_statement_holds_until_it_ends(alias):
    # mysqlclient's connection cannot tell: the session scan sees BEGIN.
    items = Item.objects.using(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute("BEGIN")
    first = session_id(alias)
    items.create(name="inside")
    assert in_use(alias) == 1 and session_id(alias) == first
    with connections[alias].cursor() as cursor:
        cursor.execute("ROLLBACK")
    assert in_use(alias) == 0
    assert items.count() == 0


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_iterator_on_a_server_side_cursor_interleaved_with_other_queries(alias):
    items = Item.objects.using(alias)
    items.bulk_create([Item(name=f"i{n}", quantity=n) for n in range(30)])
    seen = []
    for item in items.order_by("id").iterator(chunk_size=4):
        seen.append(item.name)
        # Another query while the server-side cursor is open: served too.
        assert items.filter(quantity__gte=0).count() == 30
        assert in_use(alias) == 1
    assert len(seen) == 30 and in_use(alias) == 0
    # Abandoned half-way: held until the request ends, then cleaned.
    iterator = items.order_by("id").iterator(chunk_size=4)
    next(iterator)
    assert in_use(alias) == 1
    del iterator
    end_request(alias)
    assert in_use(alias) == 0
    assert items.count() == 30


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_prefetch_bulk_create_and_bulk_update(alias):
    items = Item.objects.using(alias)
    items.bulk_create([Item(name=f"b{n}") for n in range(20)], batch_size=5)
    to_update = list(items.all())
    for item in to_update:
        item.quantity = 7
    items.bulk_update(to_update, ["quantity"], batch_size=6)
    assert items.filter(quantity=7).count() == 20 and in_use(alias) == 0


@pytest.mark.parametrize("alias", TX_ALIASES)
def test_session_state_pins_the_connection_until_the_request_ends(alias):
    mysql = alias == "mysql_tx"
    before = get_stats(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute("SET @pinned = 42" if mysql else "SET application_name TO 'pinned'")
    first = session_id(alias)
    assert in_use(alias) == 1
    assert session_id(alias) == first  # the state is there for the next statement
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT @pinned" if mysql else "SHOW application_name")
        assert str(cursor.fetchone()[0]) == ("42" if mysql else "pinned")
    end_request(alias)
    after = get_stats(alias)
    assert in_use(alias) == 0
    cleaned = ("sessions_reset", "sessions_discarded")
    assert sum(after[k] for k in cleaned) == sum(before[k] for k in cleaned) + 1


def test_transaction_release_needs_the_session_scan():
    base = connections["default"]
    options = {"pool": {"release": "transaction", "session_reset": "never"}}
    wrapper_class = load_backend("django_pool.backends.postgresql").DatabaseWrapper
    with pytest.raises(ImproperlyConfigured, match="needs 'session_reset': 'detected'"):
        wrapper_class({**base.settings_dict, "OPTIONS": options}, "tx_never")
    with pytest.raises(ImproperlyConfigured, match="'release' must be one of 'request', "):
        wrapper_class({**base.settings_dict, "OPTIONS": {"pool": {"release": "x"}}}, "tx_x")
