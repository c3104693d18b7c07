"""Faults, side by side with psycopg_pool: recovery after an outage, a silent network.

Two figures, each measured in one run on a private embedded PostgreSQL (this
script stops it and stalls the network to it; it never touches the server
PGHOST names):

* **Recovery.** Both pools (2 connections each) lose the server for
  ``--outage`` seconds while 3 requests per pool wait for a connection. Once
  the server accepts connections again (the moment a probe connection from
  this script gets in), how long until each pool serves its first request.
  The median of ``--rounds`` outages, both pools in each, and the ratio.
* **Silent network.** The pool's connections go through a TCP proxy that
  stops passing bytes while the connections stay open; every checkout pings
  (``validate_after=0`` / psycopg_pool's ``check``). The longest a checkout
  with ``timeout=3`` takes, for each pool (capped at 20 s).

Run ``python benchmarks/faults.py`` (``--rounds``, ``--outage``, ``--json PATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import psycopg
import psycopg_pool
from tests.wire import WireCounter

from django_pool import Pool
from django_pool.testservers import start_embedded_postgres

WAITERS = 3
STALL_TIMEOUT = 3.0
STALL_CAP = 20.0


def _ours(conninfo: str, **options: Any) -> Any:
    pool = Pool(lambda: psycopg.connect(conninfo, autocommit=True), min_size=2, **options)
    pool.wait()
    return pool.getconn, pool.putconn, pool.close


def _psycopg_pool(conninfo: str, check: bool = False, **options: Any) -> Any:
    pool = psycopg_pool.ConnectionPool(
        conninfo,
        min_size=2,
        kwargs={"autocommit": True},
        check=psycopg_pool.ConnectionPool.check_connection if check else None,
        open=True,
        **options,
    )
    pool.wait()
    return pool.getconn, pool.putconn, lambda: pool.close(timeout=0)


def _recovery_round(server: Any, conninfo: str, outage: float) -> dict[str, float]:
    pools = {"django_pool": _ours(conninfo), "psycopg_pool": _psycopg_pool(conninfo)}
    served: dict[str, list[float]] = {name: [] for name in pools}

    def request(name: str) -> None:
        getconn, putconn, _ = pools[name]
        conn = getconn(timeout=outage + 30)
        try:
            conn.execute("SELECT 1")
        finally:
            putconn(conn)
        served[name].append(time.monotonic())

    with server.outage():
        threads = [
            threading.Thread(target=request, args=(name,))
            for name in pools
            for _ in range(WAITERS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(outage)
    back = time.monotonic()  # outage() returns once a probe connection got in
    for thread in threads:
        thread.join(60)
    for _, _, close in pools.values():
        close()
    return {name: (min(times) - back if times else float("nan")) for name, times in served.items()}


def _timed_checkout(getconn: Any, putconn: Any, done: list[float]) -> None:
    started = time.monotonic()
    with contextlib.suppress(Exception):  # PoolTimeout is the expected end
        putconn(getconn(timeout=STALL_TIMEOUT))
    done.append(time.monotonic() - started)


def _stall(server: Any, conninfo: str) -> dict[str, float]:
    result = {}
    with WireCounter("postgresql", server.host, server.port) as proxy:
        proxied = f"{conninfo} host={proxy.host} port={proxy.port} connect_timeout=10"
        pools = {
            "django_pool": _ours(proxied, validate_after=0),
            "psycopg_pool": _psycopg_pool(proxied, check=True),
        }
        proxy.stall()
        for name, (getconn, putconn, _) in pools.items():
            done: list[float] = []
            thread = threading.Thread(target=_timed_checkout, args=(getconn, putconn, done))
            thread.daemon = True
            thread.start()
            thread.join(STALL_CAP)
            result[name] = done[0] if done else STALL_CAP
        proxy.resume()
        for _, _, close in pools.values():
            close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--outage", type=float, default=8.0, help="seconds the server is down")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()

    print("starting a private embedded PostgreSQL...", file=sys.stderr)
    server = start_embedded_postgres()
    try:
        server.ensure_database("faults")
        conninfo = server.conninfo("faults")
        rounds = []
        for i in range(args.rounds):
            print(f"recovery round {i + 1}/{args.rounds}...", file=sys.stderr)
            rounds.append(_recovery_round(server, conninfo, args.outage))
        print("silent network...", file=sys.stderr)
        stall = _stall(server, conninfo)
    finally:
        server.stop()

    recovery = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    print(f"Recovery after a {args.outage:g} s outage, {WAITERS} requests waiting per pool")
    print("(seconds from the server accepting connections to the first request served,")
    print(f"median of {args.rounds} outages; each round: {rounds})")
    for name, value in recovery.items():
        print(f"  {name:13} {value:6.2f} s")
    ratio = recovery["django_pool"] / recovery["psycopg_pool"] if recovery["psycopg_pool"] else 0
    print(f"  django_pool / psycopg_pool: {ratio:.2f}x")
    print(f"\nSilent network: the longest checkout with timeout={STALL_TIMEOUT:g} s")
    for name, value in stall.items():
        capped = " (still blocked: capped)" if value >= STALL_CAP else ""
        print(f"  {name:13} {value:6.2f} s{capped}")
    if args.json:
        Path(args.json).write_text(json.dumps({"recovery": rounds, "stall": stall}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
