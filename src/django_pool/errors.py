"""Exceptions raised by the pool engine.

The names match psycopg_pool's so that code written for Django's built-in pool
reads the same. They share one base class, :class:`PoolError`, so a caller can
catch every pool failure (as opposed to a database error) in one place.
"""

from __future__ import annotations


class PoolError(Exception):
    """Base class of every error the pool itself raises."""


class PoolTimeout(PoolError):
    """No connection could be handed out before the deadline.

    The message says how the pool looked (size, limits, waiting requests), how
    long the caller waited and, when connecting failed, the last cause reported
    by the server with any password removed.
    """


class PoolClosed(PoolError):
    """The pool is closed, or was closed while the caller was waiting."""


class TooManyRequests(PoolError):
    """``max_waiting`` requests are already queued: fail fast instead of piling up."""


class ConnectionFailed(PoolError):
    """Connecting to the database failed while waiting for the pool to fill.

    Raised by :meth:`Pool.wait` / ``open(wait=True)`` on the first failed
    attempt, so a wrong password or database name is reported at once, with the
    server's own words (password removed), instead of after a timeout.
    """
