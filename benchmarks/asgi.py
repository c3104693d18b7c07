"""Pools of 4 connections, 40 clients, a view that waits 50 ms between two queries.

Django under real servers, with the project in ``benchmarks/asgi_app.py``: its
one view runs ``SELECT 1`` through ``connection.cursor()``, waits 50 ms
(standing for a call to another service) and runs ``SELECT 1`` again.

1. ``asgi``: the async view (``await asyncio.sleep(0.05)``, queries through
   ``sync_to_async``) under uvicorn, 1 worker;
2. ``wsgi``: the sync view (``time.sleep(0.05)``) under gunicorn
   ``-k gthread --workers 1 --threads 40``.

Modes, the same in both parts:

* ``django_builtin``: ``django.db.backends.postgresql`` with
  ``OPTIONS["pool"] = {"min_size": 4, "max_size": 4, "timeout": 10}``;
* ``request``: ``django_pool.backends.postgresql``, same pool;
* ``transaction``: the same with ``"release": "transaction"`` (reported as
  not available when the backend refuses the key);
* ``no_pool``: Django's backend, ``CONN_MAX_AGE=0``, a connection per request;
* ``ceiling``: the same view with no database at all (only the wait).

A pool that keeps a request's connection until the request ends serves at
most 4 requests per 50 ms; one that takes it back between statements lets 40
requests wait at once. The load comes from ``django_pool.demo.load`` (40
keep-alive connections, in a process of its own); servers are started through
``django_pool.demo.servers`` and always stopped, whatever the way out
(``django_pool.demo.processes``). One server per mode is started per part and
kept across rounds; each round gives every mode a slot (the first mode
rotating) and the report gives medians over rounds. Ratios are taken within a
round, so the slots compared are close in time.

Run ``python benchmarks/asgi.py`` (``--quick`` for a smoke test, ``--json PATH``
to keep the figures, ``--strict`` to exit 1 when a target is missed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from _common import (
    BENCH_DB,
    SRC_DIR,
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

use_checkout_sources()

from django_pool.demo import load, processes  # noqa: E402 - this checkout's sources
from django_pool.demo.servers import Server, ServerFailed, ServerKind, Workers  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent

#: Every mode, in report order.
MODES = ("django_builtin", "request", "transaction", "no_pool", "ceiling")
#: Modes whose server connections must stay within the pool.
POOLED = ("django_builtin", "request", "transaction")

DESCRIPTIONS = {
    "django_builtin": "django.db.backends.postgresql, OPTIONS pool min=max=4, timeout 10",
    "request": "django_pool.backends.postgresql, OPTIONS pool min=max=4, timeout 10",
    "transaction": 'django_pool.backends.postgresql, same pool + "release": "transaction"',
    "no_pool": "django.db.backends.postgresql, CONN_MAX_AGE=0 (connect per request)",
    "ceiling": "the same view without any database work (only the wait)",
}

CLIENTS = 40
POOL_SIZE = 4
POOL = {"min_size": POOL_SIZE, "max_size": POOL_SIZE, "timeout": 10}
SLEEP = 0.05

#: Seconds between two polls of pg_stat_activity during a slot.
SAMPLE_INTERVAL = 0.05
#: A server under load with more sessions than this is killed at once (no_pool
#: needs up to one per client, plus a few that are still exiting) ...
MODE_SESSIONS_GUARD = 60
#: ... and so is one holding more than a pool when the server as a whole has
#: this many client sessions: the benchmark must never fill its slots.
SERVER_SESSIONS_GUARD = 85


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float  # measured, per mode and round
    warmup: float  # load before each measured slot, not counted


FULL = Settings(rounds=5, seconds=2.0, warmup=0.3)
QUICK = Settings(rounds=2, seconds=0.6, warmup=0.15)

# The demo's servers serve the demo's project; ours run the same commands on asgi_app.
_DEMO_APPS = (
    "django_pool.demo.project.asgi:application",
    "django_pool.demo.project.wsgi:application",
)


@dataclass(frozen=True)
class BenchServerKind(ServerKind):
    """A :class:`~django_pool.demo.servers.ServerKind` serving ``asgi_app`` instead."""

    app: str = ""

    def argv(self, port: int, workers: Workers) -> list[str]:
        argv = super().argv(port, workers)
        replaced = [self.app if arg in _DEMO_APPS else arg for arg in argv]
        if replaced == argv:
            raise RuntimeError(f"no demo application to replace in {argv}")
        return replaced


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    kind: BenchServerKind
    workers: Workers
    #: (mode, reference, minimum) for each ratio target of req/s.
    ratio_targets: tuple[tuple[str, str, float], ...]


PARTS = {
    "asgi": Part(
        "asgi",
        "async view (await asyncio.sleep) under uvicorn, 1 worker",
        BenchServerKind("uvicorn", "uvicorn", "/async", app="asgi_app:application"),
        Workers(processes=1, threads=1),
        (("transaction", "django_builtin", 4.0), ("transaction", "ceiling", 0.75)),
    ),
    "wsgi": Part(
        "wsgi",
        "sync view (time.sleep) under gunicorn -k gthread --workers 1 --threads 40",
        BenchServerKind("gunicorn", "gunicorn", "/sync", app="asgi_app:wsgi_application"),
        Workers(processes=1, threads=CLIENTS),
        (("transaction", "django_builtin", 4.0),),
    ),
}


def application_name(part: str, mode: str) -> str:
    return f"bench_asgi_{part}_{mode}"


def database_settings(mode: str, server: Any, part: str) -> dict[str, Any] | None:
    """``DATABASES["default"]`` for ``mode`` (None: no database, the ceiling)."""
    if mode == "ceiling":
        return None
    database: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": BENCH_DB,
        "USER": server.user,
        "PASSWORD": server.password,
        "HOST": server.host,
        "PORT": str(server.port),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"application_name": application_name(part, mode)},
    }
    if mode == "django_builtin":
        database["OPTIONS"]["pool"] = dict(POOL)
    elif mode == "request":
        database["ENGINE"] = "django_pool.backends.postgresql"
        database["OPTIONS"]["pool"] = dict(POOL)
    elif mode == "transaction":
        database["ENGINE"] = "django_pool.backends.postgresql"
        database["OPTIONS"]["pool"] = {**POOL, "release": "transaction"}
    elif mode != "no_pool":
        raise ValueError(f"unknown mode {mode!r}")
    return database


def server_environment(mode: str, server: Any, part: str) -> dict[str, str]:
    database = database_settings(mode, server, part)
    python_path = [str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "BENCH_ASGI_DATABASE": json.dumps(database) if database else "",
        "BENCH_ASGI_SLEEP": str(SLEEP),
        "PYTHONPATH": os.pathsep.join(python_path),
    }


# =========================================================================== sessions


@dataclass
class Watch:
    """What the sampler saw during one slot."""

    peak: int = 0
    peak_server: int = 0
    samples: int = 0
    sample_errors: int = 0
    guard: str = ""


class SessionSampler(SessionMonitor):
    """Polls pg_stat_activity from a connection of its own, in a thread during each slot.

    Every mode's server stays up for the whole part (the pools keep their
    connections open while idle), so sessions are told apart by
    ``application_name`` within the benchmark database.
    """

    SQL = (
        "SELECT count(*) FILTER (WHERE datname = %s AND application_name = %s), "
        "count(*) FILTER (WHERE backend_type = 'client backend') FROM pg_stat_activity"
    )

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo, application_name="bench_asgi_monitor")

    def counts(self, app: str) -> tuple[int, int]:
        """(sessions with ``app`` as application_name, client sessions on the server)."""
        mine, everyone = self._row(self.SQL, (BENCH_DB, app))
        return int(mine), int(everyone)

    def value(self, sql: str) -> str:
        found = self._query(sql)
        return "?" if found is None else str(found)

    def wait_gone(self, app: str, grace: float = 10.0) -> int:
        """Wait for ``app``'s sessions to end; return how many are left."""
        deadline = time.monotonic() + grace
        while True:
            left = self.counts(app)[0]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    @contextlib.contextmanager
    def watch(self, app: str, on_excess: Callable[[str], None]) -> Iterator[Watch]:
        """Sample ``app``'s sessions every SAMPLE_INTERVAL for the ``with`` block."""
        watch = Watch()
        stop = threading.Event()

        def sample() -> None:
            while True:
                try:
                    mine, everyone = self.counts(app)
                except psycopg.Error:
                    watch.sample_errors += 1
                else:
                    watch.samples += 1
                    watch.peak = max(watch.peak, mine)
                    watch.peak_server = max(watch.peak_server, everyone)
                    reason = ""
                    if mine > MODE_SESSIONS_GUARD:
                        reason = f"{mine} sessions (more than {MODE_SESSIONS_GUARD})"
                    elif everyone >= SERVER_SESSIONS_GUARD and mine > POOL_SIZE:
                        reason = f"{mine} sessions while the server has {everyone} clients"
                    if reason and not watch.guard:
                        watch.guard = reason
                        on_excess(reason)
                if stop.wait(SAMPLE_INTERVAL):
                    return

        thread = threading.Thread(target=sample, name="bench-asgi-sampler", daemon=True)
        thread.start()
        try:
            yield watch
        finally:
            stop.set()
            thread.join(timeout=10.0)


