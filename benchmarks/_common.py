"""Plumbing shared by the benchmark scripts.

Server discovery, the counting connect callable every contender uses, one
small wrapper per pool library (so the benchmark loops see the same three
callables whatever the pool), leak checks, statistics and plain-text tables.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import make_conninfo

#: The checkout's own sources, measured in preference to any installed copy.
SRC_DIR = Path(__file__).resolve().parent.parent / "src"

#: Name of the contender every ratio is computed against.
REFERENCE = "psycopg_pool"

#: Database the benchmarks connect to (created when missing).
BENCH_DB = "django_pool_bench"


def use_checkout_sources() -> None:
    """Put ``src/`` first on ``sys.path`` so ``django_pool`` is this checkout's."""
    src = str(SRC_DIR)
    if SRC_DIR.is_dir() and src not in sys.path:
        sys.path.insert(0, src)


def load_django_pool() -> tuple[Any | None, str]:
    """Return ``(django_pool.Pool, "")``, or ``(None, reason)`` while it does not exist."""
    use_checkout_sources()
    try:
        from django_pool import Pool
    except Exception as exc:  # ImportError, or a half-written module
        return None, f"{type(exc).__name__}: {exc}"
    return Pool, ""


# --------------------------------------------------------------------------- server


class Server(Protocol):
    def conninfo(self, dbname: str) -> str: ...

    def ensure_database(self, name: str) -> None: ...


def discover_server() -> tuple[Server, str]:
    """The project's test server: PG* variables, else an embedded PostgreSQL."""
    use_checkout_sources()
    from django_pool.testservers import postgres_server

    server: Server = postgres_server()
    kind = getattr(server, "kind", "?")
    where = f"{getattr(server, 'host', '?')}:{getattr(server, 'port', '?')}"
    return server, f"{kind} server at {where} (django_pool.testservers)"


# --------------------------------------------------------------------------- connect


class Connector:
    """The zero-argument connect callable shared by every contender.

    Opens psycopg 3 connections in autocommit mode, counts them, and can sleep
    before each connect to simulate a slow network or an overloaded server.
    ``dbapi`` lets DBUtils find the driver's ``threadsafety`` and exceptions.
    """

    dbapi = psycopg

    def __init__(self, conninfo: str, application_name: str, delay: float = 0.0) -> None:
        self.conninfo = make_conninfo(conninfo, application_name=application_name)
        self.application_name = application_name
        self.delay = delay
        self._lock = threading.Lock()
        self.attempts = 0
        self.opened = 0

    def before_connect(self) -> None:
        with self._lock:
            self.attempts += 1
        if self.delay:
            time.sleep(self.delay)

    def after_connect(self) -> None:
        with self._lock:
            self.opened += 1

    def __call__(self) -> psycopg.Connection[Any]:
        self.before_connect()
        conn = psycopg.connect(self.conninfo, autocommit=True)
        self.after_connect()
        return conn

    def connection_class(self) -> type[psycopg.Connection[Any]]:
        """A ``psycopg.Connection`` subclass whose ``connect`` goes through this object.

        psycopg_pool takes a conninfo and a class rather than a callable.
        """
        connector = self

        class CountingConnection(psycopg.Connection[Any]):
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
                connector.before_connect()
                conn = super().connect(conninfo, **kwargs)
                connector.after_connect()
                return conn

        return CountingConnection


