"""``python -m tests.celery_project.burst``: a burst of tasks on a running worker, reported.

Waits for the worker, asks it for its processes, sends ``DP_CELERY_TASKS``
probe tasks (default 200) while sampling the server's sessions tagged with the
project's application_name, then, once every task is done, asks each worker
process for its pool's stats: ``process_stats`` tasks, round after round,
until every process has answered. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import django

#: Seconds the worker may take to answer its first ping.
READY_SECONDS = 30.0
#: Seconds between two samples of pg_stat_activity during the burst.
SAMPLE_SECONDS = 0.005


class SessionSampler(threading.Thread):
    """Counts the tagged sessions on the server, as often as it can, until stopped."""

    def __init__(self, application_name: str) -> None:
        super().__init__(daemon=True)
        import psycopg

        from django_pool.testservers import postgres_server

        self.conn = psycopg.connect(
            postgres_server().conninfo(), autocommit=True, application_name="dp_celery_sampler"
        )
        self.application_name = application_name
        self.stopped = threading.Event()
        self.peak = 0
        self.samples = 0

    def sessions(self) -> list[list[Any]]:
        """The tagged sessions now, as ``[pid, backend_start]`` (see the worker module)."""
        rows = self.conn.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE application_name = %s",
            [self.application_name],
        ).fetchall()
        return [list(row) for row in rows]

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, len(self.sessions()))
            self.samples += 1
            time.sleep(SAMPLE_SECONDS)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def wait_for_worker(app: Any) -> dict[str, Any]:
    """The worker's ``inspect stats`` once it answers (its pid, its pool's processes)."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        replies = app.control.inspect(timeout=0.5, limit=1).stats()
        if replies:
            (stats,) = replies.values()
            return dict(stats)
    raise SystemExit(f"no worker answered within {READY_SECONDS} s")


def parent_session(app: Any) -> dict[str, Any]:
    """The worker main process's answer to the ``parent_session`` control command."""
    # One worker: its answer is all there is to wait for.
    (reply,) = app.control.broadcast("parent_session", reply=True, timeout=5, limit=1)
    (answer,) = reply.values()
    return dict(answer)


def stats_of_every_process(process_stats: Any, pids: set[int], rounds: int) -> list[Any]:
    """``process_stats`` results, round after round, until every pid in ``pids`` answered."""
    answers: list[Any] = []
    for _ in range(rounds):
        batch = [process_stats.delay(50) for _ in range(2 * len(pids))]
        answers.extend(result.get(timeout=30) for result in batch)
        if pids <= {answer["pid"] for answer in answers}:
            break
    return answers


def main() -> None:
    django.setup()
    from celery import group
    from django.conf import settings

    from .worker import app, probe, process_stats

    tasks = int(os.environ.get("DP_CELERY_TASKS", "200"))
    hold_ms = int(os.environ.get("DP_CELERY_HOLD_MS", "5"))
    worker = wait_for_worker(app)
    processes = worker["pool"].get("processes") or [worker["pid"]]
    parent_before = parent_session(app)

    sampler = SessionSampler(settings.DATABASES["default"]["OPTIONS"]["application_name"])
    # Before any task: only the main process has sessions (the children open
    # theirs at their first task).
    sessions_before = sampler.sessions()
    sampler.start()
    started = time.monotonic()
    results = group(probe.s(index, hold_ms) for index in range(tasks)).apply_async()
    probes = results.get(timeout=120)
    seconds = time.monotonic() - started
    sampler.stop()

    idle = stats_of_every_process(process_stats, set(processes), rounds=10)
    parent_after = parent_session(app)
    print(
        json.dumps(
            {
                "worker_pid": worker["pid"],
                "processes": processes,
                "max_size": settings.POOL_MAX_SIZE,
                "seconds": seconds,
                "peak_sessions": sampler.peak,
                "samples": sampler.samples,
                "probes": probes,
                "idle": idle,
                "sessions_before": sessions_before,
                "parent_before": parent_before,
                "parent_after": parent_after,
            }
        )
    )


if __name__ == "__main__":
    main()
