"""Cost of a Django request that runs one query, per connection-handling mode.

Each request goes through Django's ``WSGIHandler`` in-process, exactly as a WSGI
server drives it: the handler is called with a minimal environ, the body is
read and the response's ``close()`` is called, so ``request_started`` and
``request_finished`` fire and ``close_old_connections`` runs at both ends of
the request, as in production. The view runs one raw query,
``SELECT pg_backend_pid(), inet_client_port()`` (which also tells which
server session served the request). No middleware, no ORM: the connection
handling is as large a share of the request as it can be.

Modes, all on the same PostgreSQL server and database through psycopg 3:

* ``no_pool``: Django's default, ``CONN_MAX_AGE=0``, a new connection per request;
* ``persistent``: ``CONN_MAX_AGE=None``, one connection per thread kept for ever
  (the reference for every ratio);
* ``django_builtin``: Django's own pool (Django >= 5.1, psycopg_pool),
  ``OPTIONS={"pool": {"min_size": 8, "max_size": 8}}``;
* ``dj_db_conn_pool``: django-db-connection-pool (SQLAlchemy's QueuePool),
  ``POOL_OPTIONS={"POOL_SIZE": 8, "MAX_OVERFLOW": 0}``, when installed;
* ``django_pool``: this checkout's ``django_pool.backends.postgresql``,
  ``OPTIONS={"pool": {"min_size": 8, "max_size": 8}}``.

Django settings are per process, so each mode lives in its own worker process
(this script re-invoked with ``--worker MODE``), started once and kept for the
whole run with 8 long-lived request threads, like a threaded WSGI server.
The parent then runs short rounds, each with 1 thread and with 8 (the order
flips every round). In a round every other mode is paired with ``persistent``:
the two serve requests for a fixed time one right after the other, in an
order that alternates (ABBA), and the mode's ratio for that round is its cost
over that adjacent ``persistent`` slot. On a shared machine the load changes
from one second to the next; comparing adjacent slots keeps that drift out
of the ratios, and an identical copy of ``persistent`` measured this way
stays within a point or two of 1.00x. Each thread makes one untimed request
before a slot's clock starts, so a slot times steady serving, not a process
waking from idle. The report gives medians over rounds.

Run ``python benchmarks/django_requests.py`` (``--quick`` for a smoke test,
``--json PATH`` to keep the figures, ``--strict`` to exit 1 when the
django_pool target is missed, ``--profile MODE`` to profile one mode's
requests in this process instead).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import json
import os
import platform
import pstats
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from _common import (
    BENCH_DB,
    SessionMonitor,
    discover_server,
    finish,
    fmt,
    fmt_ratio,
    format_table,
    format_targets,
    median,
    package_versions,
    progress,
    rotated,
    use_checkout_sources,
)

#: Every mode, in report order.
MODES = (
    "no_pool",
    "persistent",
    "django_builtin",
    "dj_db_conn_pool",
    "django_pool",
    "django_pool_tx",
)
#: The mode every ratio is computed against.
REFERENCE_MODE = "persistent"
#: The modes the targets are about, with their target ratio to REFERENCE_MODE.
TARGETS = {"django_pool": 1.05, "django_pool_tx": 1.10}

DESCRIPTIONS = {
    "no_pool": "django.db.backends.postgresql, CONN_MAX_AGE=0 (connect per request)",
    "persistent": "django.db.backends.postgresql, CONN_MAX_AGE=None",
    "django_builtin": "django.db.backends.postgresql, OPTIONS pool min=max=8 (psycopg_pool)",
    "dj_db_conn_pool": "dj_db_conn_pool.backends.postgresql, POOL_SIZE=8, MAX_OVERFLOW=0",
    "django_pool": "django_pool.backends.postgresql, OPTIONS pool min=max=8",
    "django_pool_tx": 'the same with "release": "transaction" (a checkout per statement)',
}

DJ_DB_CONN_POOL_INSTALL = ".venv/bin/pip install django-db-connection-pool"

THREAD_COUNTS = (1, 8)
POOL_SIZE = 8

# A run stops counting after this many errors.
MAX_ERRORS = 1000
# The one query of every request; it also names the server session that ran it.
QUERY = "SELECT pg_backend_pid(), inet_client_port()"
URL_PATH = "/query"


@dataclass(frozen=True)
class Settings:
    rounds: int
    slot_seconds: float  # per mode and thread count, in each round
    warmup_seconds: float


# Short slots, many rounds: on a shared machine the load changes from one second
# to the next, so the slots compared must be close in time (adjacent, in fact).
# A pair's ratio scatters about as much with 0.05 s slots as with 0.2 s ones
# (middle half about +-8% on a 2-vCPU VM), so four times as many pairs in the
# same time halve the uncertainty of the median.
FULL = Settings(rounds=160, slot_seconds=0.05, warmup_seconds=0.6)
QUICK = Settings(rounds=8, slot_seconds=0.12, warmup_seconds=0.3)


def application_name(mode: str) -> str:
    return f"bench_req_{mode}"


# =========================================================================== Django side
# Everything in this part runs in a worker (or a --profile run), one mode per process.


def database_settings(mode: str, server: dict[str, Any]) -> dict[str, Any]:
    """``DATABASES["default"]`` for ``mode``; only the engine and its options differ."""
    database: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": server["dbname"],
        "USER": server["user"],
        "PASSWORD": server["password"],
        "HOST": server["host"],
        "PORT": str(server["port"]),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"application_name": application_name(mode)},
    }
    size = server["pool_size"]
    if mode == "no_pool":
        pass
    elif mode == "persistent":
        database["CONN_MAX_AGE"] = None
    elif mode == "django_builtin":
        database["OPTIONS"]["pool"] = {"min_size": size, "max_size": size}
    elif mode == "dj_db_conn_pool":
        database["ENGINE"] = "dj_db_conn_pool.backends.postgresql"
        database["POOL_OPTIONS"] = {"POOL_SIZE": size, "MAX_OVERFLOW": 0}
    elif mode in ("django_pool", "django_pool_tx"):
        database["ENGINE"] = "django_pool.backends.postgresql"
        database["OPTIONS"]["pool"] = {"min_size": size, "max_size": size}
        if mode == "django_pool_tx":
            database["OPTIONS"]["pool"]["release"] = "transaction"
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return database


def setup_django(mode: str, server: dict[str, Any]) -> Any:
    """Configure Django for ``mode`` and return a WSGI handler serving ``URL_PATH``."""
    use_checkout_sources()
    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import path

    queries = range(server["queries"])

    def query_view(request: Any) -> HttpResponse:
        from django.db import connection

        for _ in queries:
            with connection.cursor() as cursor:
                cursor.execute(QUERY)
                pid, port = cursor.fetchone()
        return HttpResponse(f"{pid} {port}")

    urlconf = types.ModuleType("bench_requests_urls")
    urlconf.urlpatterns = [path(URL_PATH.lstrip("/"), query_view)]  # type: ignore[attr-defined]
    sys.modules[urlconf.__name__] = urlconf

    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-pool-benchmark",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=urlconf.__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DATABASES={"default": database_settings(mode, server)},
    )
    django.setup()

    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


class RequestError(Exception):
    pass


class Client:
    """Calls the WSGI handler as a WSGI server would, one request at a time per thread."""

    def __init__(self, handler: Any) -> None:
        from django.core.signals import got_request_exception

        self.handler = handler
        self._failures = threading.local()
        self.environ = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": URL_PATH,
            "QUERY_STRING": "",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        # Django turns a view's exception into a 500; keep the exception to report
        # it, instead of a log line per failed request.
        got_request_exception.connect(self._remember, weak=False)
        import logging

        logging.getLogger("django.request").setLevel(logging.CRITICAL)

    def _remember(self, sender: Any, request: Any = None, **kwargs: Any) -> None:
        exc = sys.exc_info()[1]
        self._failures.last = f"{type(exc).__name__}: {exc}".strip() if exc else "unknown"

    def request(self) -> bytes:
        """One request; returns the body ("<backend pid> <client port>")."""
        environ = dict(self.environ)
        environ["wsgi.input"] = io.BytesIO()
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.append(status)

        response = self.handler(environ, start_response)
        try:
            body = b"".join(response)
        finally:
            # What every WSGI server does; Django sends request_finished here.
            response.close()
        if not statuses or not statuses[-1].startswith("200"):
            detail = getattr(self._failures, "last", "") or body[:200].decode(errors="replace")
            self._failures.last = ""
            raise RequestError(f"{statuses[-1] if statuses else 'no status'}: {detail}")
        return body


class Run:
    """One timed run: ``threads`` threads making requests until a shared deadline."""

    def __init__(self, client: Client, threads: int, seconds: float) -> None:
        self.client = client
        self.threads = threads
        self.seconds = seconds
        # The caller joins both barriers: the clock starts once everyone is ready.
        self.start = threading.Barrier(threads + 1, action=self._go)
        self.done = threading.Barrier(threads + 1)
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.deadline = 0.0
        self.counts = [0] * threads
        self.ends = [0.0] * threads
        self.sessions: list[set[bytes]] = [set() for _ in range(threads)]
        self.untimed_sessions: list[bytes] = [b""] * threads
        self.errors: list[str] = []

    def _go(self) -> None:
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + self.seconds

    def work(self, index: int) -> None:
        request = self.client.request
        sessions = self.sessions[index]
        errors = self.errors
        done = 0
        try:
            # One untimed request first, so that what is timed is serving under
            # steady load, not the wake-up of a process idle since its last
            # slot: cold caches, and django_pool's ping of a connection idle
            # for longer than validate_after (steady load keeps it busier).
            try:
                self.untimed_sessions[index] = request()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            self.start.wait(timeout=60.0)
            deadline = self.deadline
            while time.perf_counter() < deadline and len(errors) < MAX_ERRORS:
                try:
                    sessions.add(request())
                except Exception as exc:
                    # Counted and shown; the loop goes on (a mode that recovers
                    # keeps serving, one that does not shows errors).
                    errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.01)
                else:
                    done += 1
        except threading.BrokenBarrierError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.ends[index] = time.perf_counter()
            self.counts[index] = done
            with contextlib.suppress(threading.BrokenBarrierError):
                self.done.wait(timeout=120.0)


class Team:
    """Long-lived request threads, like a threaded WSGI server's.

    They live as long as the worker, so ``CONN_MAX_AGE=None`` keeps one connection
    per thread across runs, as it would in production. A run with fewer threads
    than the team uses the first ones; the others stay idle.
    """

    def __init__(self, client: Client, size: int) -> None:
        self.client = client
        self._inboxes: list[queue.SimpleQueue[Run | None]] = [
            queue.SimpleQueue() for _ in range(size)
        ]
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"bench-request-{i}", daemon=True)
            for i in range(size)
        ]
        self.seen: set[bytes] = set()
        for thread in self._threads:
            thread.start()

    def _serve(self, index: int) -> None:
        from django.db import connections

        inbox = self._inboxes[index]
        while True:
            run = inbox.get()
            if run is None:
                break
            run.work(index)
        connections.close_all()  # this thread's connections, as at server shutdown

    def run(self, threads: int, seconds: float) -> dict[str, Any]:
        if not 1 <= threads <= len(self._threads):
            raise ValueError(f"threads must be 1..{len(self._threads)}, got {threads}")
        run = Run(self.client, threads, seconds)
        gc.collect()
        for inbox in self._inboxes[:threads]:
            inbox.put(run)
        run.start.wait(timeout=60.0)
        run.done.wait(timeout=seconds + 120.0)
        cpu = time.process_time() - run.cpu0
        requests = sum(run.counts)
        elapsed = max(run.ends) - run.t0
        sessions = set().union(*run.sessions)
        untimed = set(run.untimed_sessions) - {b""}
        new = sessions - self.seen - untimed  # as "new" as the requests timed
        self.seen |= sessions | untimed
        return {
            "threads": threads,
            "seconds": seconds,
            "requests": requests,
            "elapsed_s": elapsed,
            "us_per_request": elapsed / requests * 1e6 if requests else float("nan"),
            "cpu_us_per_request": cpu / requests * 1e6 if requests else float("nan"),
            "thread_requests": run.counts,
            "sessions": len(sessions),
            "new_sessions": len(new),
            "sessions_seen": len(self.seen),
            "errors": len(run.errors),
            "first_error": run.errors[0] if run.errors else "",
        }

    def stop(self, timeout: float = 30.0) -> list[str]:
        for inbox in self._inboxes:
            inbox.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]


def wait_for_pool(mode: str, timeout: float = 30.0) -> None:
    """Block until a pooled mode's pool holds its minimum (the warm-up should have done it)."""
    from django.db import connections

    if mode == "django_builtin":
        pool = connections["default"].pool
        if pool is not None:
            pool.wait(timeout)
    elif mode == "django_pool":
        from django_pool.backends import get_pool

        engine_pool = get_pool("default")
        if engine_pool is not None:
            engine_pool.wait(timeout)


