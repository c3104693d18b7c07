"""HikariCP's spike test on a real PostgreSQL, against psycopg_pool in the same run.

50 threads arrive at once on an empty pool; connecting takes 150 ms more than
usual; each thread holds its connection for 2 ms. A pool that connects in the
caller's thread opens ~50 connections; psycopg_pool opens one or two and makes
the last thread wait for everyone's work. The engine must open few (<= 8) and
make nobody wait longer than psycopg_pool does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from django_pool import Pool

pytestmark = pytest.mark.postgres

THREADS = 50
CONNECT_DELAY = 0.15
WORK = 0.002


def spike(getconn: Callable[[], Any], putconn: Callable[[Any], None]) -> float:
    """Run the spike; return the longest time any thread waited for a connection."""
    barrier = threading.Barrier(THREADS)
    waits: list[float] = []

    def request() -> None:
        barrier.wait()
        started = time.monotonic()
        conn = getconn()
        waits.append(time.monotonic() - started)
        time.sleep(WORK)
        putconn(conn)

    threads = [threading.Thread(target=request) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(waits) == THREADS
    return max(waits)


class SlowConnection(psycopg.Connection):  # type: ignore[type-arg]
    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Any:
        time.sleep(CONNECT_DELAY)
        return super().connect(*args, **kwargs)


def test_spike_opens_few_connections_and_waits_no_longer_than_psycopg_pool(pg_conninfo):
    def slow_connect() -> Any:
        time.sleep(CONNECT_DELAY)
        return psycopg.connect(pg_conninfo, autocommit=True)

    ours = Pool(slow_connect, min_size=0, max_size=THREADS, timeout=30)
    theirs = ConnectionPool(
        pg_conninfo,
        connection_class=SlowConnection,
        kwargs={"autocommit": True},
        min_size=0,
        max_size=THREADS,
        timeout=30,
        open=True,
    )
    try:
        our_wait = spike(ours.getconn, ours.putconn)
        their_wait = spike(theirs.getconn, theirs.putconn)
        time.sleep(2 * CONNECT_DELAY)  # let connections still being opened land
        opened = ours.get_stats()["connections_num"]
        assert opened <= 8, f"opened {opened} connections for a 50-thread spike"
        assert our_wait <= their_wait, (
            f"longest wait {our_wait * 1000:.0f} ms, psycopg_pool {their_wait * 1000:.0f} ms"
        )
    finally:
        ours.close()
        theirs.close()
