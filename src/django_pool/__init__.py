"""django-pool: process-wide database connection pooling for Django.

The engine, :class:`Pool`, is driver-agnostic and does not import Django; the
Django database backends live in :mod:`django_pool.backends`.
"""

from typing import Any

from .adapters import Adapter, adapter_for
from .engine import Pool
from .errors import ConnectionFailed, PoolClosed, PoolError, PoolTimeout, TooManyRequests


def get_stats(alias: str | None = None) -> dict[str, Any]:
    """Stats of the Django pools of this process: see :func:`django_pool.backends.get_stats`.

    Imported on call, so that the engine alone never imports Django.
    """
    from .backends.pools import get_stats

    return get_stats(alias)


__all__ = [
    "Adapter",
    "ConnectionFailed",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "adapter_for",
    "get_stats",
]
__version__ = "0.1.0"
