"""Benchmark django_pool.Pool against psycopg_pool, SQLAlchemy's QueuePool and DBUtils.

All contenders hand out the same psycopg 3 connections (autocommit) to the same
PostgreSQL server, so only the pool differs. The machine this runs on is
assumed to be shared and noisy: contenders are run in short alternating rounds
(the starting contender rotates each round) and every ratio is taken within a
round against psycopg_pool, then the median over rounds is reported.

Sections:

1. one thread, checkout + return with no query: microseconds per operation;
2. 16 threads sharing 4 connections, checkout + ``SELECT 1`` + return for a
   fixed time: throughput, and fairness (fewest / most operations of a thread);
3. spike ("Welcome to the Jungle"): an empty pool whose connects take 150 ms
   more than usual, 50 threads released at once, each holding a connection
   for 2 ms: connections opened and the longest checkout wait.

Run ``python benchmarks/engine.py`` (``--quick`` for a smoke test, ``--json PATH``
to keep the figures, ``--strict`` to exit 1 when a django_pool target is missed).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from _common import (
    BENCH_DB,
    DESCRIPTIONS,
    REFERENCE,
    CloseReport,
    Connector,
    Contender,
    Factory,
    SessionMonitor,
    build,
    close_and_check,
    discover_server,
    finish,
    fmt,
    fmt_ratio,
    format_table,
    join_threads,
    load_django_pool,
    make_dbutils,
    make_django_pool,
    make_psycopg_pool,
    make_sqlalchemy,
    median,
    rotated,
)

POOL_SIZE = 4
CONTENTION_THREADS = 16
SPIKE_THREADS = 50
SPIKE_MAX_SIZE = 50
SPIKE_CONNECT_DELAY = 0.150
SPIKE_HOLD = 0.002

# A contention run stops counting after this many errors.
MAX_ERRORS = 1000

TARGET_SINGLE_RATIO = 0.5
TARGET_THROUGHPUT_RATIO = 1.0
TARGET_FAIRNESS = 0.9
TARGET_SPIKE_CONNECTIONS = 8


@dataclass(frozen=True)
class Settings:
    single_rounds: int
    single_round_seconds: float  # time psycopg_pool should take per round
    contention_rounds: int
    contention_seconds: float
    spike_trials: int


FULL = Settings(
    single_rounds=20,
    single_round_seconds=0.2,
    contention_rounds=3,
    contention_seconds=4.0,
    spike_trials=3,
)
QUICK = Settings(
    single_rounds=5,
    single_round_seconds=0.03,
    contention_rounds=1,
    contention_seconds=0.5,
    spike_trials=1,
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- 1. single


def _checkout_loop(acquire: Callable[[], Any], release: Callable[[Any], None], n: int) -> int:
    """Run ``n`` checkout + return pairs; return elapsed nanoseconds."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            release(acquire())
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def bench_single(contenders: dict[str, Contender], settings: Settings) -> dict[str, Any]:
    names = list(contenders)
    for contender in contenders.values():  # warm up caches and lazy paths
        _checkout_loop(contender.acquire, contender.release, 2000)
    ref = contenders[REFERENCE]
    calib = min(_checkout_loop(ref.acquire, ref.release, 2000) for _ in range(3)) / 2000
    ops = int(settings.single_round_seconds * 1e9 / max(calib, 1.0))
    ops = max(1000, min(ops, 500_000))

    per_round: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(settings.single_rounds):
        for name in rotated(names, rnd):
            contender = contenders[name]
            elapsed = _checkout_loop(contender.acquire, contender.release, ops)
            per_round[name].append(elapsed / ops / 1000.0)
        progress(f"  single thread: round {rnd + 1}/{settings.single_rounds} done")

    result: dict[str, Any] = {"ops_per_round": ops, "rounds": settings.single_rounds}
    table: dict[str, Any] = {}
    for name in names:
        ratios = [a / b for a, b in zip(per_round[name], per_round[REFERENCE], strict=True)]
        table[name] = {
            "us_per_op": per_round[name],
            "median_us": median(per_round[name]),
            "best_us": min(per_round[name]),
            "ratios": ratios,
            "ratio": median(ratios),
        }
    result["contenders"] = table
    return result


