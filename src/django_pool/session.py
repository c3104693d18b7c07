"""Session state a borrower may leave on a connection, and how to clean it.

A pooled connection keeps whatever its last borrower did to the session: a
``SET ROLE`` or ``SET search_path``, a ``set_config('app.tenant', ...)`` used by
row-level security, a temporary table, a ``LISTEN``, a prepared statement, a
session advisory lock. The next request must not inherit any of it.

Resetting every returned connection costs a round trip per request, so the
statements a borrower sends are scanned instead (:meth:`Dialect.after`), and
only a connection whose session changed is reset on its way back
(:meth:`Dialect.reset_sql`). The scan is a handful of substring tests and an
anchored match, about a microsecond per statement, and its result is kept
per statement text (the ORM sends the same few texts over and over), so a
statement seen before costs one dict lookup. It errs on the side of
resetting: a word like ``temp`` or ``set_config`` inside a string literal
costs one unneeded reset, never a leak. Comments are no hiding place: a
statement with one is scanned with its comments removed. A statement whose
effect cannot be known from its text (a ``DO`` block, a ``CALL``) counts as
changing anything. Changes made without going through the scanned path (on
the raw driver connection) or inside a function a query calls are not seen
by the scan; on PostgreSQL the settings the server reports back on its own
(time zone, role, date style...) are compared on return as well (see
``Pool.reported_settings_changed``), and the ``"always"`` mode covers the rest.
"""

from __future__ import annotations

import enum
import re


class Change(enum.IntFlag):
    """Kinds of session state, one bit each.

    The scan works on plain ints (an ``IntFlag`` operation runs Python code in
    ``enum``, a cost on every statement); ``Change(value)`` names them.
    """

    NONE = 0
    SETTINGS = enum.auto()  # SET / RESET / set_config(..., false): settings, role, search_path
    TEMP = enum.auto()  # temporary tables, views, sequences
    LISTEN = enum.auto()  # LISTEN channels
    PREPARED = enum.auto()  # PREPARE'd statements
    ADVISORY_LOCKS = enum.auto()  # session-level advisory locks (GET_LOCK on MySQL)
    CURSORS = enum.auto()  # cursors that outlive their transaction (WITH HOLD)
    CONSTRAINT_CHECKS = enum.auto()  # MySQL's foreign_key_checks switched off
    OTHER = enum.auto()  # anything else that lives as long as the session
    ALL = (
        SETTINGS | TEMP | LISTEN | PREPARED | ADVISORY_LOCKS | CURSORS | CONSTRAINT_CHECKS | OTHER
    )
    # Not session state: a transaction opened by a statement (BEGIN, START
    # TRANSACTION) rather than by Django, until COMMIT or ROLLBACK. A rollback
    # undoes it; mysqlclient cannot tell it is open.
    TRANSACTION = enum.auto()


