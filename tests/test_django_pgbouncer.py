"""Behind a real PgBouncer: ``OPTIONS["pool"]["server_pooling"]`` (see backends/server_pooling.py).

The PgBouncers are the tests' own (tests/pgbouncer.py), each lending at most
two server sessions, in front of the default alias's test database. The
ORM's own work through them is in tests/test_django_backends.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import NotSupportedError, connections, transaction
from django.db.utils import load_backend
from django.test import override_settings

from django_pool.backends import close_pools, get_pool, get_stats
from tests.databases import django_db
from tests.djangoapp.models import Item
from tests.pgbouncer import SERVER_POOL_SIZE, connect

pytestmark = django_db

ADVISORY_KEYS = (731_001, 731_002)
OTHERS_TIMEOUT = "4321s"


def end_request(alias: str) -> None:
    connections[alias].close_if_unusable_or_obsolete()


def database_name() -> str:
    return str(connections["default"].settings_dict["NAME"])


def direct() -> Any:
    """A connection straight to PostgreSQL, past PgBouncer: to see every server session."""
    pg = settings.DATABASES["default"]
    return connect(pg["HOST"], pg["PORT"], pg["USER"], pg["PASSWORD"], database_name())


def through(bouncer: Any) -> Any:
    """A client of PgBouncer of this test's own, beside the pool's."""
    pg = settings.DATABASES["default"]
    return connect("127.0.0.1", bouncer.port, pg["USER"], pg["PASSWORD"], database_name())


@contextlib.contextmanager
def every_server_session(bouncer: Any) -> Iterator[list[Any]]:
    """Clients, each inside a transaction on its own server session, for every session.

    PgBouncer lends each of them one of its server sessions (SERVER_POOL_SIZE)
    for the length of the transaction, so together they reach every session.
    """
    clients = [through(bouncer) for _ in range(SERVER_POOL_SIZE)]
    try:
        for client in clients:
            client.execute("BEGIN")
        yield clients
        for client in clients:
            client.execute("COMMIT")
    finally:
        for client in clients:
            client.close()


def leave_state_on_every_server_session(bouncer: Any) -> None:
    """Another client's session state, on each of PgBouncer's server sessions."""
    with every_server_session(bouncer) as clients:
        for number, (client, key) in enumerate(zip(clients, ADVISORY_KEYS, strict=False)):
            client.execute("SELECT pg_advisory_lock(%s)", [key])
            client.execute(f"SET statement_timeout = '{OTHERS_TIMEOUT}'")
            client.execute(f"CREATE TEMP TABLE others_{number} (x int)")


def advisory_locks_held(*keys: int) -> int:
    """Advisory locks on ``keys`` held by any session of the server."""
    with direct() as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = ANY(%s)",
                [list(keys)],
            ).fetchone()[0]
        )


def others_state(bouncer: Any) -> dict[str, Any]:
    locks = advisory_locks_held(*ADVISORY_KEYS)
    with direct() as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relname LIKE 'others_%'"
        ).fetchone()
    with every_server_session(bouncer) as clients:
        timeouts = [client.execute("SHOW statement_timeout").fetchone()[0] for client in clients]
    return {"advisory locks": locks, "temp tables": tables[0], "timeouts": timeouts}


@pytest.fixture
def bouncers(pgbouncers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield pgbouncers
    for alias in ("bouncer_transaction", "bouncer_unaware", "bouncer_session"):
        connections[alias].close()
        close_pools(alias)
    for bouncer in pgbouncers.values():  # what the test left on the server sessions goes
        bouncer.disconnect(database_name())


def a_request_that_changes_its_session(alias: str) -> None:
    """Queries, a ``SET``, a session lock and a temporary table: refused behind a
    transaction pooler django-pool knows about, reset on return otherwise."""
    items = Item.objects.using(alias)
    items.count()
    for sql in (
        "SET search_path TO public",
        "SELECT pg_advisory_lock(731009)",
        "CREATE TEMP TABLE mine (x int)",
    ):
        with contextlib.suppress(NotSupportedError), connections[alias].cursor() as cursor:
            cursor.execute(sql)
    items.exists()
    end_request(alias)


def test_other_clients_session_state_is_left_alone(bouncers):
    leave_state_on_every_server_session(bouncers["transaction"])
    expected = {"advisory locks": 2, "temp tables": 2, "timeouts": [OTHERS_TIMEOUT] * 2}
    assert others_state(bouncers["transaction"]) == expected
    for _ in range(10):
        a_request_that_changes_its_session("bouncer_transaction")
    assert others_state(bouncers["transaction"]) == expected
    stats = get_pool("bouncer_transaction").get_stats()
    assert stats["requests_num"] == 10
    assert get_pool("bouncer_transaction") is not None


def test_without_server_pooling_the_reset_lands_on_other_clients_sessions(bouncers):
    """What the option prevents: the reset of what a request did undoes others' state."""
    leave_state_on_every_server_session(bouncers["transaction"])
    for _ in range(4):
        a_request_that_changes_its_session("bouncer_unaware")
    state = others_state(bouncers["transaction"])
    assert state["advisory locks"] < 2, state
    assert state["temp tables"] < 2, state
    assert state["timeouts"] != [OTHERS_TIMEOUT] * 2, state