def close_pools(mode: str) -> None:
    """Close the process's pool at shutdown (request threads have returned their connections)."""
    if mode == "django_builtin":
        from django.db import connections

        connections["default"].close_pool()
    elif mode == "dj_db_conn_pool":
        from dj_db_conn_pool.core import pool_container

        pool_container.dispose()
    elif mode == "django_pool":
        from django_pool.backends.pools import close_pools as close_engine_pools

        close_engine_pools(timeout=5.0)


def describe_driver() -> dict[str, str]:
    from django.db import connection

    database = connection.Database
    return {
        "driver": f"{database.__name__} {getattr(database, '__version__', '?')}",
        "wrapper": f"{type(connection).__module__}.{type(connection).__name__}",
    }


def worker_main(mode: str) -> int:
    """``--worker MODE``: serve the parent's commands, one JSON line each way.

    Replies go to the original stdout; anything else that writes to stdout is sent
    to stderr so it cannot corrupt them.
    """
    replies: TextIO = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    team: Team | None = None
    try:
        config = json.loads(sys.stdin.readline())
        handler = setup_django(mode, config["server"])
        driver = describe_driver()
        if not driver["driver"].startswith("psycopg "):
            raise RuntimeError(f"expected psycopg 3, Django uses {driver['driver']}")
        team = Team(Client(handler), max(THREAD_COUNTS))
        warmup = config["warmup_seconds"]
        warm = [team.run(max(THREAD_COUNTS), warmup), team.run(1, warmup / 2)]
        wait_for_pool(mode)
        reply({"ready": True, **driver, "warmup": warm})
    except Exception as exc:
        traceback.print_exc()
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return 1

    for line in sys.stdin:
        command = json.loads(line)
        op = command.get("op")
        if op == "quit":
            break
        try:
            if op == "run":
                reply(team.run(int(command["threads"]), float(command["seconds"])))
            else:
                raise ValueError(f"unknown command {op!r}")
        except Exception as exc:
            traceback.print_exc()
            reply({"error": f"{type(exc).__name__}: {exc}"})

    hung = team.stop()
    error = ""
    try:
        close_pools(mode)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    reply({"bye": True, "threads_left": hung, "close_error": error})
    return 0


