"""The row every probe task writes: ORM work on the pooled connection."""

from __future__ import annotations

from django.db import models


class TaskRun(models.Model):
    """Made by the test with SQL (``tests.test_celery.TABLE_SQL``): no migrations to run."""

    index = models.IntegerField()
    worker_pid = models.IntegerField()
    backend_pid = models.IntegerField()

    class Meta:
        managed = False
        db_table = "celery_project_taskrun"
