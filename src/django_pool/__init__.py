"""django-pool: process-wide database connection pooling for Django.

The engine, :class:`Pool`, is driver-agnostic and does not import Django; the
Django database backends live in :mod:`django_pool.backends`.
"""

from .adapters import Adapter, adapter_for
from .errors import ConnectionFailed, PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .pool import Pool

__all__ = [
    "Adapter",
    "ConnectionFailed",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "adapter_for",
]
__version__ = "0.1.0"
