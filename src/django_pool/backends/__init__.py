"""Django database backends that borrow connections from a process-wide pool.

``ENGINE`` values: ``django_pool.backends.postgresql`` (psycopg 3 or psycopg2,
as Django's own backend chooses), ``django_pool.backends.postgis``,
``django_pool.backends.mysql`` and ``django_pool.backends.mysql_gis``. Pooling
is switched on by ``OPTIONS["pool"]``, as for Django's built-in pool.
"""

from .errors import PoolClosedError, PoolTimeoutError, TooManyRequestsError
from .pools import active_pools, close_pools, get_pool, get_stats, when_pool_made

__all__ = [
    "PoolClosedError",
    "PoolTimeoutError",
    "TooManyRequestsError",
    "active_pools",
    "close_pools",
    "get_pool",
    "get_stats",
    "when_pool_made",
]
