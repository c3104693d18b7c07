"""An in-memory driver for tests of pure engine logic (ordering, sizes, timing).

Every behaviour tested with it is also tested against a real server elsewhere;
the fake exists so that orderings and races can be set up exactly.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from django_pool.adapters import BROKEN, IDLE, IN_TRANSACTION, Adapter


class FakeDisconnect(Exception):
    pass


class FakeConnection:
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = False
        self.dead = False  # the server side is gone: pings and queries fail
        self.in_transaction = False
        self.pings = 0
        self.rollbacks = 0
        self.opened_in = threading.current_thread().name
        # What the server would report of the session's settings (ParameterStatus).
        self.reported = ("UTC",)

    def query(self) -> None:
        if self.closed or self.dead:
            raise FakeDisconnect(f"connection {self.id} is gone")

    def __repr__(self) -> str:
        return f"<FakeConnection {self.id}>"


class FakeAdapter(Adapter):
    name = "fake"

    def state(self, conn: Any) -> int:
        if conn.closed:
            return BROKEN
        return IN_TRANSACTION if conn.in_transaction else IDLE

    def ping(self, conn: Any) -> None:
        conn.pings += 1
        conn.query()

    def reported_settings(self, conn: Any) -> tuple[Any, ...]:
        return tuple(conn.reported)

    def rollback(self, conn: Any) -> None:
        conn.query()
        conn.rollbacks += 1
        conn.in_transaction = False

    def close(self, conn: Any) -> None:
        conn.closed = True

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, FakeDisconnect)

    def fileno(self, conn: Any) -> int | None:
        return None


class FakeConnector:
    """A ``connect`` callable: optional delay, scripted failures, and a record."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.error: Exception | None = None
        self.made: list[FakeConnection] = []
        self.attempts = 0
        self.attempt_times: list[float] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def __call__(self) -> FakeConnection:
        with self._lock:
            self.attempts += 1
            self.attempt_times.append(time.monotonic())
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.error is not None:
                raise self.error
            conn = FakeConnection()
            with self._lock:
                self.made.append(conn)
            return conn
        finally:
            with self._lock:
                self.concurrent -= 1

    @property
    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.made if not c.closed]
