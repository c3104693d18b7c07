"""Behind a real PgBouncer in transaction mode: with and without ``server_pooling``.

A request sets a tenant, takes an advisory lock (a job queue's, say) and runs
two queries. Told nothing (``unaware``), django-pool sees a plain server: the
request's ``SET app.tenant`` and ``pg_advisory_lock()`` run on whichever
server session PgBouncer picks, and so does the reset on return. Told
``"server_pooling": "transaction"`` (``aware``), both would be refused, so the
request says ``SET LOCAL`` and ``pg_advisory_xact_lock()`` inside
``transaction.atomic()``, as the error tells it to. Measured, on one PgBouncer of this script's own
(Debian's package, 2 server sessions) in front of the project's test
PostgreSQL:

* **statements forwarded per request**: PgBouncer's own count
  (``SHOW STATS``, ``total_query_count``), over ``--requests`` requests in a row;
* **other clients' state**: while 4 threads serve requests for ``--seconds``,
  2 clients of PgBouncer read ``current_setting('app.tenant')`` over and over:
  reads that saw a tenant some request set. Before that, another client left
  a session advisory lock on each server session: how many are still held.

Run ``python benchmarks/pgbouncer.py`` (``--requests``, ``--seconds``, ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tests import pgbouncer

from django_pool.testservers import postgres_server

BENCH_DB = "django_pool_bench"
ADVISORY_KEYS = (852_001, 852_002)  # another client's
LOCK_BASE = 853_000  # the requests'; one per serving thread
THREADS = 4
OBSERVERS = 2


def configure_django(port: int, pg: Any) -> None:
    import django
    from django.conf import settings

    through = {
        "ENGINE": "django_pool.backends.postgresql",
        "NAME": BENCH_DB,
        "USER": pg.user,
        "PASSWORD": pg.password,
        "HOST": "127.0.0.1",
        "PORT": port,
        "DISABLE_SERVER_SIDE_CURSORS": True,
    }
    pool = {"min_size": 2, "max_size": THREADS}
    settings.configure(
        DATABASES={
            "default": {**through, "OPTIONS": {"pool": pool}},
            "unaware": {**through, "OPTIONS": {"pool": pool}},
            "aware": {**through, "OPTIONS": {"pool": {**pool, "server_pooling": "transaction"}}},
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()


def request(alias: str, tenant: str, lock: int) -> None:
    """One request; ``tenant`` is one of this script's own names, safe to quote as it is."""
    from django.db import connections, transaction

    wrapper = connections[alias]
    if alias == "aware":
        with transaction.atomic(using=alias), wrapper.cursor() as cursor:
            cursor.execute(f"SET LOCAL app.tenant = '{tenant}'")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
            cursor.execute("SELECT current_setting('app.tenant')")
            cursor.execute("SELECT 1")
    else:
        with wrapper.cursor() as cursor:
            cursor.execute(f"SET app.tenant = '{tenant}'")
            cursor.execute("SELECT pg_advisory_lock(%s)", [lock])
            cursor.execute("SELECT current_setting('app.tenant')")
            cursor.execute("SELECT 1")
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock])
    wrapper.close_if_unusable_or_obsolete()  # the end of the request


def forwarded_per_request(bouncer: Any, alias: str, requests: int) -> float:
    request(alias, "warm-up", LOCK_BASE)
    before = bouncer.queries(BENCH_DB)
    for number in range(requests):
        request(alias, f"tenant-{number}", LOCK_BASE)
    return (bouncer.queries(BENCH_DB) - before) / requests


def others_state(bouncer: Any, pg: Any, alias: str, seconds: float) -> dict[str, Any]:
    from django.db import connections

    def client() -> Any:
        return pgbouncer.connect("127.0.0.1", bouncer.port, pg.user, pg.password, BENCH_DB)

    holders = [client() for _ in ADVISORY_KEYS]  # one per server session, at once
    for holder, key in zip(holders, ADVISORY_KEYS, strict=True):
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
    for holder in holders:
        holder.execute("COMMIT")
        holder.close()
    stop = threading.Event()
    reads = [0, 0]  # all, and those that saw a tenant

    def serve(worker: int) -> None:
        number = 0
        while not stop.is_set():
            request(alias, f"tenant-{worker}-{number}", LOCK_BASE + worker)
            number += 1
        connections.close_all()

    def observe() -> None:
        with client() as conn:
            while not stop.is_set():
                value = conn.execute("SELECT current_setting('app.tenant', true)").fetchone()[0]
                reads[0] += 1
                reads[1] += bool(value)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(THREADS)]
    threads += [threading.Thread(target=observe) for _ in range(OBSERVERS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    with pgbouncer.connect(pg.host, pg.port, pg.user, pg.password, BENCH_DB) as direct:
        locks = direct.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = ANY(%s)",
            [list(ADVISORY_KEYS)],
        ).fetchone()[0]
    bouncer.disconnect(BENCH_DB)  # what was left on the server sessions goes
    return {"reads": reads[0], "reads_seeing_a_tenant": reads[1], "others_locks_held": locks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reason = pgbouncer.unavailable_reason()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    pg = postgres_server()
    pg.ensure_database(BENCH_DB)
    bouncer = pgbouncer.start(pg, "transaction")
    try:
        configure_django(bouncer.port, pg)
        results: dict[str, Any] = {}
        for alias in ("unaware", "aware"):
            print(f"{alias}: {args.requests} requests in a row...", file=sys.stderr)
            results[alias] = {
                "forwarded_per_request": forwarded_per_request(bouncer, alias, args.requests)
            }
            print(f"{alias}: {args.seconds:g} s of concurrent requests...", file=sys.stderr)
            results[alias].update(others_state(bouncer, pg, alias, args.seconds))
    finally:
        from django.db import connections

        connections.close_all()
        bouncer.stop()
    print(f"PgBouncer {pgbouncer.SERVER_POOL_SIZE} server sessions, transaction mode; "
          f"a request: a tenant, a lock, 2 queries")  # fmt: skip
    print(f"{'':<34}{'without server_pooling':>24}{'server_pooling':>16}")
    rows = [
        ("statements forwarded per request", "forwarded_per_request", "{:.2f}"),
        ("other clients' reads", "reads", "{:d}"),
        ("  that saw a request's tenant", "reads_seeing_a_tenant", "{:d}"),
        ("others' advisory locks held (of 2)", "others_locks_held", "{:d}"),
    ]
    for label, key, shape in rows:
        unaware, aware = (shape.format(results[a][key]) for a in ("unaware", "aware"))
        print(f"{label:<34}{unaware:>24}{aware:>16}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
