"""``python -m tests.runner_project.shutdown MODE``: what happens to a process's sessions.

Both modes open the pool (``DP_RUNNER_POOL_MIN`` connections), print the
sessions carrying this process's application_name as a JSON line, then:

* ``exit``: return from ``main()`` with nothing closed by hand. An atexit
  handler registered *before* django_pool is imported runs *after* the
  library's own (atexit runs handlers last-in, first-out) and reports which of
  those sessions the server still shows, after giving them a few seconds to go.
* ``close_pools``: call ``django_pool.backends.close_pools()``, print a marker
  line and wait for a line on stdin (the test looks at pg_stat_activity); then
  close Django's connection (so the connection it held goes back to the closed
  pool), print another marker and wait again before exiting.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

import django

#: How long the late atexit check waits for sessions to disappear.
LATE_CHECK_SECONDS = 5.0


def emit(stage: str, **fields: object) -> None:
    print(json.dumps({"stage": stage, "pid": os.getpid(), **fields}), flush=True)


def server_sessions(application_name: str) -> list[int]:
    """The sessions the server shows with ``application_name``, seen from outside."""
    from django_pool import testservers

    rows = testservers.postgres_server().execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
        params=[application_name],
    )
    return [int(row[0]) for row in rows or []]


def late_atexit_check(application_name: str) -> None:
    """Wait (a little) for every session to go, the lent one included, and report.

    A backend leaves pg_stat_activity a moment after its client's Terminate
    message, so what is still listed at once may be on its way out.
    """
    deadline = time.monotonic() + LATE_CHECK_SECONDS
    start = time.monotonic()
    remaining = server_sessions(application_name)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = server_sessions(application_name)
    emit("late_atexit", remaining=remaining, waited=round(time.monotonic() - start, 3))


def backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def main(mode: str) -> None:
    application_name = os.environ["DP_RUNNER_APPLICATION_NAME"]
    if mode == "exit":
        # Registered before django_pool.backends is imported: runs after its handler.
        atexit.register(late_atexit_check, application_name)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.runner_project.settings")
    django.setup()

    from django_pool.backends import close_pools, get_pool

    from .runnerapp.models import Note

    Note.objects.exists()
    lent = backend_pid()  # checked out by Django's connection, not closed by hand
    pool = get_pool("default")
    assert pool is not None
    pool.wait(timeout=10)
    emit("open", sessions=server_sessions(application_name), lent=lent, stats=pool.get_stats())

    if mode == "close_pools":
        from django.db import connection

        close_pools()
        emit("closed", stats=pool.get_stats(), closed=pool.closed)
        sys.stdin.readline()
        connection.close()
        emit("returned", stats=pool.get_stats())
        sys.stdin.readline()
        emit("exiting")
    elif mode != "exit":
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