# --------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One pool, seen through the three operations the benchmarks use.

    ``acquire()`` returns an object with ``cursor()``; ``release(obj)`` gives it back.
    """

    name: str
    pool: Any
    acquire: Callable[[], Any]
    release: Callable[[Any], None]
    close: Callable[[], None]
    connector: Connector
    stats: Callable[[], dict[str, Any]] | None = None
    threads: set[threading.Thread] = field(default_factory=set)


Factory = Callable[[Connector, int, int], Contender]


def make_django_pool(pool_class: Any) -> Factory:
    def factory(connector: Connector, min_size: int, max_size: int) -> Contender:
        pool = pool_class(connector, min_size=min_size, max_size=max_size, name="bench")
        if min_size:
            pool.wait(timeout=30.0)
        return Contender(
            name="django_pool",
            pool=pool,
            acquire=pool.getconn,
            release=pool.putconn,
            close=pool.close,
            connector=connector,
            stats=pool.get_stats,
        )

    return factory


def make_psycopg_pool(connector: Connector, min_size: int, max_size: int) -> Contender:
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(
        connector.conninfo,
        connection_class=connector.connection_class(),
        kwargs={"autocommit": True},
        min_size=min_size,
        max_size=max_size,
        name="bench",
        open=True,
    )
    if min_size:
        pool.wait(timeout=30.0)
    return Contender(
        name="psycopg_pool",
        pool=pool,
        acquire=pool.getconn,
        release=pool.putconn,
        close=lambda: pool.close(timeout=10.0),
        connector=connector,
        stats=pool.get_stats,
    )


def _prefill(acquire: Callable[[], Any], count: int) -> type[Any]:
    """Check out ``count`` connections at once and return them; give the handle type."""
    held = [acquire() for _ in range(max(count, 1))]
    handle_type = type(held[0])
    for handle in held:
        handle.close()
    return handle_type


def make_sqlalchemy(connector: Connector, min_size: int, max_size: int) -> Contender:
    from sqlalchemy.pool import QueuePool

    # Used directly, no engine/dialect: connect() gives a fairy, close() returns it
    # (with the default reset_on_return="rollback"). QueuePool has no minimum:
    # the pool is pre-filled by hand when one is asked for, and it always
    # connects in the caller's thread.
    creator: Callable[[], Any] = connector
    pool = QueuePool(creator, pool_size=max_size, max_overflow=0, timeout=30.0)
    if min_size:
        handle_type = _prefill(pool.connect, min_size)
    else:
        from sqlalchemy.pool.base import _ConnectionFairy

        handle_type = _ConnectionFairy
    return Contender(
        name="sqlalchemy",
        pool=pool,
        acquire=pool.connect,
        release=handle_type.close,
        close=pool.dispose,
        connector=connector,
    )


def make_dbutils(connector: Connector, min_size: int, max_size: int) -> Contender:
    from dbutils.pooled_db import PooledDB, PooledDedicatedDBConnection

    pool = PooledDB(
        connector,
        mincached=min_size,
        maxcached=max_size,
        maxconnections=max_size,
        blocking=True,
    )
    return Contender(
        name="dbutils",
        pool=pool,
        acquire=pool.connection,
        release=PooledDedicatedDBConnection.close,
        close=pool.close,
        connector=connector,
    )


DESCRIPTIONS = {
    "django_pool": "django_pool.Pool (getconn/putconn)",
    "psycopg_pool": "psycopg_pool.ConnectionPool (getconn/putconn)",
    "sqlalchemy": "sqlalchemy.pool.QueuePool used directly (connect()/fairy.close())",
    "dbutils": "dbutils.pooled_db.PooledDB (connection()/close(), blocking=True)",
}


def build(
    name: str, factory: Factory, connector: Connector, min_size: int, max_size: int
) -> Contender:
    """Create a contender and remember which threads it started."""
    before = set(threading.enumerate())
    contender = factory(connector, min_size, max_size)
    contender.threads = set(threading.enumerate()) - before
    assert contender.name == name, (contender.name, name)
    return contender


@dataclass
class CloseReport:
    seconds: float
    error: str = ""
    threads_left: list[str] = field(default_factory=list)
    sessions_left: int = 0


def close_and_check(
    contender: Contender,
    monitor: SessionMonitor | None,
    baseline_threads: set[threading.Thread] | None = None,
    grace: float = 3.0,
) -> CloseReport:
    """Close the pool; report threads it left running and server sessions left open.

    Threads checked: those it started while being built, plus, when
    ``baseline_threads`` is given (the pool was alone), every thread not in it.
    """
    start = time.perf_counter()
    error = ""
    try:
        contender.close()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    deadline = time.monotonic() + grace
    while True:
        alive = {t for t in contender.threads if t.is_alive()}
        if baseline_threads is not None:
            alive |= set(threading.enumerate()) - baseline_threads
        sessions = monitor.count(contender.connector.application_name) if monitor else 0
        if (not alive and not sessions) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return CloseReport(seconds, error, sorted(t.name for t in alive), sessions)


class SessionMonitor:
    """A separate connection counting server sessions by application_name.

    Reconnects once when its session was lost (the server is shared: another
    test run may restart it or terminate backends); -1 means "could not tell".
    """

    def __init__(self, conninfo: str, application_name: str = "bench_monitor") -> None:
        self._conninfo = make_conninfo(conninfo, application_name=application_name)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def _row(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self._conninfo, autocommit=True)
                    row = self._conn.execute(sql, params).fetchone()
                    return tuple(row) if row else ()
                except psycopg.OperationalError:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        return ()  # not reached

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row, or None."""
        row = self._row(sql, params)
        return row[0] if row else None

    def count(self, application_name: str) -> int:
        try:
            found = self._query(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
        except psycopg.OperationalError:
            return -1
        return int(found or 0)

    def server_version(self) -> str:
        return str(self._query("SHOW server_version"))

    def server_started(self) -> str:
        """When the postmaster started: a change during a run means it was restarted."""
        try:
            return str(self._query("SELECT pg_postmaster_start_time()"))
        except psycopg.OperationalError as exc:
            return f"unknown ({type(exc).__name__})"

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --------------------------------------------------------------------------- numbers


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def rotated(items: Sequence[str], shift: int) -> list[str]:
    """``items`` rotated left by ``shift``: round r starts with a different contender."""
    if not items:
        return []
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned text: first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def join_threads(threads: Sequence[threading.Thread], timeout: float) -> list[str]:
    """Join with one overall deadline; return the names of threads still alive."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


# --------------------------------------------------------------------------- reporting


def progress(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def package_versions(dists: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution, or ``"missing"``."""
    from importlib import metadata

    versions = {}
    for dist in dists:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def format_targets(title: str, targets: Sequence[dict[str, str]]) -> str:
    """One ``STATUS  target  detail`` line per target, under ``title``."""
    width = max((len(t["target"]) for t in targets), default=0)
    lines = [title]
    lines += [f"{t['status']:4}  {t['target'].ljust(width)}  {t['detail']}" for t in targets]
    return "\n".join(lines)


def finish(
    results: dict[str, Any], targets: list[dict[str, str]], json_path: str | None, strict: bool
) -> int:
    """Write the JSON report if asked, and return the exit status (1 only with
    ``strict`` when a target was not met)."""
    results["targets"] = targets
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=str)
            fh.write("\n")
        print(f"results written to {json_path}")
    failed = any(t["status"] != "PASS" for t in targets)
    return 1 if (strict and failed) else 0
