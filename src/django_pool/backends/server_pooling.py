"""Behind a transaction pooler (PgBouncer, PgCat, Supavisor, RDS Proxy): the rules in one place.

``OPTIONS["pool"]["server_pooling"] = "transaction"`` says that the server
django-pool connects to is a pooler that lends its own server connections
one transaction at a time. Between two transactions of a django-pool
connection, the pooler may give the server session to another client, and
the next transaction may run on another session. So:

* **no session reset is ever sent.** It would run on whichever server session
  the pooler picks, maybe one another client left its own state on (a
  ``RESET ALL`` or ``pg_advisory_unlock_all()`` undoing that client's work);
* **statements whose effect outlives the transaction are refused** before they
  are sent (with ``session_reset="detected"``, the default), with an error
  naming the statement and what to use instead: the state would land on a
  session other clients get next, and this client's next transaction would
  not find it. Refused everywhere: ``SET`` without ``LOCAL``,
  ``set_config(..., false)``, ``LISTEN``, SQL ``PREPARE``, session advisory
  locks. Refused outside a transaction only: temporary tables and ``DECLARE``
  (inside one they live as long as it does, with ``ON COMMIT DROP`` and
  without ``WITH HOLD``). What the scan cannot read off the text (``DO``,
  ``CALL``, composed SQL) is sent as it is;
* a connection whose reported settings changed (a function's ``set_config``
  of ``TimeZone``...: the pooler keeps those per client) is closed, not
  reset: closing a client connection sends nothing to the server;
* server-side cursors outside a transaction (Django's ``.iterator()`` in
  autocommit declares them ``WITH HOLD``) need a session of their own:
  ``DISABLE_SERVER_SIDE_CURSORS`` must be set (checked with the options,
  and reported by the system check ``django_pool.E001``);
* psycopg 3's prepared statements live in a server session too. PgBouncer
  1.21+ with ``max_prepared_statements`` tracks them for its clients; older
  poolers do not, so the connections are made with ``prepare_threshold=None``
  (never prepare) unless ``OPTIONS["prepare_threshold"]`` says otherwise.

``"session"`` (a pooler in session mode, which lends a server session for
the whole client connection) and None (no pooler) change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import NotSupportedError

from ..session import Change

#: ``OPTIONS["pool"]["server_pooling"]``: the choices, default first.
SERVER_POOLING_CHOICES = (None, "session", "transaction")

# What each kind of session state becomes a refusal of, and what to use instead.
_ALTERNATIVES = {
    int(Change.SETTINGS): "SET LOCAL, or set_config(name, value, true), inside "
    "transaction.atomic(): the setting then ends with the transaction",
    int(Change.LISTEN): "a connection of its own straight to PostgreSQL, not through the "
    "pooler: notifications need a session that stays with one client",
    int(Change.PREPARED): "the driver's own prepared statements, through a pooler that "
    "tracks them (PgBouncer 1.21+ with max_prepared_statements), or none",
    int(Change.ADVISORY_LOCKS): "pg_advisory_xact_lock() (or pg_try_advisory_xact_lock()) "
    "inside transaction.atomic(): the lock is released when the transaction ends",
    int(Change.TEMP): "creating it inside transaction.atomic(), with ON COMMIT DROP",
    int(Change.CURSORS): "declaring it inside transaction.atomic(), without WITH HOLD",
}
_REFUSED_ALWAYS = int(Change.SETTINGS | Change.LISTEN | Change.PREPARED | Change.ADVISORY_LOCKS)
_REFUSED_OUTSIDE_TRANSACTION = int(Change.TEMP | Change.CURSORS)
# The longest piece of a refused statement an error shows (never its parameters).
_SHOWN = 200


def check_options(
    server_pooling: Any, session_reset: str, settings_dict: Mapping[str, Any], where: str
) -> None:
    """Raise ImproperlyConfigured, naming the setting, if ``server_pooling`` cannot work so."""
    if server_pooling not in SERVER_POOLING_CHOICES:
        raise ImproperlyConfigured(
            f"{where}: 'server_pooling' must be one of "
            f"{', '.join(map(repr, SERVER_POOLING_CHOICES))}, got {server_pooling!r}"
        )
    if server_pooling != "transaction":
        return
    if session_reset == "always":
        raise ImproperlyConfigured(
            f"{where}: 'session_reset': 'always' cannot be used with 'server_pooling': "
            "'transaction': the reset would run on whichever server session the pooler "
            "picks, perhaps another client's; use 'detected' (the default) or 'never'"
        )
    if not settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        raise ImproperlyConfigured(
            f"{where}: 'server_pooling': 'transaction' needs DISABLE_SERVER_SIDE_CURSORS = "
            "True in the same DATABASES entry: the server-side cursors of .iterator() "
            "outside a transaction outlive it, and the pooler gives the session to others"
        )
    if (settings_dict.get("OPTIONS") or {}).get("assume_role"):
        raise ImproperlyConfigured(
            f"{where}: OPTIONS['assume_role'] cannot be used with 'server_pooling': "
            "'transaction': it is a SET ROLE on one server session; connect as that role "
            "(USER) instead"
        )


def check_vendor(vendor: str, where: str) -> None:
    if vendor != "postgresql":
        raise ImproperlyConfigured(
            f"{where}: 'server_pooling': 'transaction' is for PostgreSQL behind a "
            f"transaction pooler (PgBouncer, PgCat, Supavisor, RDS Proxy), not {vendor}"
        )


def connection_options(options: dict[str, Any], is_psycopg3: bool) -> None:
    """Set, in place, the driver options a transaction pooler needs (unless set already)."""
    if is_psycopg3:
        options.setdefault("prepare_threshold", None)


def refused_changes(added: int, in_transaction: bool) -> int:
    """The kinds of session state among ``added`` (Change bits) refused behind the pooler."""
    refused = added & _REFUSED_ALWAYS
    if not in_transaction:
        refused |= added & _REFUSED_OUTSIDE_TRANSACTION
    return refused


def refusal(alias: str, sql: Any, refused: int) -> NotSupportedError:
    text = " ".join(str(sql).split())
    if len(text) > _SHOWN:
        text = text[: _SHOWN - 3] + "..."
    instead = "; ".join(alternative for bit, alternative in _ALTERNATIVES.items() if refused & bit)
    return NotSupportedError(
        f"DATABASES[{alias!r}] is behind a transaction pooler (OPTIONS['pool']"
        f"['server_pooling'] = 'transaction'), which hands the server session to other "
        f"clients after each transaction, and this statement changes the session "
        f"({Change(refused).name}): {text!r}. Use instead: {instead}"
    )
