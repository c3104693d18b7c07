"""Run by Django's test runner (``python -m django test``), not by pytest.

Every test writes rows and checks that it talks to the test database, never to
``dp_runner_real``. With ``DP_RUNNER_REPORT_DIR`` set, each test also leaves a
JSON record of where it ran, for the pytest side to check.
"""

from __future__ import annotations

import json
import os
import uuid

from django.db import connection, transaction
from django.test import SimpleTestCase, TestCase, TransactionTestCase

from django_pool.backends import get_pool

from .apps import SENTINEL
from .models import Note

#: ``written_by`` of every row the tests write; the pytest side looks for it
#: in the real database, where it must never appear.
WRITTEN_BY = "django-test-runner"


def current_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        return str(cursor.fetchone()[0])


def assert_in_test_database(case: SimpleTestCase) -> str:
    database = current_database()
    case.assertEqual(database, connection.settings_dict["NAME"])
    case.assertTrue(
        database.startswith("test_dp_runner_real"),
        f"a test ran against {database!r}, not a test database",
    )
    case.assertIsNotNone(get_pool("default"), "the pooled backend made no pool")
    return database


def write_and_check(case: SimpleTestCase, label: str) -> None:
    database = assert_in_test_database(case)
    Note.objects.create(name=f"{label}-orm", written_by=WRITTEN_BY)
    Note.objects.bulk_create(
        [Note(name=f"{label}-bulk-{i}", written_by=WRITTEN_BY) for i in range(5)]
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO runnerapp_note (name, written_by) VALUES (%s, %s)",
            [f"{label}-raw", WRITTEN_BY],
        )
    case.assertEqual(Note.objects.filter(written_by=WRITTEN_BY).count(), 7)
    # The real database's sentinel row is not visible here.
    case.assertFalse(Note.objects.filter(name=SENTINEL).exists())
    case.assertEqual(current_database(), database)
    report(label, database)


def report(label: str, database: str) -> None:
    report_dir = os.environ.get("DP_RUNNER_REPORT_DIR")
    if not report_dir:
        return
    record = {"test": label, "pid": os.getpid(), "database": database}
    path = os.path.join(report_dir, f"test-{label}-{uuid.uuid4().hex}.json")
    with open(path, "w") as fh:
        json.dump(record, fh)


class NotesTestCase(TestCase):
    def test_orm_writes_go_to_the_test_database(self) -> None:
        write_and_check(self, "testcase-1")

    def test_again_in_a_fresh_transaction(self) -> None:
        self.assertFalse(Note.objects.filter(written_by=WRITTEN_BY).exists())
        write_and_check(self, "testcase-2")


class NotesTransactionTestCase(TransactionTestCase):
    def test_committed_writes_go_to_the_test_database(self) -> None:
        with transaction.atomic():
            write_and_check(self, "transactiontestcase-1")
        connection.close()  # back to the pool; the next query borrows again
        self.assertEqual(Note.objects.filter(written_by=WRITTEN_BY).count(), 7)
        assert_in_test_database(self)

    def test_flushed_between_tests(self) -> None:
        self.assertFalse(Note.objects.filter(written_by=WRITTEN_BY).exists())
        write_and_check(self, "transactiontestcase-2")
