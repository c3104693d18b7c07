"""Session state never leaks from one checkout to the next (real servers, on the wire).

Each test borrows through a pooled wrapper of its own whose only connection
goes through :class:`tests.wire.WireCounter`, so the statements the server
receives can be counted: a clean checkout must send nothing but the
borrower's own statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_pool.backends import close_pools, get_stats
from tests.databases import django_db, needs_mysql
from tests.wire import WireCounter

pytestmark = django_db


@contextmanager
def proxied(alias: str, **pool: Any) -> Iterator[tuple[Any, WireCounter]]:
    """A pooled wrapper like ``connections[alias]``, with one connection, through a proxy."""
    base = connections[alias]
    protocol = "postgresql" if base.vendor == "postgresql" else "mysql"
    with WireCounter(
        protocol, base.settings_dict["HOST"], int(base.settings_dict["PORT"])
    ) as proxy:
        name = f"{alias}-proxied"
        options = {"min_size": 1, "max_size": 1, "validate_after": None, **pool}
        wrapper = type(base)(
            {
                **base.settings_dict,
                "HOST": proxy.host,
                "PORT": proxy.port,
                "OPTIONS": {**base.settings_dict["OPTIONS"], "pool": options},
            },
            name,
        )
        try:
            yield wrapper, proxy
        finally:
            wrapper.close()
            close_pools(name)
        assert proxy.connections_unreadable == 0


def checkout(wrapper: Any, *statements: str) -> list[Any]:
    """One request: run ``statements``, return the last one's rows, give the connection back."""
    rows: list[Any] = []
    with wrapper.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)
            rows = cursor.fetchall() if cursor.description else []
    wrapper.close_if_unusable_or_obsolete()  # the end of a request
    assert wrapper.connection is None
    return rows


def session_id(wrapper: Any) -> int:
    """The server session serving ``wrapper``, in a checkout of its own."""
    sql = "SELECT pg_backend_pid()" if wrapper.vendor == "postgresql" else "SELECT CONNECTION_ID()"
    return int(checkout(wrapper, sql)[0][0])


# (statement that leaves state behind, query showing that state)
PG_STATE = {
    "role": ("SET ROLE pg_monitor", "SELECT current_user"),
    "search_path": ("SET search_path TO pg_catalog", "SHOW search_path"),
    "time zone": ("SET TIME ZONE 'Asia/Tokyo'", "SHOW TimeZone"),
    "set_config": (
        "SELECT set_config('app.tenant', '42', false)",
        # RESET ALL leaves the name defined, with an empty value.
        "SELECT coalesce(current_setting('app.tenant', true), '')",
    ),
    "temporary table": (
        "CREATE TEMP TABLE leak (a int)",
        "SELECT count(*) FROM pg_class"
        " WHERE relname = 'leak' AND relpersistence = 't' AND pg_table_is_visible(oid)",
    ),
    "listen": ("LISTEN leak", "SELECT count(*) FROM pg_listening_channels()"),
    "advisory lock": (
        "SELECT pg_advisory_lock(4242)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    "prepared statement": (
        "PREPARE leak AS SELECT 1",
        "SELECT count(*) FROM pg_prepared_statements",
    ),
    "cursor with hold": (
        "DECLARE leak CURSOR WITH HOLD FOR SELECT 1",
        "SELECT count(*) FROM pg_cursors",
    ),
    # Hidden from a naive scan: behind comments, inside code the server runs.
    "role behind a comment": ("/* request 42 */ SET ROLE pg_monitor", "SELECT current_user"),
    "search_path after a line comment": (
        "-- note\nSET search_path TO pg_catalog",
        "SHOW search_path",
    ),
    "search_path in a DO block": (
        "DO $$BEGIN EXECUTE 'SET search_path TO pg_catalog'; END$$",
        "SHOW search_path",
    ),
}


@pytest.mark.parametrize("kind", list(PG_STATE))
def test_postgresql_session_state_is_gone_at_the_next_checkout(kind):
    change, show = PG_STATE[kind]
    with proxied("default") as (wrapper, _):
        session = session_id(wrapper)
        before = checkout(wrapper, show)
        changed = checkout(wrapper, change, show)
        assert changed != before  # the statement did change the session
        assert checkout(wrapper, show) == before
        assert session_id(wrapper) == session  # cleaned in place, not replaced
        assert get_stats("default-proxied")["sessions_reset"] == 1


# A function that changes the session's time zone: calling it shows nothing.
SET_ZONE_FUNCTION = (
    "CREATE OR REPLACE FUNCTION django_pool_set_zone() RETURNS void LANGUAGE plpgsql "
    "AS $$BEGIN PERFORM pg_catalog.set_config('TimeZone', 'Asia/Tokyo', false); END$$"
)