# =========================================================================== servers


@dataclass
class ModeServer:
    mode: str
    server: Server | None = None
    status: str = "starting"  # "ran", "not available", "failed"
    reason: str = ""


def probe(server: Server) -> dict[str, Any]:
    """One query through the mode's settings, reported by the app instead of a 500."""
    with urllib.request.urlopen(server.base_url + "/probe", timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def start_servers(
    part: Part, modes: list[str], db_server: Any, workdir: Path, stack: contextlib.ExitStack
) -> dict[str, ModeServer]:
    """One server per mode, started together, each checked with one query."""
    started: dict[str, ModeServer] = {}
    for mode in modes:
        env = server_environment(mode, db_server, part.key)
        server = stack.enter_context(
            Server(part.kind, part.workers, env, workdir, f"{part.key}-{mode}")
        )
        started[mode] = ModeServer(mode, server)
    for mode, entry in started.items():
        assert entry.server is not None
        try:
            entry.server.wait_ready()
            answer = probe(entry.server)
        except ServerFailed as exc:
            message = str(exc)
            found = [line for line in message.splitlines() if "ImproperlyConfigured" in line]
            if found:
                entry.status, entry.reason = "not available", found[-1].strip()
            else:
                entry.status, entry.reason = "failed", message
        except (OSError, urllib.error.URLError, ValueError) as exc:
            entry.status = "failed"
            entry.reason = (
                f"probe: {type(exc).__name__}: {exc}\n{entry.server.child.output_tail()}"
            )
        else:
            if answer.get("ok"):
                entry.status = "ran"
            elif answer.get("type") == "ImproperlyConfigured":
                entry.status = "not available"
                entry.reason = f"ImproperlyConfigured: {answer.get('error')}"
            else:
                entry.status = "failed"
                entry.reason = f"probe: {answer.get('type')}: {answer.get('error')}"
        if entry.status != "ran":
            entry.server.child.stop()
            progress(f"  {part.key} {mode}: {entry.status}: {entry.reason.splitlines()[0]}")
    return started


# =========================================================================== slots


def run_slot(
    part: Part,
    entry: ModeServer,
    sampler: SessionSampler,
    settings: Settings,
    workdir: Path,
) -> dict[str, Any]:
    """A warm-up, then one measured load while the sampler watches the mode's sessions."""
    server = entry.server
    assert server is not None
    log = workdir / f"load-{part.key}-{entry.mode}.log"
    slot: dict[str, Any] = {"part": part.key, "mode": entry.mode}
    warm_errors = 0
    if settings.warmup:
        warm = load.generate("builtin", server.url, CLIENTS, settings.warmup, log)
        warm_errors = warm.errors

    def kill(reason: str) -> None:
        progress(f"  GUARD: {part.key} {entry.mode}: {reason}: killing its server")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.child.pid, signal.SIGKILL)

    with sampler.watch(application_name(part.key, entry.mode), kill) as watch:
        result = load.generate("builtin", server.url, CLIENTS, settings.seconds, log)
    slot.update(asdict(result))
    slot["requests_per_second"] = result.requests_per_second
    slot["warmup_errors"] = warm_errors
    slot["peak_connections"] = watch.peak
    slot["peak_server_clients"] = watch.peak_server
    slot["samples"] = watch.samples
    slot["sample_errors"] = watch.sample_errors
    if watch.guard:
        slot["guard"] = watch.guard
    if result.errors:
        slot["server_log_tail"] = server.child.output_tail(5)
    return slot