_OTHER = int(Change.OTHER)
_TRANSACTION = int(Change.TRANSACTION)
# Statements that open and end a transaction, in every dialect.
_TRANSACTION_LEADING = (("BEGIN", Change.TRANSACTION), ("START", Change.TRANSACTION))
_TRANSACTION_ENDS = frozenset({"COMMIT", "ROLLBACK", "END", "ABORT"})
_TO_SAVEPOINT = re.compile(r"\s+(?:WORK\s+|TRANSACTION\s+)?TO\b", re.IGNORECASE)
_SETTINGS = int(Change.SETTINGS)
_ALL = int(Change.ALL)
# Comments, and the string literals and quoted names a comment marker may sit
# in (kept as they are). Removed before a statement with a marker is scanned.
_COMMENT_OR_QUOTED = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|/\*.*?(?:\*/|$)|--[^\n]*""", re.DOTALL
)


def _without_comments(sql: str) -> str:
    return _COMMENT_OR_QUOTED.sub(lambda m: m[0] if m[0][0] in "'\"" else " ", sql)


# Statements remembered per dialect (Dialect.known), and the longest remembered:
# at most about 2 MB of text, and a full memo simply starts again.
_KNOWN_MAX = 1024
_KNOWN_MAX_LENGTH = 2048


class Dialect:
    """How one database's session state is changed, and how it is put back."""

    #: Statement-leading keywords (upper case) and what they change.
    leading: tuple[tuple[str, Change], ...] = ()
    #: ``SET`` forms that last only for the transaction (or the next one).
    transaction_scoped_set: re.Pattern[str] = re.compile(r"(?!)")
    #: Settings that are switched off and back on (Django toggles constraint
    #: checks around fixtures, flushes and migrations): a ``SET`` pattern with
    #: the value as group 1, the values that restore the default, and the bit.
    switches: tuple[tuple[re.Pattern[str], frozenset[str], Change], ...] = ()
    #: Lower-case substrings that may change the session anywhere in a statement,
    #: each with a pattern that confirms it (None: the substring is enough).
    anywhere: tuple[tuple[str, re.Pattern[str] | None, Change], ...] = ()
    #: What a server-side cursor (Django's ``chunked_cursor()``, behind
    #: ``.iterator()``) may leave behind if it is not read to the end.
    chunked_cursor_change = Change.NONE

    def __init__(self) -> None:
        leading = (*self.leading, *_TRANSACTION_LEADING)
        self._leading_change = {keyword: int(change) for keyword, change in leading}
        self._leading_change.update(dict.fromkeys(_TRANSACTION_ENDS, 0))
        self._anywhere = [
            (needle, confirm, int(change)) for needle, confirm, change in self.anywhere
        ]
        self._switches = [(pattern, on, int(bit)) for pattern, on, bit in self.switches]
        words = "|".join(sorted(self._leading_change, key=len, reverse=True))
        self._leading_re = re.compile(rf"\s*({words})\b", re.IGNORECASE)
        self._leading_words = tuple(self._leading_change)
        #: Statement texts seen before whose only effect is to set these bits
        #: (those that clear one, like a switch turned back on, are not kept):
        #: the hot path looks here first, ``state | known[sql]``, and calls
        #: :meth:`after` on a miss. Shared by every thread without a lock:
        #: each get, set and clear is one atomic dict operation, and a value
        #: depends only on its key, so a race can only lose an entry (scanned
        #: again next time), never give a wrong answer.
        self.known: dict[str, int] = {}

    def after(self, state: int, sql: object) -> int:
        """What the session holds after running ``sql`` on one that held ``state``."""
        if not isinstance(sql, str):
            # psycopg's sql.Composed and the like: not worth rendering to scan.
            return state | _OTHER
        if len(sql) > _KNOWN_MAX_LENGTH:
            return self._scan(state, sql)
        bits = self._scan(0, sql)
        every = _ALL | _TRANSACTION
        if self._scan(every, sql) != every:  # it clears a bit: depends on the state
            return self._scan(state, sql)
        if len(self.known) >= _KNOWN_MAX:
            self.known.clear()
        self.known[sql] = bits
        return state | bits

    def _scan(self, state: int, sql: str) -> int:
        # Plain string operations first: a case-insensitive regex costs more
        # than the rest of the pool's work on a request.
        if "--" in sql or "/*" in sql:
            sql = _without_comments(sql)
        if ";" in sql:
            for statement in sql.split(";"):
                state = self._after_statement(state, statement)
        elif sql[:64].lstrip()[:8].upper().startswith(self._leading_words):
            state = self._after_statement(state, sql)
        lowered = sql.lower()
        for needle, confirm, change in self._anywhere:
            if needle in lowered and (confirm is None or confirm.search(sql)):
                state |= change
        return state

    def _after_statement(self, state: int, statement: str) -> int:
        match = self._leading_re.match(statement)
        if match is None:
            return state
        keyword = match[1].upper()
        if keyword in _TRANSACTION_ENDS:
            # ROLLBACK TO SAVEPOINT leaves the transaction open.
            return state if _TO_SAVEPOINT.match(statement, match.end()) else state & ~_TRANSACTION
        if keyword != "SET":
            return state | self._leading_change[keyword]
        if self.transaction_scoped_set.match(statement):
            return state
        return self._after_set(state, statement)

    def _after_set(self, state: int, statement: str) -> int:
        for pattern, defaults, bit in self._switches:
            switch = pattern.match(statement)
            if switch is not None:
                return state & ~bit if switch[1].upper() in defaults else state | bit
        return state | _SETTINGS

    def reset_sql(self, changes: int) -> str | None:
        """One string of statements that undoes ``changes``, sent in one round trip.

        None when the session cannot be cleaned in place: it is then closed
        and replaced.
        """
        return None


