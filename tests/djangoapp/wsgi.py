"""WSGI entry point for the serving tests (``tests.djangoapp.wsgi:application``).

With ``DJANGO_POOL_TEST_QUERY_AT_IMPORT=1`` the module runs an ORM query while
it is imported and keeps the connection: under ``gunicorn --preload`` that is
the master, which then forks its workers while holding a pooled connection.
The master's pid and server session go, as JSON, to the file named by
``DJANGO_POOL_TEST_IMPORT_RECORD`` (if set).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djangoapp.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()


def _query_at_import() -> None:
    from django.db import connection

    from .models import Item

    items = Item.objects.count()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        session = int(cursor.fetchone()[0])
    # The connection is deliberately not closed: it stays lent by the pool.
    record = os.environ.get("DJANGO_POOL_TEST_IMPORT_RECORD")
    if record:
        partial = f"{record}.partial"
        with open(partial, "w") as f:
            json.dump({"pid": os.getpid(), "session": session, "items": items}, f)
        os.replace(partial, record)


if os.environ.get("DJANGO_POOL_TEST_QUERY_AT_IMPORT") == "1":
    _query_at_import()
