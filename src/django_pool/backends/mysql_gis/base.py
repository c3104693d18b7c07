"""Pooled ``django.contrib.gis.db.backends.mysql``."""

from django.contrib.gis.db.backends.mysql.base import DatabaseWrapper as DjangoDatabaseWrapper

from ..base import pooled

DatabaseWrapper = pooled(DjangoDatabaseWrapper)
