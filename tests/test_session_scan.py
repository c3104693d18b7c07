"""The statement scan that decides whether a returned connection needs a reset.

Pure logic: each statement is paired with the session state it leaves. The
resets themselves are tested on real servers in test_django_sessions.py.
"""

from __future__ import annotations

import pytest

from django_pool.session import DIALECTS, Change

C = Change
POSTGRESQL = [
    ("SELECT 1", C.NONE),
    ("UPDATE t SET a = 1", C.NONE),
    ("SELECT temperature FROM weather", C.NONE),
    ("SET ROLE tenant", C.SETTINGS),
    ("  set search_path = a, public", C.SETTINGS),
    ("SET SESSION AUTHORIZATION bob", C.SETTINGS),
    ("RESET ALL", C.SETTINGS),
    ("SET LOCAL search_path = a", C.NONE),
    ("SET CONSTRAINTS ALL IMMEDIATE", C.NONE),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", C.NONE),
    ("SELECT set_config('app.tenant', '42', false)", C.SETTINGS),
    ("SELECT set_config('app.tenant', %s, %s)", C.SETTINGS),
    ("SELECT set_config('app.tenant', '42', true)", C.NONE),
    ("CREATE TEMP TABLE t (a int)", C.TEMP),
    ("create temporary view v as select 1", C.TEMP),
    ("SELECT * INTO TEMP TABLE t FROM x", C.TEMP),
    ("SELECT * INTO TEMP t FROM x", C.TEMP),
    ("CREATE TABLE pg_temp.t (a int)", C.TEMP),
    ("LISTEN jobs", C.LISTEN),
    ("PREPARE p AS SELECT 1", C.PREPARED),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", C.CURSORS),
    ("SELECT pg_advisory_lock(1)", C.ADVISORY_LOCKS),
    ("SELECT pg_try_advisory_lock_shared(1)", C.ADVISORY_LOCKS),
    ("SELECT pg_advisory_xact_lock(1)", C.NONE),
    ("SELECT 1; SET search_path = a", C.SETTINGS),
    ("LISTEN a; CREATE TEMP TABLE t (a int)", C.LISTEN | C.TEMP),
    (b"SET x = 1", C.OTHER),
    # Comments hide nothing, wherever they are.
    ("/* request 42 */ SET ROLE other", C.SETTINGS),
    ("-- note\nSET search_path TO y", C.SETTINGS),
    ("SELECT 1 /* a; b */; SET ROLE other", C.SETTINGS),
    ("/* a */ /* b */\n-- c\n  set role other", C.SETTINGS),
    ("SELECT '--'; SET ROLE other", C.SETTINGS),
    ("SELECT '/* not a comment'; LISTEN a", C.LISTEN),
    ("SELECT 1 -- SET ROLE other", C.NONE),  # commented out: not run
    ("SELECT '-- SET ROLE x' /* ; SET ROLE y */", C.NONE),
    # Code the server runs: its effect cannot be read off the text.
    ("DO $$BEGIN EXECUTE 'SET search_path TO y'; END$$", C.OTHER),
    ("/* x */ DO $$BEGIN PERFORM 1; END$$", C.OTHER),
    ("CALL refresh_all()", C.OTHER),
]
MYSQL = [
    ("SELECT 1", C.NONE),
    ("UPDATE t SET a = 1", C.NONE),
    ("SET @x = 1", C.SETTINGS),
    ("SET NAMES latin1", C.SETTINGS),
    ("SET SESSION sql_mode = 'ANSI'", C.SETTINGS),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", C.NONE),
    ("SELECT @a := 1", C.SETTINGS),
    ("USE other", C.SETTINGS),
    ("CREATE TEMPORARY TABLE t (a int)", C.TEMP),
    ("SELECT GET_LOCK('a', 1)", C.ADVISORY_LOCKS),
    ("LOCK TABLES t READ", C.OTHER),
    ("SET FOREIGN_KEY_CHECKS = 0", C.CONSTRAINT_CHECKS),
    ("SET foreign_key_checks=0; SET foreign_key_checks=1", C.NONE),
    ("/* request 42 */ SET @x = 1", C.SETTINGS),
    ("-- note\nSET NAMES latin1", C.SETTINGS),
    ("CALL do_things()", C.OTHER),
]


@pytest.mark.parametrize(("sql", "expected"), POSTGRESQL)
def test_postgresql_statements(sql, expected):
    assert DIALECTS["postgresql"].after(C.NONE, sql) == expected


@pytest.mark.parametrize(("sql", "expected"), MYSQL)
def test_mysql_statements(sql, expected):
    assert DIALECTS["mysql"].after(C.NONE, sql) == expected


def test_switching_a_setting_back_clears_only_that_change():
    mysql = DIALECTS["mysql"]
    for _ in range(2):  # the second time, from the memo where one applies
        state = mysql.after(C.NONE, "SET @x = 1")
        state = mysql.after(state, "SET FOREIGN_KEY_CHECKS = 0")
        assert state == C.SETTINGS | C.CONSTRAINT_CHECKS
        assert mysql.after(state, "SET FOREIGN_KEY_CHECKS = 1") == C.SETTINGS


def test_statements_that_only_set_bits_are_remembered_and_others_are_not():
    pg, mysql = type(DIALECTS["postgresql"])(), DIALECTS["mysql"]
    assert pg.after(C.NONE, "SELECT 1") == C.NONE
    assert pg.after(C.LISTEN, "SET search_path TO x") == C.LISTEN | C.SETTINGS
    assert pg.known == {"SELECT 1": 0, "SET search_path TO x": C.SETTINGS}
    # A switch turned back on clears a bit: its effect depends on the state.
    mysql.after(C.CONSTRAINT_CHECKS, "SET foreign_key_checks = 1")
    assert "SET foreign_key_checks = 1" not in mysql.known
    # Composed statements are not strings: never remembered, always OTHER.
    assert pg.after(C.NONE, ["SELECT 1"]) == C.OTHER
    long = "SELECT 1 -- " + "x" * 5000
    pg.after(C.NONE, long)
    assert long not in pg.known


def test_the_memo_is_bounded():
    pg = type(DIALECTS["postgresql"])()
    for i in range(3000):
        pg.after(C.NONE, f"SELECT {i}")
    assert 0 < len(pg.known) <= 1024


def test_postgresql_reset_undoes_exactly_what_changed():
    pg = DIALECTS["postgresql"]
    assert pg.reset_sql(C.LISTEN) == "UNLISTEN *"
    assert pg.reset_sql(C.TEMP | C.ADVISORY_LOCKS) == (
        "SELECT pg_advisory_unlock_all(); DISCARD TEMP"
    )
    everything = pg.reset_sql(C.ALL)
    for statement in ("CLOSE ALL", "RESET ALL", "DEALLOCATE ALL", "UNLISTEN *", "DISCARD TEMP"):
        assert statement in everything


def test_mysql_cannot_reset_in_place():
    assert DIALECTS["mysql"].reset_sql(C.SETTINGS) is None