# =========================================================================== --profile

# What the profile summary keeps: the connection handling, in Django and the pools.
PROFILE_FILTER = re.compile(
    r"django_pool|dj_db_conn_pool|psycopg_pool|sqlalchemy/pool|django/db/(__init__|utils)"
    r"|django/db/backends/(base|postgresql)/base|django/dispatch|asgiref/local"
)


def profile_main(mode: str, requests: int, top: int, queries: int) -> int:
    """Profile ``requests`` requests of ``mode`` on one thread, in this process."""
    server, source = discover_server()
    server.ensure_database(BENCH_DB)
    handler = setup_django(mode, server_config(server, queries))
    client = Client(handler)
    for _ in range(max(500, requests // 4)):  # warm up: connections, pool, lazy imports
        client.request()
    wait_for_pool(mode)

    def timed() -> float:
        gc.collect()
        start = time.perf_counter()
        for _ in range(requests):
            client.request()
        return (time.perf_counter() - start) / requests * 1e6

    plain = median(timed() for _ in range(3))
    profiler = cProfile.Profile()
    gc.collect()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(requests):
        client.request()
    profiler.disable()
    profiled = (time.perf_counter() - start) / requests * 1e6

    print(f"profile of {mode}: {DESCRIPTIONS[mode]}")
    print(f"server: {source}; {describe_driver()['driver']}")
    print(
        f"{requests:,} requests on 1 thread: {plain:.1f} us/request without the profiler "
        f"(median of 3), {profiled:.1f} us/request under cProfile"
    )
    stats = pstats.Stats(profiler)
    calls = stats.total_calls  # type: ignore[attr-defined]
    print(f"{calls / requests:.0f} Python function calls per request (deterministic)")
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in entries.items():
        where = f"{filename}:{line}({name})"
        rows.append((cumtime, tottime, ncalls, where))

    def table(title: str, chosen: list[tuple[float, float, int, str]]) -> None:
        print(f"\n{title} (per request, under the profiler)")
        out = [
            [
                shorten(where),
                f"{ncalls / requests:.2f}",
                fmt(tottime / requests * 1e6),
                fmt(cumtime / requests * 1e6),
            ]
            for cumtime, tottime, ncalls, where in chosen
        ]
        print(format_table(["function", "calls", "own us", "cumulative us"], out))

    table(
        f"top {top} by own time, whole request",
        sorted(rows, key=lambda r: r[1], reverse=True)[:top],
    )
    table(
        f"top {top} connection-handling functions by cumulative time",
        sorted((r for r in rows if PROFILE_FILTER.search(r[3])), reverse=True)[:top],
    )
    return 0


def shorten(where: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


# =========================================================================== parent


def server_config(server: Any, queries: int) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "dbname": BENCH_DB,
        "pool_size": POOL_SIZE,
        "queries": queries,
    }


class WorkerFailed(Exception):
    pass


class Worker:
    """One mode's worker process, driven by JSON lines on its stdin/stdout."""

    def __init__(self, mode: str, config: dict[str, Any]) -> None:
        self.mode = mode
        self.failure = ""
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._reader = threading.Thread(
            target=self._read, name=f"bench-worker-{mode}", daemon=True
        )
        self._reader.start()
        # The password goes through the pipe, never the command line.
        self.send(config)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerFailed(f"worker gone: {exc}") from None

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise WorkerFailed(f"no answer within {timeout:.0f} s") from None
        if line is None:
            raise WorkerFailed(f"worker exited with status {self.proc.wait()}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise WorkerFailed(message["error"])
        return message

    def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(message)
        return self.receive(timeout)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        bye: dict[str, Any] = {}
        if self.proc.poll() is None:
            try:
                bye = self.call({"op": "quit"}, timeout)
            except WorkerFailed as exc:
                bye = {"error": str(exc)}
            try:
                self.proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                bye["killed"] = True
        return bye


def unavailable_modes() -> dict[str, str]:
    """Modes that cannot run here, with the reason."""
    import django

    skipped: dict[str, str] = {}
    if django.VERSION < (5, 1):
        skipped["django_builtin"] = f"needs Django >= 5.1 (have {django.get_version()})"
    elif importlib.util.find_spec("psycopg_pool") is None:
        skipped["django_builtin"] = "psycopg_pool is not installed"
    if importlib.util.find_spec("dj_db_conn_pool") is None:
        skipped["dj_db_conn_pool"] = (
            f"django-db-connection-pool is not installed ({DJ_DB_CONN_POOL_INSTALL})"
        )
    use_checkout_sources()
    if importlib.util.find_spec("django_pool") is None:
        skipped["django_pool"] = "django_pool cannot be imported"
    return skipped


def start_workers(
    modes: list[str], config: dict[str, Any], failures: dict[str, str]
) -> dict[str, Worker]:
    """Start every worker at once and wait for each to be warmed up.

    A worker that fails to start is left out and its error put in ``failures``.
    """
    workers = {mode: Worker(mode, config) for mode in modes}
    ready: dict[str, Worker] = {}
    for mode, worker in workers.items():
        try:
            hello = worker.receive(timeout=180.0)
        except WorkerFailed as exc:
            failures[mode] = f"worker failed to start: {exc}"
            worker.stop(timeout=5.0)
            progress(f"  {mode}: NOT RUN: {exc}")
            continue
        worker.hello = hello  # type: ignore[attr-defined]
        warm = hello["warmup"][0]
        progress(
            f"  {mode}: ready ({hello['driver']}), warm-up {warm['us_per_request']:,.0f} us/req "
            f"at {warm['threads']} threads, {warm['sessions']} sessions"
        )
        ready[mode] = worker
    return ready


def run_rounds(
    workers: dict[str, Worker], settings: Settings
) -> dict[str, dict[int, list[dict[str, Any] | None]]]:
    """Per round and thread count: each mode paired with an adjacent reference slot.

    The pairs run in rotated mode order; the reference goes first in even
    rounds, the mode in odd ones. A mode's slot carries its pair's
    reference figures (``reference_us_per_request``...); the reference's own
    list holds every reference slot.
    """
    others = [mode for mode in workers if mode != REFERENCE_MODE]
    runs: dict[str, dict[int, list[dict[str, Any] | None]]] = {
        mode: {threads: [] for threads in THREAD_COUNTS} for mode in workers
    }

    def run(mode: str, threads: int) -> dict[str, Any] | None:
        worker = workers[mode]
        if worker.failure:
            return None
        try:
            return worker.call(
                {"op": "run", "threads": threads, "seconds": settings.slot_seconds},
                timeout=settings.slot_seconds + 180.0,
            )
        except WorkerFailed as exc:
            worker.failure = str(exc)
            progress(f"  {mode}: FAILED: {exc}")
            return None

    for rnd in range(settings.rounds):
        order = THREAD_COUNTS if rnd % 2 == 0 else tuple(reversed(THREAD_COUNTS))
        parts = []
        for threads in order:
            line = []
            for mode in rotated(others, rnd):
                # Every mode goes first in half the rounds: the first slot of a
                # pair follows another process's, and may pay for the switch.
                if rnd % 2 == 0:
                    reference, result = run(REFERENCE_MODE, threads), run(mode, threads)
                else:
                    result, reference = run(mode, threads), run(REFERENCE_MODE, threads)
                runs[REFERENCE_MODE][threads].append(reference)
                runs[mode][threads].append(result)
                if result is not None and reference is not None:
                    mine, ref = result["us_per_request"], reference["us_per_request"]
                    result["reference_us_per_request"] = ref
                    result["reference_cpu_us_per_request"] = reference["cpu_us_per_request"]
                    line.append(
                        f"{mode} {mine:,.0f}/{ref:,.0f}"
                        + (f" ({result['errors']} errors)" if result["errors"] else "")
                    )
            parts.append(f"{threads}t: " + ", ".join(line))
        progress(
            f"  round {rnd + 1}/{settings.rounds} us/req (mode/{REFERENCE_MODE}): "
            + " | ".join(parts)
        )
    return runs


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartiles (the middle half of the rounds lies between them)."""
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def summarize(
    runs: dict[str, dict[int, list[dict[str, Any] | None]]],
) -> dict[str, dict[str, Any]]:
    """Per thread count and mode: medians over rounds, ratios against the paired slot."""
    nan = float("nan")
    summary: dict[str, dict[str, Any]] = {}
    for threads in THREAD_COUNTS:
        table: dict[str, Any] = {}
        for mode, by_threads in runs.items():
            slots = by_threads[threads]
            done = [s for s in slots if s and s["requests"]]
            if mode == REFERENCE_MODE:
                ratios = [1.0 for _ in done]
                cpu_ratios = list(ratios)
            else:
                paired = [s for s in done if "reference_us_per_request" in s]
                ratios = [s["us_per_request"] / s["reference_us_per_request"] for s in paired]
                cpu_ratios = [
                    s["cpu_us_per_request"] / s["reference_cpu_us_per_request"] for s in paired
                ]
            us = [s["us_per_request"] for s in done]
            requests = sum(s["requests"] for s in done)
            new_sessions = sum(s["new_sessions"] for s in done)
            q1, q3 = quartiles(ratios)
            table[mode] = {
                "us_per_request": [s["us_per_request"] if s else nan for s in slots],
                "cpu_us_per_request": [s["cpu_us_per_request"] if s else nan for s in slots],
                "median_us": median(us),
                "best_us": min(us) if us else nan,
                "median_cpu_us": median(s["cpu_us_per_request"] for s in done),
                "ratios": ratios,
                "ratio": median(ratios),
                "ratio_q1": q1,
                "ratio_q3": q3,
                "cpu_ratios": cpu_ratios,
                "cpu_ratio": median(cpu_ratios),
                "requests": requests,
                "new_sessions": new_sessions,
                "new_sessions_per_request": new_sessions / requests if requests else nan,
                "rounds_done": len(done),
                "errors": sum(s["errors"] for s in slots if s),
                "first_error": next((s["first_error"] for s in slots if s and s["errors"]), ""),
            }
        summary[str(threads)] = table
    return summary


def print_summary(summary: dict[str, dict[str, Any]], settings: Settings) -> None:
    for key, table in summary.items():
        threads = int(key)
        print(
            f"\n{threads} thread{'s' if threads > 1 else ''}: cost of a request "
            f"({settings.rounds} rounds x {settings.slot_seconds:g} s per mode, "
            f"each paired with an adjacent {REFERENCE_MODE} slot)"
        )
        rows = []
        for mode, r in table.items():
            note = f"{r['errors']} errors: {r['first_error'][:50]}" if r["errors"] else ""
            rows.append(
                [
                    mode,
                    fmt(r["median_us"], 0),
                    fmt(r["best_us"], 0),
                    fmt_ratio(r["ratio"]),
                    f"{fmt_ratio(r['ratio_q1'])}..{fmt_ratio(r['ratio_q3'])}",
                    fmt(r["median_cpu_us"], 0),
                    fmt_ratio(r["cpu_ratio"]),
                    f"{r['requests']:,}",
                    fmt(r["new_sessions_per_request"], 3),
                    note,
                ]
            )
        headers = [
            "mode",
            "median us/req",
            "best us/req",
            f"ratio vs {REFERENCE_MODE}",
            "middle half",
            "cpu us/req",
            "cpu ratio",
            "requests",
            "new conns/req",
            "notes",
        ]
        print(format_table(headers, rows))
    print(
        "   us/req = wall time / requests served; ratio = median over rounds of\n"
        f"   (mode / the {REFERENCE_MODE} slot run just before or after it),\n"
        "   middle half = its quartiles;\n"
        "   cpu = the worker process's CPU time (user + system, all threads) per request;\n"
        "   new conns/req = server sessions (backend pid + client port) first seen in a\n"
        "   measured run / requests (1.000 = a connection per request)"
    )


def print_sessions(sessions: dict[str, dict[str, Any]]) -> None:
    print("\nServer sessions per mode (the sanity check)")
    rows = [
        [
            mode,
            str(s.get("seen", "-")),
            str(s.get("held", "-")),
            str(s.get("left_after_exit", "-")),
            s.get("note", ""),
        ]
        for mode, s in sessions.items()
    ]
    headers = ["mode", "sessions used", "open between runs", "open after exit", "notes"]
    print(format_table(headers, rows))
    print(
        "   sessions used = distinct server sessions that served a request, warm-up included;\n"
        "   open between runs = pg_stat_activity rows with the mode's application_name while\n"
        "   its worker idles (8 expected for every mode but no_pool)"
    )


def evaluate(
    summary: dict[str, dict[str, Any]], skipped: dict[str, str], failures: dict[str, str]
) -> list[dict[str, str]]:
    targets: list[dict[str, str]] = []

    def add(label: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        targets.append({"target": label, "status": status, "detail": detail})

    for target_mode, target_ratio in TARGETS.items():
        for threads in THREAD_COUNTS:
            check_target(summary, skipped, failures, add, target_mode, target_ratio, threads)
    for mode, failure in failures.items():
        add(f"{mode} ran to completion", False, failure[:100])
    return targets


def check_target(
    summary: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    failures: dict[str, str],
    add: Any,
    mode: str,
    target_ratio: float,
    threads: int,
) -> None:
    label = (
        f"{mode} {threads} thread{'s' if threads > 1 else ''}: "
        f"cost per request <= {target_ratio}x {REFERENCE_MODE}"
    )
    table = summary.get(str(threads), {})
    mine, ref = table.get(mode), table.get(REFERENCE_MODE)
    if mode in skipped:
        add(label, None, skipped[mode])
    elif REFERENCE_MODE in skipped:
        add(label, None, f"{REFERENCE_MODE}: {skipped[REFERENCE_MODE]}")
    elif mine is None or ref is None or mine["ratio"] != mine["ratio"]:
        add(label, False, failures.get(mode) or "no result")
    else:
        ok = mine["ratio"] <= target_ratio and not mine["errors"]
        spread = f"{fmt_ratio(mine['ratio_q1'])}..{fmt_ratio(mine['ratio_q3'])}"
        detail = (
            f"{mine['ratio']:.3f}x ({mine['median_us']:,.0f} vs {ref['median_us']:,.0f} "
            f"us/req, middle half {spread}, cpu {mine['cpu_ratio']:.2f}x)"
        )
        if mine["errors"]:
            detail += f", {mine['errors']} errors"
        add(label, ok, detail)


def read_sessions_counter(monitor: SessionMonitor) -> int | None:
    """pg_stat_database.sessions for the benchmark database (PostgreSQL >= 14)."""
    try:
        monitor._query("SELECT pg_stat_clear_snapshot()")
        value = monitor._query(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (BENCH_DB,)
        )
    except Exception:
        return None
    return int(value) if value is not None else None


def wait_sessions_gone(monitor: SessionMonitor, mode: str, grace: float = 5.0) -> int:
    deadline = time.monotonic() + grace
    while True:
        left = monitor.count(application_name(mode))
        if left <= 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 40 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument(
        "--modes",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(MODES)} ({REFERENCE_MODE} is always run)",
    )
    parser.add_argument(
        "--profile",
        metavar="MODE",
        choices=MODES,
        help="profile one mode's requests (1 thread, cProfile) in this process, then exit",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=1,
        metavar="N",
        help="queries per request, each in its own cursor (default 1; try 10)",
    )
    parser.add_argument("--profile-requests", type=int, default=2000, metavar="N")
    parser.add_argument("--profile-top", type=int, default=25, metavar="N")
    parser.add_argument("--worker", metavar="MODE", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return worker_main(args.worker)
    if args.profile:
        return profile_main(args.profile, args.profile_requests, args.profile_top, args.queries)

    settings = QUICK if args.quick else FULL
    wanted = list(MODES)
    if args.modes:
        chosen = {m.strip() for m in args.modes.split(",") if m.strip()}
        unknown = chosen - set(MODES)
        if unknown:
            parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
        wanted = [m for m in MODES if m in chosen or m == REFERENCE_MODE]

    if importlib.util.find_spec("psycopg") is None:
        print("psycopg 3 is not installed: every mode needs it", file=sys.stderr)
        return 2
    skipped = {m: why for m, why in unavailable_modes().items() if m in wanted}
    modes = [m for m in wanted if m not in skipped]

    server, source = discover_server()
    server.ensure_database(BENCH_DB)
    monitor = SessionMonitor(server.conninfo(BENCH_DB))
    config = {
        "server": server_config(server, args.queries),
        "warmup_seconds": settings.warmup_seconds,
    }
    load_before = os.getloadavg()
    started = time.perf_counter()
    server_started = monitor.server_started()
    sessions_before = read_sessions_counter(monitor)

    results: dict[str, Any] = {
        "meta": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "packages": package_versions(
                ("Django", "psycopg", "psycopg-pool", "SQLAlchemy", "django-db-connection-pool")
            ),
            "server": monitor.server_version(),
            "server_source": source,
            "mode": "quick" if args.quick else "full",
            "settings": asdict(settings),
            "threads": list(THREAD_COUNTS),
            "pool_size": POOL_SIZE,
            "query": QUERY,
        },
        "skipped": skipped,
    }
    meta = results["meta"]
    print("django_pool Django request benchmark")
    print(
        f"python {meta['python']}, {meta['cpus']} CPUs, PostgreSQL {meta['server']} "
        f"via {source}; load average {load_before[0]:.2f}"
    )
    print(", ".join(f"{k} {v}" for k, v in meta["packages"].items()))
    print(f"one request = WSGIHandler + view running {QUERY!r}; no middleware")
    for mode in wanted:
        print(
            f"  {mode:16} "
            + (f"NOT RUN: {skipped[mode]}" if mode in skipped else DESCRIPTIONS[mode])
        )

    if REFERENCE_MODE in skipped:
        print(f"cannot run without {REFERENCE_MODE}")
        return 2

    progress(f"starting {len(modes)} workers")
    failures: dict[str, str] = {}
    workers = start_workers(modes, config, failures)
    sessions: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[int, list[dict[str, Any] | None]]] = {}
    try:
        if REFERENCE_MODE in workers:
            runs = run_rounds(workers, settings)
        for mode, worker in workers.items():
            last = [s for by in runs.get(mode, {}).values() for s in by if s]
            hello = getattr(worker, "hello", {})
            seen = max(
                [s["sessions_seen"] for s in last]
                + [w["sessions_seen"] for w in hello.get("warmup", [])],
                default=0,
            )
            sessions[mode] = {"seen": seen, "held": monitor.count(application_name(mode))}
            if worker.failure:
                failures[mode] = worker.failure
    finally:
        for mode, worker in workers.items():
            bye = worker.stop()
            entry = sessions.setdefault(mode, {})
            entry["left_after_exit"] = wait_sessions_gone(monitor, mode)
            notes = []
            if bye.get("error"):
                notes.append(f"stop: {bye['error']}")
            if bye.get("threads_left"):
                notes.append(f"threads left: {', '.join(bye['threads_left'])}")
            if bye.get("close_error"):
                notes.append(f"pool close: {bye['close_error']}")
            if bye.get("killed"):
                notes.append("killed")
            entry["note"] = "; ".join(notes)
            entry["bye"] = bye
        time.sleep(0.5)  # let the exited backends flush their statistics
        sessions_after = read_sessions_counter(monitor)
        restarted = monitor.server_started() != server_started
        monitor.close()

    if REFERENCE_MODE not in workers:
        print(f"\n{REFERENCE_MODE} could not run: {failures.get(REFERENCE_MODE, '?')}")
        return 2

    summary = summarize(runs)
    results["runs"] = {mode: {str(t): v for t, v in by.items()} for mode, by in runs.items()}
    results["summary"] = summary
    results["sessions"] = sessions
    print_summary(summary, settings)
    print_sessions(sessions)
    if sessions_before is not None and sessions_after is not None:
        opened = sessions_after - sessions_before
        results["meta"]["server_sessions_opened"] = opened
        print(
            f"   pg_stat_database.sessions for {BENCH_DB} grew by {opened:,} during the run\n"
            "   (every mode and warm-up, plus any other client of that database)"
        )

    results["meta"]["server_restarted_during_run"] = restarted
    if restarted:
        print(
            "\nWARNING: the PostgreSQL server was restarted during this run (another user of "
            "the shared server?): errors and outliers above may come from that."
        )
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["load_average"] = [load_before[0], os.getloadavg()[0]]

    targets = evaluate(summary, skipped, failures)
    print()
    print(format_targets(f"Targets ({args.queries} queries a request)", targets))
    print(
        f"\nfinished in {results['meta']['seconds']:.0f} s; load average "
        f"{load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )

    return finish(results, targets, args.json, args.strict)


if __name__ == "__main__":
    sys.exit(main())
