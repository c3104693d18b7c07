"""Pooled ``django.contrib.gis.db.backends.postgis``."""

from django.contrib.gis.db.backends.postgis.base import DatabaseWrapper as DjangoDatabaseWrapper

from ..base import pooled

DatabaseWrapper = pooled(DjangoDatabaseWrapper)