def test_no_reset_is_sent_only_the_requests_statements(bouncers):
    bouncer = bouncers["transaction"]
    database = database_name()
    close_pools("bouncer_transaction")
    Item.objects.using("bouncer_transaction").count()  # the pool's connections are opened
    end_request("bouncer_transaction")
    before = bouncer.queries(database)
    for _ in range(20):
        items = Item.objects.using("bouncer_transaction")
        with transaction.atomic(using="bouncer_transaction"):
            with connections["bouncer_transaction"].cursor() as cursor:
                cursor.execute("SET LOCAL app.tenant = '7'")
                cursor.execute("SELECT current_setting('app.tenant')")
                assert cursor.fetchone() == ("7",)
            items.count()
        end_request("bouncer_transaction")
    forwarded = (bouncer.queries(database) - before) / 20
    # BEGIN, SET LOCAL, SELECT, count, COMMIT; and a ping when idle for long.
    assert 5 <= forwarded < 6, forwarded
    assert get_stats("bouncer_transaction")["sessions_reset"] == 0


REFUSED = [
    ("SET search_path TO public", "SETTINGS", "SET LOCAL"),
    ("SELECT set_config('app.tenant', '7', false)", "SETTINGS", "set_config(name, value, true)"),
    ("LISTEN jobs", "LISTEN", "a connection of its own"),
    ("SELECT pg_advisory_lock(731003)", "ADVISORY_LOCKS", "pg_advisory_xact_lock()"),
    ("CREATE TEMP TABLE scratch (x int)", "TEMP", "ON COMMIT DROP"),
    ("PREPARE one AS SELECT 1", "PREPARED", "prepared statements"),
    ("/* a comment */ SET ROLE postgres", "SETTINGS", "SET LOCAL"),
]


@pytest.mark.parametrize(("sql", "kind", "instead"), REFUSED)
def test_session_state_is_refused_before_it_is_sent(bouncers, sql, kind, instead):
    bouncer = bouncers["transaction"]
    database = database_name()
    wrapper = connections["bouncer_transaction"]
    Item.objects.using("bouncer_transaction").count()
    before = bouncer.queries(database)
    with pytest.raises(NotSupportedError) as raised, wrapper.cursor() as cursor:
        cursor.execute(sql)
    message = str(raised.value)
    assert "server_pooling" in message and kind in message and instead in message, message
    assert sql in message, message  # the statement, named
    assert bouncer.queries(database) == before, "the refused statement was sent"
    assert Item.objects.using("bouncer_transaction").count() == 0  # the connection goes on
    end_request("bouncer_transaction")
    assert advisory_locks_held(731003) == 0


def test_what_ends_with_the_transaction_is_allowed(bouncers):
    alias = "bouncer_transaction"
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SET LOCAL search_path TO pg_catalog, public")
        cursor.execute("SELECT set_config('app.tenant', '9', true)")
        cursor.execute("SELECT pg_advisory_xact_lock(731004)")
        cursor.execute("CREATE TEMP TABLE scratch (x int) ON COMMIT DROP")
        cursor.execute("INSERT INTO scratch VALUES (1)")
        cursor.execute("SELECT current_setting('app.tenant'), count(*) FROM scratch")
        assert cursor.fetchone() == ("9", 1)
    end_request(alias)
    with every_server_session(bouncers["transaction"]) as clients:
        for client in clients:  # nothing of it is left on any server session
            assert client.execute("SELECT current_setting('app.tenant', true)").fetchone()[0] in (
                None,
                "",
            )
            assert client.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    assert advisory_locks_held(731004) == 0


