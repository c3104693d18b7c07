"""The database aliases the Django-level tests run on: MySQL only where a server answered."""

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

#: ``pytestmark`` for modules that use both: real transactions, both databases.
django_db = pytest.mark.django_db(
    transaction=True, databases=["default", "mysql"] if HAVE_MYSQL else ["default"]
)
