"""``python -m tests.runner_project.fork_children``: pooled Django connections across fork.

The parent queries (keeping its pooled connection checked out), then starts
three children with the ``fork`` start method; each runs ORM queries, closes
its connection and its pools, and reports its server session. The parent then
queries again on the connection it held all along. Everything is printed as one
JSON line, after which the parent waits for a line on stdin, so that the test
can look at pg_stat_activity while the parent's session should still be alive.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sys
import traceback
from typing import Any

import django

CHILDREN = 3


def backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def tagged_sessions() -> list[int]:
    """Every session with this process's application_name (the parent's pool)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = current_setting('application_name') ORDER BY pid"
        )
        return [int(row[0]) for row in cursor.fetchall()]


def child(queue: Any, number: int) -> None:
    from django.db import connection

    from django_pool.backends import close_pools

    from .runnerapp.models import Note

    try:
        session = backend_pid()
        Note.objects.create(name=f"fork-child-{number}", written_by="fork_children")
        count = Note.objects.filter(name=f"fork-child-{number}").count()
        Note.objects.filter(name=f"fork-child-{number}").delete()
        same_session = backend_pid()
        # Closing everything in the child must not touch the parent's sessions.
        connection.close()
        close_pools()
        gc.collect()
        queue.put(
            {
                "number": number,
                "pid": os.getpid(),
                "session": session,
                "same_session": same_session,
                "count": count,
            }
        )
    except BaseException:
        queue.put({"number": number, "pid": os.getpid(), "error": traceback.format_exc()})
        raise


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.runner_project.settings")
    django.setup()

    from django_pool.backends import get_pool

    from .runnerapp.models import Note

    Note.objects.exists()
    parent_session = backend_pid()  # the connection stays checked out
    pool = get_pool("default")
    assert pool is not None
    pool.wait(timeout=10)  # min_size connections open: idle ones are inherited too
    before_fork = tagged_sessions()

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=child, args=(queue, n)) for n in range(CHILDREN)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    gc.collect()
    after = backend_pid()  # same checked-out connection: must still work
    with_orm = Note.objects.filter(written_by="fork_children").count()
    after_children = tagged_sessions()
    print(
        json.dumps(
            {
                "parent_pid": os.getpid(),
                "parent_session": parent_session,
                "parent_session_after": after,
                "parent_orm_count": with_orm,
                "sessions_before_fork": before_fork,
                "sessions_after_children": after_children,
                "children": results,
                "exitcodes": [process.exitcode for process in processes],
                "stats": pool.get_stats(),
            }
        ),
        flush=True,
    )
    sys.stdin.readline()  # the test checks pg_stat_activity meanwhile
    # Still alive after the test's checks.
    print(json.dumps({"parent_session_at_end": backend_pid()}), flush=True)


if __name__ == "__main__":
    main()