def test_a_setting_changed_where_no_statement_shows_it_is_reset():
    """A function's SET: nothing in ``SELECT f()`` says so, but the server reports
    the new value (ParameterStatus), and the return compares it."""
    with proxied("default") as (wrapper, _):
        before = checkout(wrapper, "SHOW TimeZone")
        checkout(wrapper, SET_ZONE_FUNCTION)  # alone: its text names set_config
        resets = get_stats("default-proxied")["sessions_reset"]
        try:
            assert checkout(wrapper, "SELECT django_pool_set_zone()", "SHOW TimeZone") != before
            assert checkout(wrapper, "SHOW TimeZone") == before
            assert get_stats("default-proxied")["sessions_reset"] > resets
        finally:
            checkout(wrapper, "DROP FUNCTION IF EXISTS django_pool_set_zone()")


def test_with_release_transaction_a_setting_changed_unseen_reaches_no_other_request():
    """The same, between transactions: the parked connection is compared only
    when another request would take it, and that request gets another one."""
    with proxied("default", release="transaction") as (wrapper, _):
        before = checkout(wrapper, "SHOW TimeZone")
        checkout(wrapper, SET_ZONE_FUNCTION)
        other = type(wrapper)(wrapper.settings_dict, wrapper.alias)  # another request
        try:
            with wrapper.cursor() as cursor:  # parked with the changed zone after this
                cursor.execute("SELECT django_pool_set_zone()")
            assert wrapper.connection is None  # given back between transactions
            with other.cursor() as cursor:  # the pool's only connection was that one
                cursor.execute("SHOW TimeZone")
                assert cursor.fetchall() == before
        finally:
            other.close()
            wrapper.close()
            checkout(wrapper, "DROP FUNCTION IF EXISTS django_pool_set_zone()")


def test_a_statement_seen_before_is_detected_again():
    # The second time, the scan's result comes from its memo (Dialect.known).
    change, show = PG_STATE["search_path"]
    with proxied("default") as (wrapper, _):
        before = checkout(wrapper, show)
        for _ in range(2):
            assert checkout(wrapper, change, show) != before
            assert checkout(wrapper, show) == before
        assert get_stats("default-proxied")["sessions_reset"] == 2


def test_an_unfinished_server_side_cursor_is_closed():
    # .iterator() stopped early: Django's cursor is declared WITH HOLD in
    # autocommit mode, so it would outlive the request.
    with proxied("default") as (wrapper, _):
        session = session_id(wrapper)
        cursor = wrapper.chunked_cursor()
        cursor.execute("SELECT generate_series(1, 1000)")
        assert cursor.fetchone() == (1,)
        wrapper.close_if_unusable_or_obsolete()
        assert checkout(wrapper, "SELECT count(*) FROM pg_cursors") == [(0,)]
        assert session_id(wrapper) == session


def set_statement_timeout(conn: Any) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SET statement_timeout = '7s'")


def test_a_reset_runs_the_configure_hook_again():
    with proxied("default", configure=set_statement_timeout) as (wrapper, _):
        assert checkout(wrapper, "SHOW statement_timeout") == [("7s",)]
        checkout(wrapper, "SET search_path TO pg_catalog")
        assert checkout(wrapper, "SHOW statement_timeout") == [("7s",)]
        assert checkout(wrapper, "SHOW search_path") != [("pg_catalog",)]


def test_a_clean_checkout_sends_nothing_but_its_own_statements():
    with proxied("default") as (wrapper, proxy):
        session_id(wrapper)  # the connection is made and set up
        mark = proxy.mark()
        for i in range(5):
            checkout(wrapper, f"SELECT {i}", "UPDATE pg_class SET relname = relname WHERE false")
        sent = [sql for _, sql in proxy.statements_since(mark)]
        update = "UPDATE pg_class SET relname = relname WHERE false"
        assert sent == [sql for i in range(5) for sql in (f"SELECT {i}", update)]
        assert get_stats("default-proxied")["sessions_reset"] == 0


def test_a_changed_session_costs_one_reset_statement():
    with proxied("default") as (wrapper, proxy):
        session_id(wrapper)
        mark = proxy.mark()
        checkout(wrapper, "LISTEN leak")
        sent = [sql for _, sql in proxy.statements_since(mark)]
        assert sent == ["LISTEN leak", "UNLISTEN *"]
        mark = proxy.mark()
        checkout(wrapper, "SELECT 1")  # and the next clean checkout is free again
        assert [sql for _, sql in proxy.statements_since(mark)] == ["SELECT 1"]


