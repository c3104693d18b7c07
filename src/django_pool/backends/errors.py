"""The engine's errors as Django sees them: ``OperationalError`` subclasses.

Code that already handles ``django.db.OperationalError`` (a retry decorator,
a 503 middleware) keeps working, and code that wants to tell "the pool could
not lend a connection" from a database error can catch the engine's class
(:class:`~django_pool.PoolTimeout`, ...), which each of these also is. On
PostgreSQL, when psycopg_pool is installed, each is also psycopg_pool's class
of the same name: code written for Django's built-in pool catches
``psycopg_pool.PoolTimeout``. The message starts with the database it is about:
with several pools in a process, "couldn't get a connection" alone does not
say which.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from django.db.utils import OperationalError

from ..errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests


class PoolTimeoutError(OperationalError, PoolTimeout):  # type: ignore[misc]
    """No connection was free or could be opened before ``timeout``."""


class TooManyRequestsError(OperationalError, TooManyRequests):  # type: ignore[misc]
    """``max_waiting`` requests were already queued."""


class PoolClosedError(OperationalError, PoolClosed):  # type: ignore[misc]
    """The pool was closed (``close_pools()``) while the request waited."""


_DJANGO_ERRORS: dict[type[PoolError], type[OperationalError]] = {
    PoolTimeout: PoolTimeoutError,
    TooManyRequests: TooManyRequestsError,
    PoolClosed: PoolClosedError,
}


@functools.cache
def _postgresql_errors() -> dict[type[PoolError], type[OperationalError]]:
    """The classes above, each also psycopg_pool's of the same name when it is installed."""
    try:
        import psycopg_pool
    except ImportError:
        return _DJANGO_ERRORS
    return {
        engine_class: type(
            django_class.__name__,
            (django_class, getattr(psycopg_pool, engine_class.__name__)),
            {"__module__": __name__, "__doc__": django_class.__doc__},
        )
        for engine_class, django_class in _DJANGO_ERRORS.items()
    }


def database_error(
    exc: PoolError, alias: str, vendor: str, settings_dict: Mapping[str, Any]
) -> OperationalError:
    """The Django error for ``exc``, naming the database (never its password)."""
    host = settings_dict.get("HOST") or "localhost"
    port = settings_dict.get("PORT")
    where = (
        f"DATABASES[{alias!r}] ({vendor} database {settings_dict.get('NAME')!r} "
        f"on {host}{f':{port}' if port else ''})"
    )
    classes = _postgresql_errors() if vendor == "postgresql" else _DJANGO_ERRORS
    django_class = next(
        (cls for base, cls in classes.items() if isinstance(exc, base)), OperationalError
    )
    return django_class(f"{where}: {exc}")
