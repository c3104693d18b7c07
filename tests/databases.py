"""The database aliases the Django-level tests run on: MySQL only where a server answered,
PgBouncer's only where it is installed."""

from __future__ import annotations

import pytest
from django.conf import settings

HAVE_MYSQL = "mysql" in settings.DATABASES

needs_mysql = pytest.mark.skipif(not HAVE_MYSQL, reason="no MySQL/MariaDB server answered")

#: Parametrize a test over the pooled PostgreSQL and MySQL aliases.
ALIASES = [
    pytest.param("default", id="postgresql"),
    pytest.param("mysql", id="mysql", marks=needs_mysql),
]

HAVE_PGBOUNCER = settings.PGBOUNCERS is not None

needs_pgbouncer = pytest.mark.skipif(
    not HAVE_PGBOUNCER, reason=f"no PgBouncer: {settings.PGBOUNCER_UNAVAILABLE}"
)

#: The default alias's test database through PgBouncer: in transaction mode
#: with ``server_pooling="transaction"``, and in session mode.
BOUNCER_ALIASES = [
    pytest.param("bouncer_transaction", id="pgbouncer-transaction", marks=needs_pgbouncer),
    pytest.param("bouncer_session", id="pgbouncer-session", marks=needs_pgbouncer),
]

#: ``pytestmark`` for modules that use them all: real transactions, every database.
django_db = pytest.mark.django_db(
    transaction=True,
    databases=[
        "default",
        *(["mysql"] if HAVE_MYSQL else []),
        *([alias for alias in settings.DATABASES if alias.startswith("bouncer_")]),
    ],
)