class PostgreSQL(Dialect):
    leading = (
        ("SET", Change.SETTINGS),
        ("RESET", Change.SETTINGS),
        ("LISTEN", Change.LISTEN),
        ("PREPARE", Change.PREPARED),
        ("DECLARE", Change.CURSORS),
        ("LOAD", Change.OTHER),
        # Code run by the server: what it changes cannot be read off the text.
        ("DO", Change.OTHER),
        ("CALL", Change.OTHER),
    )
    # In autocommit mode Django declares them WITH HOLD: they outlive the query.
    chunked_cursor_change = Change.CURSORS
    transaction_scoped_set = re.compile(
        r"\s*SET\s+(?:LOCAL|CONSTRAINTS|TRANSACTION)\b", re.IGNORECASE
    )
    anywhere = (
        # set_config(name, value, true) is transaction-local; anything else is not.
        (
            "set_config",
            re.compile(r"set_config\s*\((?![^;]*,\s*true\s*\))", re.I),
            Change.SETTINGS,
        ),
        # pg_advisory_lock, pg_try_advisory_lock(_shared); not the *_xact_* ones.
        ("advisory_lock", None, Change.ADVISORY_LOCKS),
        (
            "temp",
            re.compile(
                r"\btemp(?:orary)?\s+(?:table|view|sequence)\b|\binto\s+temp|\bpg_temp\.", re.I
            ),
            Change.TEMP,
        ),
    )

    def reset_sql(self, changes: int) -> str:
        statements = []
        if changes & (Change.CURSORS | Change.OTHER):
            statements.append("CLOSE ALL")
        if changes & (Change.SETTINGS | Change.OTHER):
            # RESET ALL leaves the session user's role switch alone.
            statements += ["SET SESSION AUTHORIZATION DEFAULT", "RESET ALL"]
        if changes & (Change.PREPARED | Change.OTHER):
            statements.append("DEALLOCATE ALL")
        if changes & (Change.LISTEN | Change.OTHER):
            statements.append("UNLISTEN *")
        if changes & (Change.ADVISORY_LOCKS | Change.OTHER):
            statements.append("SELECT pg_advisory_unlock_all()")
        if changes & (Change.TEMP | Change.OTHER):
            # DISCARD ALL would do all of this, but not in the implicit
            # transaction of a multi-statement query.
            statements.append("DISCARD TEMP")
        if changes & Change.OTHER:
            statements += ["DISCARD PLANS", "DISCARD SEQUENCES"]
        return "; ".join(statements)


class MySQL(Dialect):
    """MySQL/MariaDB: detected, but not reset in place.

    COM_RESET_CONNECTION would do it, but neither mysqlclient (2.2) nor
    PyMySQL exposes it, and it also clears what the connection was set up
    with (``init_command``, isolation level, sql_mode), which the client only
    sends when connecting. So a changed session is closed and replaced.
    """

    leading = (
        ("SET", Change.SETTINGS),
        ("USE", Change.SETTINGS),
        ("PREPARE", Change.PREPARED),
        ("LOCK", Change.OTHER),  # LOCK TABLES lasts until UNLOCK or the session ends
        ("CALL", Change.OTHER),  # a stored procedure: anything
    )
    # SET TRANSACTION without SESSION/GLOBAL applies to the next transaction only.
    transaction_scoped_set = re.compile(r"\s*SET\s+TRANSACTION\b", re.IGNORECASE)
    switches = (
        (
            re.compile(
                r"\s*SET\s+(?:SESSION\s+|@@(?:SESSION\.)?)?foreign_key_checks\s*=\s*(\w+)\s*$",
                re.IGNORECASE,
            ),
            frozenset({"1", "ON"}),
            Change.CONSTRAINT_CHECKS,
        ),
    )
    anywhere = (
        ("get_lock", None, Change.ADVISORY_LOCKS),
        ("temporary", re.compile(r"\btemporary\s+table\b", re.I), Change.TEMP),
        (":=", None, Change.SETTINGS),  # user variables assigned inside a query
    )


DIALECTS: dict[str, Dialect] = {"postgresql": PostgreSQL(), "mysql": MySQL()}
