"""Run Django's own test suite through Django's backend and through django-pool's; compare.

    python -m tests.django_suite.compare --django PATH --vendor postgresql [--driver psycopg2]
        [--pool '{"release": "transaction"}'] [--parallel 2] [labels...]

``PATH`` is an unpacked Django sdist (the one matching the installed Django).
Both runs use the same settings (:mod:`tests.django_suite.settings`) but for
the ENGINE and ``OPTIONS["pool"]``, and run at the same time on the same server
under different database names. Every test whose outcome differs between
them is printed; the exit status is 1 if any differs and is not listed in
``known_differences.toml`` with the reason pooling alone must cause it.

The server is the one :mod:`django_pool.testservers` finds (``PGHOST``... /
``MYSQL_HOST``...; an embedded PostgreSQL when none answers). Without a MySQL
server, a MySQL run says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from django_pool import testservers

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: The labels the pooled backends must pass as Django's own do.
LABELS = [
    "backends",
    "transactions",
    "basic",
    "select_for_update",
    "queries",
    "get_or_create",
    "bulk_create",
    "model_fields",
    "timezones",
    "db_functions",
    "expressions",
    "update",
    "delete",
    "raw_query",
    "custom_lookups",
    "test_utils",
    "servers",
    "async",
    "migrations",
    "schema",
    "indexes",
    "constraints",
    "postgres_tests",
    "inspectdb",
    "introspection",
    "fixtures",
    "serializers",
    "aggregation",
    "annotations",
]

FAILED = frozenset({"failure", "error", "unexpected success", "missing"})


@dataclass(frozen=True)
class Run:
    name: str
    pooled: bool
    results: Path
    log: Path


def server_env(vendor: str) -> dict[str, str] | None:
    """DJANGO_SUITE_* variables naming the server, or None if there is no MySQL server."""
    if vendor == "postgresql":
        pg = testservers.postgres_server()
        host, port, user, password = pg.host, pg.port, pg.user, pg.password
    else:
        my = testservers.mysql_server()
        if my is None:
            return None
        host, port, user, password = my.host, my.port, my.user, my.password
    return {
        "DJANGO_SUITE_VENDOR": vendor,
        "DJANGO_SUITE_HOST": host,
        "DJANGO_SUITE_PORT": str(port),
        "DJANGO_SUITE_USER": user,
        "DJANGO_SUITE_PASSWORD": password,
    }


def start(
    run: Run, labels: list[str], parallel: int, base_env: dict[str, str], args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **base_env,
        "DJANGO_SUITE_POOLED": "1" if run.pooled else "0",
        "DJANGO_SUITE_POOL": args.pool,
        # Per process: two comparisons may share a server at the same time.
        "DJANGO_SUITE_PREFIX": f"djs{os.getpid()}_{run.name}",
        "DJANGO_SUITE_RESULTS": str(run.results),
    }
    path = [str(REPO)]
    if args.driver == "psycopg2":
        path.insert(0, str(HERE / "hide_psycopg3"))
    env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "runtests.py",
        "--settings=tests.django_suite.settings",
        f"--parallel={parallel}",
        "--noinput",
        "-v",
        "2",
        *labels,
    ]
    run.results.unlink(missing_ok=True)
    with run.log.open("wb") as log:
        return subprocess.Popen(
            command, cwd=args.django / "tests", env=env, stdout=log, stderr=log
        )


def outcomes(run: Run) -> tuple[dict[str, str], dict[str, str]]:
    if not run.results.exists():
        tail = run.log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"the {run.name} run wrote no results; its log ends:\n" + "\n".join(tail))
    data = json.loads(run.results.read_text())
    return data["outcomes"], data["details"]


def known_differences(vendor: str, driver: str, pool: str) -> dict[str, str]:
    """Tests allowed to differ in this configuration, with why pooling must cause it."""
    listed = tomllib.loads((HERE / "known_differences.toml").read_text())
    allowed = {}
    for entry in listed.get("difference", []):
        if entry.get("vendor", vendor) != vendor or entry.get("driver", driver) != driver:
            continue
        if "release" in entry and entry["release"] not in pool:
            continue
        for test in entry["tests"]:
            allowed[test] = entry["why"]
    return allowed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--django", type=Path, required=True, help="an unpacked Django sdist")
    parser.add_argument("--vendor", choices=("postgresql", "mysql"), default="postgresql")
    parser.add_argument("--driver", choices=("psycopg", "psycopg2", "mysqlclient"))
    parser.add_argument("--pool", default="true", help='OPTIONS["pool"] as JSON')
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("django-suite-results"))
    parser.add_argument("--pooled-only", action="store_true", help="skip the stock run")
    parser.add_argument(
        "--reuse-stock",
        action="store_true",
        help="compare with the stock run already in --out for this vendor, driver and "
        "--parallel (its backend is Django's, whatever --pool says), if there is one",
    )
    parser.add_argument("labels", nargs="*", default=list(LABELS))
    args = parser.parse_args()
    args.driver = args.driver or ("psycopg" if args.vendor == "postgresql" else "mysqlclient")
    json.loads(args.pool)  # fail now, not in both runs

    base_env = server_env(args.vendor)
    if base_env is None:
        print(f"SKIPPED: {testservers.mysql_unavailable_reason()}", flush=True)
        return 0
    args.out = args.out.resolve()  # the runs work in the Django tree
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.vendor}-{args.driver}-p{args.parallel}"
    print(
        f"Django's suite ({len(args.labels)} labels) on {args.vendor} with {args.driver}, "
        f"pool={args.pool}, --parallel {args.parallel}; logs in {args.out}",
        flush=True,
    )
    names = ["pooled"] if args.pooled_only else ["stock", "pooled"]
    stock = Run("stock", False, args.out / f"{tag}-stock.json", args.out / f"{tag}-stock.log")
    reused = args.reuse_stock and not args.pooled_only and stock.results.exists()
    if reused:
        print(f"  stock: the results of {stock.results.name}", flush=True)
    results = run_all(
        ["pooled"] if reused else names, tag, args.labels, args.parallel, True, base_env, args
    )
    if reused:
        results["stock"] = outcomes(stock)
    allowed = known_differences(args.vendor, args.driver, args.pool)
    differing = compare(results, allowed)
    if differing:
        # A second opinion, one run after the other: timing tests (and the
        # like) differ on a busy machine whichever backend runs them.
        print(f"running the {len(differing)} differing tests again, one run at a time")
        labels = [_label(test) for test in differing]
        again = run_all(names, f"{tag}-again", labels, 1, False, base_env, args)
        persistent = compare(again, allowed)
        for test in sorted(set(differing) - set(persistent)):
            print(f"  flaky: {test}: the same through both backends when run again")
        if persistent:
            print(f"FAILED: {len(persistent)} tests differ through django-pool", flush=True)
            return 1
    print("OK: the same per-test results through django-pool", flush=True)
    return 0


def _label(test: str) -> str:
    """A test id as a runtests.py label; setUpClass errors are named "setUpClass (Class)"."""
    return test.split(" (", 1)[1].rstrip(")") if " (" in test else test


def run_all(
    names: list[str],
    tag: str,
    labels: list[str],
    parallel: int,
    together: bool,
    base_env: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Run the suite through each backend named (at the same time if ``together``)."""
    out = args.out
    runs = [
        Run(name, name == "pooled", out / f"{tag}-{name}.json", out / f"{tag}-{name}.log")
        for name in names
    ]
    started = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    for run in runs:
        processes.append(start(run, labels, parallel, base_env, args))
        if not together:
            processes[-1].wait()
    for process in processes:
        process.wait()
    print(f"  {' and '.join(names)} took {time.monotonic() - started:.0f} s", flush=True)
    results = {run.name: outcomes(run) for run in runs}
    for name, (found, _) in results.items():
        counts = Counter(found.values())
        print(f"  {name}: {len(found)} tests, " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return results


def compare(
    results: dict[str, tuple[dict[str, str], dict[str, str]]], allowed: dict[str, str]
) -> list[str]:
    """Print every test whose outcome differs; return those not explained in ``allowed``."""
    pooled, pooled_details = results["pooled"]
    stock = results["stock"][0] if "stock" in results else None
    unexplained = []
    for test in sorted(set(pooled) | set(stock or ())):
        mine = pooled.get(test, "missing")
        if stock is None:  # --pooled-only: a failure is a difference
            theirs = "ok"
            if mine not in FAILED:
                continue
        else:
            theirs = stock.get(test, "missing")
        if mine == theirs:
            continue
        why = allowed.get(test)
        print(f"  {'known' if why else 'DIFFERS'}: {test}: stock {theirs}, pooled {mine}")
        if why:
            print("      why: " + " ".join(why.split()))
        else:
            unexplained.append(test)
            detail = pooled_details.get(test)
            if detail:
                print("      " + "\n      ".join(detail.strip().splitlines()[-6:]))
    return unexplained


if __name__ == "__main__":
    sys.exit(main())
