"""The real servers the demo project runs under: gunicorn (WSGI) and uvicorn (ASGI).

Connection handling only shows its cost and its limits under a real server:
worker processes that each have their own connections (or pool), request
threads (gunicorn's gthread workers) or asyncio tasks running async views
(uvicorn) and Django's end-of-request handling as it runs in production. So
each mode is served by the same servers a site would use, started as
subprocesses on a free 127.0.0.1 port.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import django_pool
from django_pool.testservers import _free_port

from .processes import Child

#: Seconds a server may take to answer its first request.
READY_TIMEOUT = 60.0
#: The demo project's settings module.
SETTINGS_MODULE = "django_pool.demo.project.settings"


class ServerFailed(RuntimeError):
    """A server exited, or never answered; the message ends with its output."""


@dataclass(frozen=True)
class Workers:
    """Worker processes per server, and request threads per gunicorn worker."""

    processes: int
    threads: int


@dataclass(frozen=True)
class ServerKind:
    """How to start one kind of server, and which page of the project it serves."""

    key: str
    label: str
    path: str

    def argv(self, port: int, workers: Workers) -> list[str]:
        if self.key == "gunicorn":
            return [
                sys.executable,
                "-m",
                "gunicorn",
                "django_pool.demo.project.wsgi:application",
                f"--bind=127.0.0.1:{port}",
                "--worker-class=gthread",
                f"--workers={workers.processes}",
                f"--threads={workers.threads}",
                "--no-control-socket",
                "--graceful-timeout=5",
                "--log-level=warning",
            ]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "django_pool.demo.project.asgi:application",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--workers={workers.processes}",
            "--lifespan=off",
            "--no-access-log",
            "--timeout-graceful-shutdown=5",
            "--log-level=warning",
        ]

    def describe(self, workers: Workers) -> str:
        processes = f"{workers.processes} worker{'' if workers.processes == 1 else 's'}"
        if self.key == "gunicorn":
            return f"{self.label}, {processes} x {workers.threads} threads"
        return f"{self.label}, {processes}"


SERVERS = {
    "gunicorn": ServerKind("gunicorn", "gunicorn gthread (WSGI)", "/items"),
    "uvicorn": ServerKind("uvicorn", "uvicorn (ASGI, async views)", "/items-async"),
}


class Server:
    """One server process group, serving the demo project, for a ``with`` block."""

    def __init__(
        self,
        kind: ServerKind,
        workers: Workers,
        settings_env: Mapping[str, str],
        workdir: Path,
        log_name: str,
    ) -> None:
        self.kind = kind
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # The django_pool being run, even when it is not installed (PYTHONPATH=src).
        package_root = str(Path(django_pool.__file__).resolve().parent.parent)
        python_path = [package_root, *filter(None, [settings_env.get("PYTHONPATH")])]
        env = {
            **settings_env,
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "PYTHONPATH": os.pathsep.join(python_path),
        }
        self.child = Child(
            f"{kind.key} ({log_name})",
            kind.argv(self.port, workers),
            log=workdir / f"{log_name}.log",
            env=env,
            cwd=workdir,
        )

    @property
    def url(self) -> str:
        """The page under load."""
        return self.base_url + self.kind.path

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the server answers ``/health``; raise ServerFailed if it cannot."""
        deadline = time.monotonic() + timeout
        while True:
            if self.child.exited():
                raise self.failure(f"exited with code {self.child.proc.returncode}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise self.failure(f"did not answer within {timeout:.0f} s")
            time.sleep(0.05)

    def failure(self, what: str) -> ServerFailed:
        """A ServerFailed saying ``what`` happened, with the end of the server's output."""
        return ServerFailed(f"{self.child.name} {what}:\n{self.child.output_tail()}")

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.child.stop()
