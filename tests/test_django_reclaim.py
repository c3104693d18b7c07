"""A borrower that is gone gives its connection back: ORM work in a thread that ends.

Without ``django_pool.threads``' helper nobody returns such a thread's
connection; the pool takes it back once the thread has ended, cleans it and
lends it again. Plain ORM work there gives its connection back after each
statement anyway (outside a request, in a thread but the main one, both
modes follow the "transaction" rules): what is reclaimed is a connection such
a thread still held (a cursor left open, pinned session state). Real servers,
both release modes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connections

from django_pool.backends import get_pool, get_stats
from tests.databases import HAVE_MYSQL, needs_mysql
from tests.djangoapp.models import Item
from tests.polling import wait_until

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


def in_a_thread_that_forgets(work: Callable[[], object]) -> None:
    """Run ``work`` in a new thread that never closes its connections."""
    thread = threading.Thread(target=work, name="forgets-its-connection")
    thread.start()
    thread.join()


def _count(alias: str) -> None:
    Item.objects.using(alias).count()


def _cursor_left_open(alias: str) -> None:
    # Holds the connection (it may still be read) until the thread ends.
    connections[alias].cursor().execute("SELECT 1")


@pytest.mark.parametrize("alias", ALL_ALIASES)
@pytest.mark.parametrize("work", [_count, _cursor_left_open], ids=["orm", "cursor-left-open"])
def test_orm_work_in_bare_threads_never_loses_a_connection(alias, work, caplog):
    caplog.set_level("WARNING", logger="django_pool")
    Item.objects.using(alias).create(name="x")
    connections[alias].close()
    pool = get_pool(alias)
    before = get_stats(alias)
    # Twice the pool's size: without reclaiming, the fifth would time out.
    threads = 2 * pool.max_size
    for _ in range(threads):
        in_a_thread_that_forgets(lambda: work(alias))
    wait_until(lambda: pool.get_stats()["pool_in_use"] == 0)
    after = get_stats(alias)
    assert after["requests_errors"] == before["requests_errors"]
    reclaimed = after["connections_reclaimed"] - before["connections_reclaimed"]
    if work is _count:
        # Outside a request, in a thread but the main one, each statement gives
        # its connection back (release="request" too): nothing to reclaim.
        assert reclaimed == 0
    else:
        assert reclaimed == threads
        warnings = [r.getMessage() for r in caplog.records if "was reclaimed" in r.getMessage()]
        assert len(warnings) == threads and "'forgets-its-connection'" in warnings[0]
    assert Item.objects.using(alias).count() == 1  # and the next request is served


def _in_thread(work: Callable[[], object]) -> None:
    error: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]


def test_request_mode_holds_a_connection_for_the_request_and_in_the_main_thread():
    """release="request": held for a whole request in its thread, and in the main
    thread; outside a request, another thread gives it back after each statement."""
    from django.core.signals import request_finished, request_started

    wrapper = connections["default"]
    Item.objects.count()
    assert wrapper.connection is not None  # the main thread keeps it
    wrapper.close()
    seen: dict[str, object] = {}

    def outside_a_request() -> None:
        Item.objects.count()
        seen["outside"] = connections["default"].connection
        connections["default"].close()

    def inside_a_request() -> None:
        request_started.send(sender=None)
        Item.objects.count()
        seen["inside"] = connections["default"].connection
        request_finished.send(sender=None)
        seen["after"] = connections["default"].connection

    _in_thread(outside_a_request)
    _in_thread(inside_a_request)
    assert seen["outside"] is None
    assert seen["inside"] is not None
    assert seen["after"] is None
    assert get_pool("default").get_stats()["pool_in_use"] == 0


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
