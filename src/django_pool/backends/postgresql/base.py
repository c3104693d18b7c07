"""Pooled ``django.db.backends.postgresql``."""

from django.db.backends.postgresql.base import DatabaseWrapper as DjangoDatabaseWrapper

from ..base import pooled

DatabaseWrapper = pooled(DjangoDatabaseWrapper)