def run_part(
    part: Part,
    db_server: Any,
    sampler: SessionSampler,
    settings: Settings,
    workdir: Path,
    ports: list[int],
    pids: list[int],
) -> dict[str, Any]:
    progress(f"{part.key}: starting {len(MODES)} {part.kind.label} servers ({part.title})")
    slots: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        entries = start_servers(part, list(MODES), db_server, workdir, stack)
        for entry in entries.values():
            assert entry.server is not None
            ports.append(entry.server.port)
            pids.append(entry.server.child.pid)
        for round_no in range(settings.rounds):
            running = [m for m in MODES if entries[m].status == "ran"]
            for position, mode in enumerate(rotated(running, round_no)):
                entry = entries[mode]
                if entry.status != "ran":
                    continue
                try:
                    slot = run_slot(part, entry, sampler, settings, workdir)
                except RuntimeError as exc:  # the load generator failed
                    slot = {"part": part.key, "mode": mode, "failure": str(exc)}
                slot["round"] = round_no
                slot["position"] = position
                slots.append(slot)
                assert entry.server is not None
                if entry.server.child.exited() or slot.get("guard") or slot.get("failure"):
                    entry.status = "failed"
                    entry.reason = (
                        slot.get("guard")
                        or slot.get("failure")
                        or (
                            f"server exited with code {entry.server.child.proc.returncode}:\n"
                            + entry.server.child.output_tail()
                        )
                    )
                    entry.server.child.stop()
                    progress(f"  {part.key} {mode}: failed: {entry.reason.splitlines()[0]}")
                    continue
                progress(
                    f"  {part.key} round {round_no + 1}/{settings.rounds} {mode:14} "
                    f"{slot['requests_per_second']:7,.0f} req/s, p50 {slot['p50_ms'] or 0:6.1f} "
                    f"ms, p99 {slot['p99_ms'] or 0:6.1f} ms, {slot['errors']} errors, "
                    f"peak {slot['peak_connections']} sessions"
                )
        progress(f"{part.key}: stopping the servers")
    # Every server of the part is stopped (ExitStack): their sessions must go.
    left = {
        mode: sampler.wait_gone(application_name(part.key, mode))
        for mode in MODES
        if mode != "ceiling"
    }
    return {
        "title": part.title,
        "modes": {m: {"status": e.status, "reason": e.reason} for m, e in entries.items()},
        "slots": slots,
        "sessions_left": left,
    }