def test_transaction_scoped_changes_need_no_reset():
    with proxied("default") as (wrapper, proxy):
        session_id(wrapper)
        mark = proxy.mark()
        with wrapper.cursor() as cursor:
            wrapper.set_autocommit(False)
            cursor.execute("SET LOCAL search_path TO pg_catalog")
            cursor.execute("SELECT set_config('app.tenant', '1', true)")
            cursor.execute("SELECT pg_advisory_xact_lock(4242)")
            wrapper.commit()
            wrapper.set_autocommit(True)
        wrapper.close_if_unusable_or_obsolete()
        sent = [sql for _, sql in proxy.statements_since(mark)]
        assert "RESET ALL" not in " ".join(sent) and "unlock_all" not in " ".join(sent)
        assert get_stats("default-proxied")["sessions_reset"] == 0


def test_session_reset_always_resets_every_return():
    with proxied("default", session_reset="always") as (wrapper, proxy):
        session = session_id(wrapper)
        mark = proxy.mark()
        checkout(wrapper, "SELECT 1")
        sent = [sql for _, sql in proxy.statements_since(mark)]
        assert sent[0] == "SELECT 1" and "RESET ALL" in sent[1]
        assert session_id(wrapper) == session
        assert get_stats("default-proxied")["sessions_reset"] == 3


def test_session_reset_never_leaves_the_state_as_django_builtin_pool_does():
    with proxied("default", session_reset="never") as (wrapper, _):
        checkout(wrapper, "SET search_path TO pg_catalog")
        assert checkout(wrapper, "SHOW search_path") == [("pg_catalog",)]


def test_bad_session_reset_value_names_the_choices():
    base = connections["default"]
    with pytest.raises(ImproperlyConfigured, match=r"'session_reset' must be one of 'detected'"):
        type(base)(
            {**base.settings_dict, "OPTIONS": {"pool": {"session_reset": "sometimes"}}}, "x"
        )


MYSQL_STATE = {
    "user variable": ("SET @leak = 42", "SELECT @leak"),
    "session variable": ("SET SESSION sql_mode = 'ANSI'", "SELECT @@SESSION.sql_mode"),
    "named lock": ("SELECT GET_LOCK('leak', 1)", "SELECT IS_USED_LOCK('leak') IS NOT NULL"),
}


@needs_mysql
@pytest.mark.parametrize("kind", list(MYSQL_STATE))
def test_mysql_changed_session_is_replaced(kind):
    change, show = MYSQL_STATE[kind]
    with proxied("mysql") as (wrapper, _):
        session = session_id(wrapper)
        before = checkout(wrapper, show)
        assert checkout(wrapper, change, show) != before
        assert checkout(wrapper, show) == before
        assert session_id(wrapper) != session
        stats = get_stats("mysql-proxied")
        assert stats["sessions_discarded"] == 1
        assert stats["returns_bad"] == 0 and stats["connections_lost"] == 0


@needs_mysql
def test_mysql_temporary_table_is_gone_at_the_next_checkout():
    # MariaDB 10.x lists temporary tables nowhere: creating it again tells.
    with proxied("mysql") as (wrapper, _):
        checkout(wrapper, "CREATE TEMPORARY TABLE leak (a int)", "INSERT INTO leak VALUES (1)")
        checkout(wrapper, "CREATE TEMPORARY TABLE leak (a int)")
        assert get_stats("mysql-proxied")["sessions_discarded"] == 2


@needs_mysql
def test_mysql_clean_checkout_keeps_its_session_and_sends_nothing_more():
    with proxied("mysql") as (wrapper, proxy):
        session = session_id(wrapper)
        mark = proxy.mark()
        for i in range(3):
            checkout(wrapper, f"SELECT {i}")
        assert [sql for _, sql in proxy.statements_since(mark)] == [
            "SELECT 0",
            "SELECT 1",
            "SELECT 2",
        ]
        assert session_id(wrapper) == session


@needs_mysql
def test_mysql_refuses_session_reset_always():
    base = connections["mysql"]
    with pytest.raises(ImproperlyConfigured, match=r"session_reset='always'.*cannot be reset"):
        type(base)({**base.settings_dict, "OPTIONS": {"pool": {"session_reset": "always"}}}, "x")


@needs_mysql
def test_mysql_constraint_checks_switched_off_and_on_keep_the_session():
    # Django does this around fixtures, flushes and migrations on MySQL.
    with proxied("mysql") as (wrapper, _):
        session = session_id(wrapper)
        with wrapper.constraint_checks_disabled():
            checkout_without_return = wrapper.cursor()
            checkout_without_return.execute("SELECT 1")
        wrapper.close_if_unusable_or_obsolete()
        assert session_id(wrapper) == session
        with wrapper.cursor():
            wrapper.disable_constraint_checking()
        wrapper.close_if_unusable_or_obsolete()  # left off: replaced
        assert session_id(wrapper) != session
        assert checkout(wrapper, "SELECT @@foreign_key_checks") == ((1,),)