def print_single(result: dict[str, Any]) -> None:
    print(
        f"\n1. One thread, checkout + return, no query "
        f"({result['rounds']} rounds x {result['ops_per_round']:,} ops, alternating)"
    )
    rows = [
        [
            name,
            fmt(r["median_us"]),
            fmt(r["best_us"]),
            fmt_ratio(r["ratio"]),
            f"{fmt_ratio(min(r['ratios']))}..{fmt_ratio(max(r['ratios']))}",
        ]
        for name, r in result["contenders"].items()
    ]
    headers = ["contender", "median us/op", "best us/op", f"ratio vs {REFERENCE}", "ratio range"]
    print(format_table(headers, rows))


# --------------------------------------------------------------------------- 2. contention


def run_contention(contender: Contender, threads: int, seconds: float) -> dict[str, Any]:
    counts = [0] * threads
    errors: list[str] = []
    box = {"deadline": 0.0}

    def start() -> None:
        box["deadline"] = time.perf_counter() + seconds

    barrier = threading.Barrier(threads, action=start)
    acquire, release = contender.acquire, contender.release

    def work(index: int) -> None:
        # An error (say, the shared server restarted) is counted and the loop goes
        # on: a pool that recovers keeps serving, one that does not shows errors.
        done = 0
        try:
            barrier.wait(timeout=60.0)
        except threading.BrokenBarrierError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        deadline = box["deadline"]
        while time.perf_counter() < deadline and len(errors) < MAX_ERRORS:
            try:
                conn = acquire()
                try:
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchone()
                    cur.close()
                finally:
                    release(conn)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)
            else:
                done += 1
        counts[index] = done

    workers = [
        threading.Thread(target=work, args=(i,), name=f"bench-contention-{i}", daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    hung = join_threads(workers, seconds + 60.0)
    total = sum(counts)
    return {
        "ops_per_s": total / seconds,
        "fairness": min(counts) / max(counts) if max(counts) else 0.0,
        "thread_ops": counts,
        "errors": errors,
        "hung_threads": hung,
    }


def bench_contention(contenders: dict[str, Contender], settings: Settings) -> dict[str, Any]:
    names = list(contenders)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rnd in range(settings.contention_rounds):
        for name in rotated(names, rnd):
            run = run_contention(contenders[name], CONTENTION_THREADS, settings.contention_seconds)
            runs[name].append(run)
            progress(
                f"  contention: round {rnd + 1}/{settings.contention_rounds} {name}: "
                f"{run['ops_per_s']:,.0f} ops/s, fairness {run['fairness']:.2f}"
            )
            if run["hung_threads"]:
                progress(f"  contention: {name} left {len(run['hung_threads'])} threads hung")
    table: dict[str, Any] = {}
    for name in names:
        ratios = [
            a["ops_per_s"] / b["ops_per_s"] if b["ops_per_s"] else float("nan")
            for a, b in zip(runs[name], runs[REFERENCE], strict=True)
        ]
        fairness = [r["fairness"] for r in runs[name]]
        table[name] = {
            "runs": runs[name],
            "ops_per_s": median(r["ops_per_s"] for r in runs[name]),
            "ratios": ratios,
            "ratio": median(ratios),
            "fairness": median(fairness),
            "fairness_worst": min(fairness),
            "errors": sum(len(r["errors"]) for r in runs[name]),
            "first_error": next((r["errors"][0] for r in runs[name] if r["errors"]), ""),
            "hung": any(r["hung_threads"] for r in runs[name]),
        }
    return {
        "threads": CONTENTION_THREADS,
        "pool_size": POOL_SIZE,
        "seconds": settings.contention_seconds,
        "rounds": settings.contention_rounds,
        "contenders": table,
    }


def print_contention(result: dict[str, Any]) -> None:
    print(
        f"\n2. {result['threads']} threads on {result['pool_size']} connections, "
        f"checkout + SELECT 1 + return ({result['rounds']} rounds x "
        f"{result['seconds']:g} s per contender, alternating)"
    )
    rows = []
    for name, r in result["contenders"].items():
        per_thread = [n for run in r["runs"] for n in run["thread_ops"]]
        note = ""
        if r["hung"]:
            note = "HUNG"
        elif r["errors"]:
            note = f"{r['errors']} errors: {r['first_error'][:40]}"
        rows.append(
            [
                name,
                fmt(r["ops_per_s"], 0),
                fmt_ratio(r["ratio"]),
                fmt(r["fairness"]),
                fmt(r["fairness_worst"]),
                f"{min(per_thread):,}..{max(per_thread):,}",
                str(r.get("connections_opened", "?")),
                note,
            ]
        )
    headers = [
        "contender",
        "ops/s",
        f"ratio vs {REFERENCE}",
        "fairness",
        "worst fairness",
        "ops per thread",
        "conns opened",
        "notes",
    ]
    print(format_table(headers, rows))
    print(
        "   fairness = fewest / most operations of any thread in a run (median over rounds);\n"
        "   conns opened = connections each pool opened over sections 1 and 2 (4 is ideal)"
    )


# --------------------------------------------------------------------------- 3. spike


def _settle(connector: Connector, limit: float = 5.0) -> None:
    """Wait until no connect is in flight and none has started for a while."""
    quiet = max(0.3, 2 * connector.delay)
    deadline = time.monotonic() + limit
    last = (-1, -1)
    while time.monotonic() < deadline:
        now = (connector.attempts, connector.opened)
        if now == last and now[0] == now[1]:
            return
        last = now
        time.sleep(quiet)


def run_spike(
    name: str, factory: Factory, conninfo: str, monitor: SessionMonitor, trial: int
) -> dict[str, Any]:
    connector = Connector(conninfo, f"bench_spike_{name}_{trial}", delay=SPIKE_CONNECT_DELAY)
    baseline = set(threading.enumerate())
    contender = build(name, factory, connector, 0, SPIKE_MAX_SIZE)
    waits: list[float | None] = [None] * SPIKE_THREADS
    errors: list[str] = []
    barrier = threading.Barrier(SPIKE_THREADS)
    acquire, release = contender.acquire, contender.release

    def work(index: int) -> None:
        try:
            barrier.wait(timeout=60.0)
            start = time.perf_counter()
            conn = acquire()
            waits[index] = time.perf_counter() - start
            try:
                time.sleep(SPIKE_HOLD)
            finally:
                release(conn)
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [
        threading.Thread(target=work, args=(i,), name=f"bench-spike-{i}", daemon=True)
        for i in range(SPIKE_THREADS)
    ]
    started = time.perf_counter()
    hung: list[str] = []
    elapsed = float("nan")
    stats: dict[str, Any] | None = None
    try:
        for worker in workers:
            worker.start()
        hung = join_threads(workers, 90.0)
        elapsed = time.perf_counter() - started
        if not hung:
            _settle(connector)
        stats = contender.stats() if contender.stats else None
    finally:
        report = close_and_check(contender, monitor, baseline | set(workers))
    if hung:
        join_threads(workers, 5.0)
    measured = [w for w in waits if w is not None]
    return {
        "opened": connector.opened,
        "attempts": connector.attempts,
        "max_wait_ms": max(measured) * 1000 if measured else float("nan"),
        "median_wait_ms": median(measured) * 1000 if measured else float("nan"),
        "served": len(measured),
        "elapsed_s": elapsed,
        "errors": errors,
        "hung_threads": hung,
        "pool_stats": stats,
        "close": asdict(report),
    }


def bench_spike(
    factories: dict[str, Factory], conninfo: str, monitor: SessionMonitor, settings: Settings
) -> dict[str, Any]:
    names = list(factories)
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for trial in range(settings.spike_trials):
        for name in rotated(names, trial):
            run = run_spike(name, factories[name], conninfo, monitor, trial)
            trials[name].append(run)
            progress(
                f"  spike: trial {trial + 1}/{settings.spike_trials} {name}: "
                f"{run['opened']} connections, longest wait {run['max_wait_ms']:.0f} ms"
                + (f", {len(run['errors'])} errors" if run["errors"] else "")
                + (", HUNG" if run["hung_threads"] else "")
            )
    ref_wait = median(t["max_wait_ms"] for t in trials[REFERENCE])
    table: dict[str, Any] = {}
    for name in names:
        runs = trials[name]
        longest = median(t["max_wait_ms"] for t in runs)
        table[name] = {
            "trials": runs,
            "opened": median(t["opened"] for t in runs),
            "opened_max": max(t["opened"] for t in runs),
            "max_wait_ms": longest,
            "max_wait_ms_worst": max(t["max_wait_ms"] for t in runs),
            "median_wait_ms": median(t["median_wait_ms"] for t in runs),
            "wait_ratio": longest / ref_wait if ref_wait else float("nan"),
            "errors": sum(len(t["errors"]) for t in runs),
            "first_error": next((t["errors"][0] for t in runs if t["errors"]), ""),
            "hung": any(t["hung_threads"] for t in runs),
        }
    return {
        "threads": SPIKE_THREADS,
        "max_size": SPIKE_MAX_SIZE,
        "connect_delay_s": SPIKE_CONNECT_DELAY,
        "hold_s": SPIKE_HOLD,
        "trials": settings.spike_trials,
        "contenders": table,
    }


def print_spike(result: dict[str, Any]) -> None:
    print(
        f"\n3. Spike: empty pool (max {result['max_size']}), connect +"
        f"{result['connect_delay_s'] * 1000:.0f} ms, {result['threads']} threads at once, "
        f"hold {result['hold_s'] * 1000:g} ms ({result['trials']} trials, alternating)"
    )
    rows = []
    for name, r in result["contenders"].items():
        note = ""
        if r["hung"]:
            note = "HUNG"
        elif r["errors"]:
            note = f"{r['errors']} errors: {r['first_error'][:40]}"
        rows.append(
            [
                name,
                f"{r['opened']:g}",
                f"{r['opened_max']}",
                fmt(r["max_wait_ms"], 0),
                fmt(r["max_wait_ms_worst"], 0),
                fmt_ratio(r["wait_ratio"]),
                fmt(r["median_wait_ms"], 0),
                note,
            ]
        )
    headers = [
        "contender",
        "connections",
        "max conns",
        "longest wait ms",
        "worst ms",
        f"ratio vs {REFERENCE}",
        "median wait ms",
        "notes",
    ]
    print(format_table(headers, rows))
    print("   connections / longest wait = median over trials; max conns / worst = worst trial")


# --------------------------------------------------------------------------- report


def evaluate(results: dict[str, Any], have_engine: bool) -> list[dict[str, str]]:
    targets: list[dict[str, str]] = []

    def add(label: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        targets.append({"target": label, "status": status, "detail": detail})

    single = results.get("single_thread", {}).get("contenders", {}).get("django_pool")
    for label, message in results.get("section_errors", {}).items():
        add(f"{label} ran to completion", False, message[:100])

    if have_engine and single:
        ratio = single["ratio"]
        add(
            f"1. single-thread checkout+return <= {TARGET_SINGLE_RATIO}x {REFERENCE}",
            ratio <= TARGET_SINGLE_RATIO,
            f"{ratio:.2f}x ({single['median_us']:.2f} us/op)",
        )
    else:
        add(f"1. single-thread checkout+return <= {TARGET_SINGLE_RATIO}x", None, "no engine")

    cont = results.get("contention", {}).get("contenders", {}).get("django_pool")
    if have_engine and cont:
        add(
            f"2a. 16 threads/4 conns throughput >= {TARGET_THROUGHPUT_RATIO}x {REFERENCE}",
            cont["ratio"] >= TARGET_THROUGHPUT_RATIO and not cont["errors"] and not cont["hung"],
            f"{cont['ratio']:.2f}x ({cont['ops_per_s']:,.0f} ops/s, {cont['errors']} errors)",
        )
        add(
            f"2b. 16 threads/4 conns fairness >= {TARGET_FAIRNESS}",
            cont["fairness"] >= TARGET_FAIRNESS,
            f"{cont['fairness']:.2f} median, {cont['fairness_worst']:.2f} worst round",
        )
    else:
        add("2a. contention throughput", None, "no engine")
        add("2b. contention fairness", None, "no engine")

    spike = results.get("spike", {}).get("contenders", {})
    mine, ref = spike.get("django_pool"), spike.get(REFERENCE)
    if have_engine and mine and ref:
        add(
            f"3a. spike opens <= {TARGET_SPIKE_CONNECTIONS} connections",
            mine["opened_max"] <= TARGET_SPIKE_CONNECTIONS and not mine["errors"],
            f"{mine['opened']:g} median, {mine['opened_max']} worst trial"
            + (f", {mine['errors']} errors" if mine["errors"] else ""),
        )
        add(
            f"3b. spike longest wait <= {REFERENCE}'s",
            mine["max_wait_ms"] <= ref["max_wait_ms"] and not mine["hung"],
            f"{mine['max_wait_ms']:.0f} ms vs {ref['max_wait_ms']:.0f} ms "
            f"({mine['wait_ratio']:.2f}x)",
        )
    else:
        add("3a. spike connections", None, "no engine")
        add("3b. spike longest wait", None, "no engine")

    for name, reports in results.get("close_checks", {}).items():
        bad = [
            f"{where}: threads {r['threads_left']}"
            for where, r in reports.items()
            if r["threads_left"]
        ]
        bad += [
            f"{where}: {r['sessions_left']} sessions still open"
            for where, r in reports.items()
            if r["sessions_left"] > 0
        ]
        bad += [f"{where}: {r['error']}" for where, r in reports.items() if r["error"]]
        if name == "django_pool":
            add(
                "close() leaves no threads, sessions or errors",
                not bad,
                "; ".join(bad) or "clean",
            )
        elif bad:
            progress(f"note: {name} close: {'; '.join(bad)}")
    return targets


def print_targets(targets: list[dict[str, str]]) -> None:
    print("\nTargets for django_pool")
    width = max(len(t["target"]) for t in targets)
    for t in targets:
        print(f"{t['status']:4}  {t['target'].ljust(width)}  {t['detail']}")


def sections_one_two(
    factories: dict[str, Factory],
    conninfo: str,
    monitor: SessionMonitor,
    settings: Settings,
    results: dict[str, Any],
) -> None:
    """Sections 1 and 2 share one pool per contender, min = max = 4."""
    contenders: dict[str, Contender] = {}
    try:
        for name, factory in factories.items():
            connector = Connector(conninfo, f"bench_{name}")
            contenders[name] = build(name, factory, connector, POOL_SIZE, POOL_SIZE)
        progress("section 1: single thread")
        results["single_thread"] = bench_single(contenders, settings)
        print_single(results["single_thread"])
        progress("section 2: contention")
        results["contention"] = bench_contention(contenders, settings)
        for name, contender in contenders.items():
            entry = results["contention"]["contenders"][name]
            entry["connections_opened"] = contender.connector.opened
            if contender.stats:
                entry["pool_stats"] = contender.stats()
        print_contention(results["contention"])
    finally:
        for name, contender in contenders.items():
            report: CloseReport = close_and_check(contender, monitor)
            results["close_checks"][name]["sections 1-2"] = asdict(report)


def section_three(
    factories: dict[str, Factory],
    conninfo: str,
    monitor: SessionMonitor,
    settings: Settings,
    results: dict[str, Any],
) -> None:
    progress("section 3: spike")
    results["spike"] = bench_spike(factories, conninfo, monitor, settings)
    print_spike(results["spike"])
    for name, entry in results["spike"]["contenders"].items():
        for i, trial in enumerate(entry["trials"]):
            results["close_checks"][name][f"spike trial {i + 1}"] = trial["close"]


def run_section(label: str, results: dict[str, Any], body: Callable[[], None]) -> None:
    """Run one section; a failure is reported and the run goes on to the next."""
    try:
        body()
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        results.setdefault("section_errors", {})[label] = message
        print(f"\n{label} FAILED: {message}")


def package_versions() -> dict[str, str]:
    versions = {}
    for dist in ("psycopg", "psycopg-pool", "SQLAlchemy", "DBUtils"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--skip-engine",
        action="store_true",
        help="leave django_pool out (to test the harness on the other pools)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL

    pool_class, why = (None, "--skip-engine") if args.skip_engine else load_django_pool()
    factories: dict[str, Factory] = {}
    if pool_class is not None:
        factories["django_pool"] = make_django_pool(pool_class)
    factories[REFERENCE] = make_psycopg_pool
    factories["sqlalchemy"] = make_sqlalchemy
    factories["dbutils"] = make_dbutils

    server, source = discover_server()
    server.ensure_database(BENCH_DB)
    conninfo = server.conninfo(BENCH_DB)
    monitor = SessionMonitor(conninfo)
    initial_threads = set(threading.enumerate())
    load_before = os.getloadavg()
    started = time.perf_counter()

    results: dict[str, Any] = {
        "meta": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "packages": package_versions(),
            "server": monitor.server_version(),
            "server_source": source,
            "mode": "quick" if args.quick else "full",
            "settings": asdict(settings),
            "django_pool": "loaded" if pool_class is not None else f"not run ({why})",
        },
        "close_checks": {name: {} for name in factories},
    }
    meta = results["meta"]
    print("django_pool engine benchmark")
    print(
        f"python {meta['python']}, {meta['cpus']} CPUs, PostgreSQL {meta['server']} "
        f"via {source}; load average {load_before[0]:.2f}"
    )
    print(", ".join(f"{k} {v}" for k, v in meta["packages"].items()))
    for name in factories:
        print(f"  {name:13} {DESCRIPTIONS[name]}")
    if pool_class is None:
        print(f"  django_pool   NOT RUN: {why}")

    server_started = monitor.server_started()
    try:
        run_section(
            "sections 1-2",
            results,
            lambda: sections_one_two(factories, conninfo, monitor, settings, results),
        )
        run_section(
            "section 3",
            results,
            lambda: section_three(factories, conninfo, monitor, settings, results),
        )
        restarted = monitor.server_started() != server_started
    finally:
        monitor.close()
    results["meta"]["server_restarted_during_run"] = restarted
    if restarted:
        print(
            "\nWARNING: the PostgreSQL server was restarted during this run (another user of "
            "the shared server?): errors and outliers above may come from that, not a pool."
        )

    leftover = join_threads(list(set(threading.enumerate()) - initial_threads), 3.0)
    results["meta"]["threads_left_at_exit"] = leftover
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["load_average"] = [load_before[0], os.getloadavg()[0]]

    targets = evaluate(results, pool_class is not None)
    print_targets(targets)
    print(
        f"\nfinished in {results['meta']['seconds']:.0f} s; load average "
        f"{load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}; threads left: "
        f"{', '.join(leftover) if leftover else 'none'}"
    )

    return finish(results, targets, args.json, args.strict)


if __name__ == "__main__":
    sys.exit(main())