# =========================================================================== report


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b:
        return float("nan")
    return a / b


def summarize(part_result: dict[str, Any]) -> dict[str, Any]:
    """Per mode: medians over rounds, total errors, peak sessions, ratios within rounds."""
    slots = [s for s in part_result["slots"] if "failure" not in s]
    rps: dict[str, dict[int, float]] = {m: {} for m in MODES}
    for slot in slots:
        rps[slot["mode"]][slot["round"]] = slot["requests_per_second"]
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [s for s in slots if s["mode"] == mode]
        first_errors = [s["first_error"] for s in mine if s.get("first_error")]
        entry: dict[str, Any] = {
            **part_result["modes"][mode],
            "slots": len(mine),
            "requests_per_second": median(s["requests_per_second"] for s in mine),
            "p50_ms": median(s["p50_ms"] for s in mine if s["p50_ms"] is not None),
            "p99_ms": median(s["p99_ms"] for s in mine if s["p99_ms"] is not None),
            "errors": sum(s["errors"] + s["warmup_errors"] for s in mine),
            "first_error": first_errors[0] if first_errors else "",
            "peak_connections": max((s["peak_connections"] for s in mine), default=None),
        }
        for reference in ("django_builtin", "ceiling"):
            ratios = [
                _ratio(value, rps[reference].get(round_no))
                for round_no, value in rps[mode].items()
            ]
            ratios = [r for r in ratios if r == r]
            entry[f"vs_{reference}"] = median(ratios)
            entry[f"vs_{reference}_range"] = [min(ratios), max(ratios)] if ratios else []
        summary[mode] = entry
    return summary


