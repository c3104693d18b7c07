"""Pooled ``django.db.backends.mysql``."""

from django.db.backends.mysql.base import DatabaseWrapper as DjangoDatabaseWrapper

from ..base import pooled

DatabaseWrapper = pooled(DjangoDatabaseWrapper)
