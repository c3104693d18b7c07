"""A borrower that is gone gives its connection back: ORM work in a thread that ends.

Without ``django_pool.threads``' helper nobody returns such a thread's
connection; the pool takes it back once the thread has ended, cleans it and
lends it again. Real servers, both release modes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connections

from django_pool.backends import get_pool, get_stats
from tests.databases import HAVE_MYSQL, needs_mysql
from tests.djangoapp.models import Item

ALL_ALIASES = [
    pytest.param("default", id="postgresql-request"),
    pytest.param("default_tx", id="postgresql-transaction"),
    pytest.param("mysql", id="mysql-request", marks=needs_mysql),
    pytest.param("mysql_tx", id="mysql-transaction", marks=needs_mysql),
]

pytestmark = pytest.mark.django_db(
    transaction=True,
    databases=["default", "default_tx", *(["mysql", "mysql_tx"] if HAVE_MYSQL else [])],
)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def in_a_thread_that_forgets(work: Callable[[], object]) -> None:
    """Run ``work`` in a new thread that never closes its connections."""
    thread = threading.Thread(target=work, name="forgets-its-connection")
    thread.start()
    thread.join()


@pytest.mark.parametrize("alias", ALL_ALIASES)
def test_orm_work_in_bare_threads_never_loses_a_connection(alias, caplog):
    caplog.set_level("WARNING", logger="django_pool")
    Item.objects.using(alias).create(name="x")
    connections[alias].close()
    pool = get_pool(alias)
    before = get_stats(alias)
    # Twice the pool's size: without reclaiming, the fifth would time out.
    threads = 2 * pool.max_size
    for _ in range(threads):
        in_a_thread_that_forgets(lambda: Item.objects.using(alias).count())
    wait_until(lambda: pool.get_stats()["pool_in_use"] == 0)
    after = get_stats(alias)
    assert after["requests_errors"] == before["requests_errors"]
    reclaimed = after["connections_reclaimed"] - before["connections_reclaimed"]
    if alias.endswith("_tx"):
        assert reclaimed == 0  # each statement gave its connection back already
    else:
        assert reclaimed == threads
        warnings = [r.getMessage() for r in caplog.records if "was reclaimed" in r.getMessage()]
        assert len(warnings) == threads and "'forgets-its-connection'" in warnings[0]
    assert Item.objects.using(alias).count() == 1  # and the next request is served


def test_a_reclaimed_session_is_cleaned_as_on_a_normal_return():
    Item.objects.count()
    connections["default"].close()
    pool = get_pool("default")

    def leave_state() -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SET search_path TO pg_catalog")

    in_a_thread_that_forgets(leave_state)
    wait_until(lambda: pool.get_stats()["pool_in_use"] == 0)
    # Every connection the pool has, the reclaimed one among them.
    held = [pool.getconn() for _ in range(pool.get_stats()["pool_size"])]
    try:
        for conn in held:
            with conn.cursor() as cursor:
                cursor.execute("SHOW search_path")
                assert cursor.fetchone()[0] != "pg_catalog"
    finally:
        for conn in held:
            pool.putconn(conn)