def print_part(part: Part, summary: dict[str, Any], settings: Settings) -> None:
    print(
        f"\n{part.key}: {part.title}\n"
        f"{CLIENTS} keep-alive clients, pools of {POOL_SIZE}, view = query, sleep "
        f"{SLEEP * 1000:.0f} ms, query; median of {settings.rounds} rounds x "
        f"{settings.seconds:g} s"
    )
    headers = [
        "mode",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "peak conns",
        "vs django_builtin",
        "vs ceiling",
    ]
    rows = []
    notes = []
    for mode in MODES:
        entry = summary[mode]
        if not entry["slots"]:
            rows.append([mode, *["-"] * (len(headers) - 1)])
            reason = entry["reason"].splitlines()[0] if entry["reason"] else "no result"
            notes.append(f"  {mode}: {entry['status']}: {reason}")
            continue
        peak = entry["peak_connections"]
        rows.append(
            [
                mode,
                fmt(entry["requests_per_second"], 1),
                fmt(entry["p50_ms"], 1),
                fmt(entry["p99_ms"], 1),
                str(entry["errors"]),
                "-" if mode == "ceiling" else str(peak),
                fmt_ratio(entry["vs_django_builtin"]),
                fmt_ratio(entry["vs_ceiling"]),
            ]
        )
        if entry["status"] != "ran":
            notes.append(f"  {mode}: {entry['status']} after some slots: {entry['reason']}")
        if entry["first_error"]:
            notes.append(f"  {mode}: first error: {entry['first_error']}")
    print(format_table(headers, rows))
    for note in notes:
        print(note)


