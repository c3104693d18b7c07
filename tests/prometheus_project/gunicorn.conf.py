"""gunicorn settings for the project: the hook that multiprocess mode needs."""

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    # The dead worker's gauges leave the sums; its counters stay.
    multiprocess.mark_process_dead(worker.pid)
