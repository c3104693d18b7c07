"""The app queries the REAL database at startup, before any test database exists.

So when Django's test runner starts, the process already has a pool for
``default`` connected to ``dp_runner_real``. Django's built-in pool keeps
serving from such a pool after the runner renames the database to
``test_dp_runner_real``; the pooled backend must not.
"""

from __future__ import annotations

import json
import os
import warnings

from django.apps import AppConfig

#: A row the test module inserts in the real database before every run: the
#: tests must never see it, and must never delete it (a TransactionTestCase
#: flushes every table of the database it runs against).
SENTINEL = "real-database-sentinel"


class RunnerAppConfig(AppConfig):
    name = "tests.runner_project.runnerapp"
    label = "runnerapp"
    default = True

    def ready(self) -> None:
        from django.db import connection

        from django_pool.backends import get_pool

        from .models import Note

        with warnings.catch_warnings():
            # "Accessing the database during app initialization is discouraged":
            # exactly what this project does on purpose.
            warnings.simplefilter("ignore", RuntimeWarning)
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_database()")
                database = cursor.fetchone()[0]
            migrated = Note._meta.db_table in connection.introspection.table_names()
            sentinel_seen = migrated and Note.objects.filter(name=SENTINEL).exists()
        # The connection stays checked out, as after any query at startup.
        report_dir = os.environ.get("DP_RUNNER_REPORT_DIR")
        if report_dir:
            pool = get_pool("default")
            record = {
                "pid": os.getpid(),
                "database": database,
                "sentinel_seen": sentinel_seen,
                "pool": pool is not None,
                "pool_size": pool.get_stats()["pool_size"] if pool else None,
            }
            path = os.path.join(report_dir, f"ready-{os.getpid()}.json")
            with open(path, "w") as fh:
                json.dump(record, fh)