def test_session_mode_resets_sessions_as_without_a_pooler(bouncers):
    alias = "bouncer_session"
    close_pools(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute("SET search_path TO pg_catalog")
        cursor.execute("SELECT pg_advisory_lock(731005)")
    end_request(alias)
    assert get_stats(alias)["sessions_reset"] == 1
    for _ in range(3):
        with connections[alias].cursor() as cursor:
            cursor.execute("SHOW search_path")
            assert cursor.fetchone()[0] == '"$user", public'
        end_request(alias)
    assert advisory_locks_held(731005) == 0


def prepared_wrapper(prepare_threshold: Any = "default") -> Any:
    """A wrapper on the transaction PgBouncer whose cursors bind on the server (psycopg 3)."""
    options = dict(settings.DATABASES["bouncer_transaction"]["OPTIONS"])
    options["server_side_binding"] = True
    if prepare_threshold != "default":
        options["prepare_threshold"] = prepare_threshold
    settings_dict = {
        **connections["bouncer_transaction"].settings_dict,
        "OPTIONS": options,
    }
    wrapper_class = load_backend("django_pool.backends.postgresql").DatabaseWrapper
    return wrapper_class(settings_dict, alias="bouncer_prepared")


def run_prepared_queries(bouncer: Any, wrapper: Any) -> list[str]:
    """The same query many times, its server session changing between runs; the errors."""
    errors = []
    for run in range(12):
        holder = through(bouncer) if run % 2 else None
        if holder is not None:  # takes the session PgBouncer would have lent next
            holder.execute("BEGIN")
            holder.execute("SELECT 1")
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM djangoapp_item WHERE quantity > %s", [run])
                cursor.fetchone()
        except Exception as exc:
            errors.append(str(exc).splitlines()[0])
        finally:
            wrapper.close_if_unusable_or_obsolete()
            if holder is not None:
                holder.close()
    return errors


@pytest.mark.skipif(
    connections["default"].Database.__name__ != "psycopg", reason="psycopg 3's prepared statements"
)
def test_psycopg_prepared_statements_are_off_behind_a_transaction_pooler(bouncers):
    wrapper = prepared_wrapper()
    try:
        wrapper.ensure_connection()
        assert wrapper.connection.prepare_threshold is None
        wrapper.close_if_unusable_or_obsolete()
        assert run_prepared_queries(bouncers["transaction"], wrapper) == []
    finally:
        wrapper.close()
        close_pools("bouncer_prepared")
    # PgBouncer 1.18 does not track them: preparing is what would break.
    wrapper = prepared_wrapper(prepare_threshold=0)
    try:
        errors = run_prepared_queries(bouncers["transaction"], wrapper)
        assert any("prepared statement" in error for error in errors), errors
    finally:
        wrapper.close()
        close_pools("bouncer_prepared")


# --------------------------------------------------------------------------- #
# The settings, checked (no server needed)
# --------------------------------------------------------------------------- #


def pooled_settings(**changes: Any) -> dict[str, Any]:
    options = {"pool": {"server_pooling": "transaction", **changes.pop("pool", {})}}
    options.update(changes.pop("OPTIONS", {}))
    return {
        **settings.DATABASES["default"],
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": options,
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DISABLE_SERVER_SIDE_CURSORS": False}, "DISABLE_SERVER_SIDE_CURSORS = True"),
        ({"pool": {"session_reset": "always"}}, "'session_reset': 'always' cannot be used"),
        ({"pool": {"server_pooling": "statement"}}, "'server_pooling' must be one of"),
        ({"OPTIONS": {"assume_role": "reader"}}, "OPTIONS['assume_role']"),
    ],
)
def test_settings_that_cannot_work_behind_a_transaction_pooler_are_refused(changes, message):
    wrapper_class = load_backend("django_pool.backends.postgresql").DatabaseWrapper
    with pytest.raises(ImproperlyConfigured, match=r"server_pooling|DISABLE") as raised:
        wrapper_class(pooled_settings(**changes), alias="checked")
    assert message in str(raised.value)
    assert "DATABASES['checked']['OPTIONS']['pool']" in str(raised.value)


def test_server_pooling_is_for_postgresql():
    wrapper_class = load_backend("django_pool.backends.mysql").DatabaseWrapper
    with pytest.raises(ImproperlyConfigured, match=r"is for PostgreSQL .* not mysql"):
        wrapper_class(pooled_settings(ENGINE="django_pool.backends.mysql"), alias="checked")


@pytest.mark.django_db(transaction=True, databases="__all__")  # Django 6.1 checks them all
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_system_check_refuses_server_side_cursors_behind_a_transaction_pooler():
    checked = pooled_settings(DISABLE_SERVER_SIDE_CURSORS=False)
    with override_settings(DATABASES={**settings.DATABASES, "checked": checked}):
        errors = [m for m in checks.run_checks() if m.id == "django_pool.E001"]
    assert len(errors) == 1 and "DISABLE_SERVER_SIDE_CURSORS" in errors[0].msg, errors
