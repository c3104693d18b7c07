"""The demo's one model, on a table that ``django-pool demo`` creates and fills."""

from __future__ import annotations

from django.db import models

from django_pool.demo.database import TABLE


class Item(models.Model):  # type: ignore[misc]  # Django has no type hints
    name = models.CharField(max_length=64)
    category = models.IntegerField()
    price = models.DecimalField(max_digits=8, decimal_places=2)

    class Meta:
        db_table = TABLE
        managed = False  # no migrations to run before the first request
