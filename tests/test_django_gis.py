"""GeoDjango through the pooled PostGIS backend (django_pool.backends.postgis).

Runs where GDAL/GEOS load and the PostgreSQL server offers the postgis
extension (Debian: libgdal32, libgeos-c1v5, postgresql-N-postgis-3).
"""

from __future__ import annotations

import pytest
from django.conf import settings

if settings.GIS_UNAVAILABLE:
    pytest.skip(f"PostGIS tests skipped: {settings.GIS_UNAVAILABLE}", allow_module_level=True)

from django.contrib.gis.geos import Point, Polygon
from django.contrib.gis.measure import D
from django.db import connections

from django_pool.backends import get_pool
from tests.gisapp.models import Place

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "gis"])


def test_geodjango_queries_through_the_pooled_postgis_backend():
    Place.objects.create(name="paris", location=Point(2.3522, 48.8566, srid=4326))
    Place.objects.create(name="london", location=Point(-0.1276, 51.5072, srid=4326))
    Place.objects.create(name="berlin", location=Point(13.4050, 52.5200, srid=4326))

    france = Polygon.from_bbox((-5.0, 42.0, 8.0, 51.0))
    france.srid = 4326
    assert [p.name for p in Place.objects.filter(location__within=france)] == ["paris"]
    near_paris = Place.objects.filter(
        location__distance_lte=(Point(2.35, 48.85, srid=4326), D(km=400))
    )
    assert sorted(p.name for p in near_paris) == ["london", "paris"]

    pool = get_pool("gis")
    assert pool is not None and pool.get_stats()["pool_in_use"] == 1
    connections["gis"].close()
    assert pool.get_stats()["pool_in_use"] == 0
    assert Place.objects.count() == 3  # a borrowed connection again, spatial types intact