def evaluate(parts: list[Part], summaries: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    targets: list[dict[str, str]] = []

    def add(name: str, status: str, detail: str) -> None:
        targets.append({"target": name, "status": status, "detail": detail})

    for part in parts:
        summary = summaries[part.key]
        for mode, reference, minimum in part.ratio_targets:
            name = f"{part.key}: {mode} / {reference} req/s >= {minimum:g}"
            mine, ref = summary[mode], summary[reference]
            missing = [e for e in (mine, ref) if not e["slots"]]
            if missing:
                what = mode if missing[0] is mine else reference
                why = missing[0]["reason"].splitlines()[0] if missing[0]["reason"] else ""
                add(name, "SKIP", f"{what} {missing[0]['status']}: {why}"[:160])
                continue
            ratio = mine[f"vs_{reference}"]
            low, high = mine[f"vs_{reference}_range"]
            add(
                name,
                "PASS" if ratio >= minimum else "FAIL",
                f"{ratio:.2f}x (rounds {low:.2f}..{high:.2f}; "
                f"{mine['requests_per_second']:,.0f} vs {ref['requests_per_second']:,.0f} req/s)",
            )
        ran = [m for m in MODES if summary[m]["slots"]]
        errors = {m: summary[m]["errors"] for m in ran}
        failed = [m for m in MODES if summary[m]["status"] == "failed"]
        bad = [m for m, n in errors.items() if n] + failed
        detail = ", ".join(f"{m} {n}" for m, n in errors.items())
        if failed:
            detail += f"; failed: {', '.join(failed)}"
        add(f"{part.key}: no errors", "FAIL" if bad else "PASS", detail)
        pooled = [m for m in POOLED if summary[m]["slots"]]
        peaks = {m: summary[m]["peak_connections"] for m in pooled}
        over = [m for m, p in peaks.items() if p is None or p > POOL_SIZE]
        add(
            f"{part.key}: peak server connections <= {POOL_SIZE} (pooled modes)",
            "FAIL" if over or not pooled else "PASS",
            ", ".join(f"{m} {p}" for m, p in peaks.items()) or "no pooled mode ran",
        )
    return targets


def still_listening(ports: list[int]) -> list[int]:
    listening = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                listening.append(port)
    return listening


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 40 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(PARTS)} (default: both)",
    )
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(chosen) - set(PARTS)
    if unknown or not chosen:
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    parts = [PARTS[key] for key in PARTS if key in chosen]
    settings = QUICK if args.quick else FULL

    # The children (servers, load generator) import this checkout's django_pool too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(SRC_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    processes.handle_signals()
    started = time.perf_counter()
    db_server, source = discover_server()
    db_server.ensure_database(BENCH_DB)
    sampler = SessionSampler(db_server.conninfo(BENCH_DB))
    postmaster_started = sampler.value("SELECT pg_postmaster_start_time()")
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "meta": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "packages": package_versions(
                ("Django", "psycopg", "psycopg-pool", "uvicorn", "gunicorn", "asgiref")
            ),
            "server": sampler.value("SHOW server_version"),
            "server_source": source,
            "mode": "quick" if args.quick else "full",
            "settings": asdict(settings),
            "clients": CLIENTS,
            "pool": POOL,
            "sleep_s": SLEEP,
        },
        "parts": {},
    }
    meta = results["meta"]
    per_slot = settings.seconds + settings.warmup + 0.6
    estimate = len(parts) * (settings.rounds * len(MODES) * per_slot + 8)
    progress(f"about {estimate:.0f} s: {len(parts)} parts x {settings.rounds} rounds x 5 modes")
    print("django_pool ASGI / threaded-WSGI benchmark: 4 pooled connections, 40 clients")
    print(
        f"python {meta['python']}, {meta['cpus']} CPUs, PostgreSQL {meta['server']} "
        f"via {source}; load average {load_before[0]:.2f}"
    )
    print(", ".join(f"{k} {v}" for k, v in meta["packages"].items()))
    for mode in MODES:
        print(f"  {mode:15} {DESCRIPTIONS[mode]}")

    workdir = Path(tempfile.mkdtemp(prefix="django-pool-bench-asgi-"))
    keep_logs = False
    ports: list[int] = []
    pids: list[int] = []
    try:
        for part in parts:
            results["parts"][part.key] = run_part(
                part, db_server, sampler, settings, workdir, ports, pids
            )
    except KeyboardInterrupt:
        processes.stop_all()
        progress("interrupted: every process stopped")
        return 130
    except Exception:
        keep_logs = True
        raise
    finally:
        processes.stop_all()
        listening = still_listening(ports)
        groups_left = [pid for pid in pids if processes.group_members(pid)]
        if listening or groups_left:
            progress(f"WARNING: still listening on {listening}; process groups left {groups_left}")
        restarted = sampler.value("SELECT pg_postmaster_start_time()") != postmaster_started
        sampler.close()
        failed = any(
            m["status"] == "failed" for r in results["parts"].values() for m in r["modes"].values()
        )
        if (keep_logs or failed) and any(workdir.iterdir()):
            progress(f"the servers' logs are in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summaries = {}
    for part in parts:
        summary = summarize(results["parts"][part.key])
        summaries[part.key] = summary
        results["parts"][part.key]["summary"] = summary
        print_part(part, summary, settings)
    left = {
        f"{key}/{mode}": n
        for key, r in results["parts"].items()
        for mode, n in r["sessions_left"].items()
        if n
    }
    print(
        f"\nafter exit: ports listening {listening or 'none'}, process groups left "
        f"{groups_left or 'none'}, sessions left {left or 'none'}"
    )
    meta.update(
        seconds=time.perf_counter() - started,
        load_average=[load_before[0], os.getloadavg()[0]],
        ports_listening=listening,
        process_groups_left=groups_left,
        sessions_left=left,
        server_restarted_during_run=restarted,
    )
    if restarted:
        print("\nWARNING: the PostgreSQL server was restarted during this run")

    targets = evaluate(parts, summaries)
    if listening or groups_left or left:
        targets.append(
            {
                "target": "nothing left running",
                "status": "FAIL",
                "detail": f"ports {listening}, groups {groups_left}, sessions {left}",
            }
        )
    print()
    print(format_targets("Targets", targets))
    print(
        f"\nfinished in {meta['seconds']:.0f} s; load average "
        f"{load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    return finish(results, targets, args.json, args.strict)


if __name__ == "__main__":
    sys.exit(main())
