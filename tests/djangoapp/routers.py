"""The GIS app lives on the PostGIS alias only; the others never migrate there."""

from __future__ import annotations

from typing import Any


class GisRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "gis" if model._meta.app_label == "gisapp" else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return (app_label == "gisapp") == (db == "gis")
