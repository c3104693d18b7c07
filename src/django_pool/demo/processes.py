"""Child processes that are always cleaned up: on return, on errors and on Ctrl-C.

Each child starts a session (and so a process group) of its own. That keeps the
terminal's Ctrl-C away from it, so the demo decides when and how it stops, and
lets one signal reach everything it started in turn: gunicorn's and uvicorn's
workers, which a signal to their master alone might leave behind.

SIGINT, SIGTERM and SIGHUP become :class:`KeyboardInterrupt` in the demo's
main thread (:func:`handle_signals`), so ``finally`` blocks and context
managers run. A signal that arrives while the main thread starts a child is
held until the child is registered, and once :func:`stop_all` has begun the
clean-up, further signals are ignored: a second Ctrl-C cannot cut the clean-up
short. Other threads (the restart scenario's load) start children too:
``_lock`` makes starting and registering one step, and no child starts once
the clean-up has begun, so every child that runs is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

#: Seconds a child may take to exit after SIGTERM before its group is killed.
STOP_GRACE = 10.0

# Invariant, under _lock: every child started is in _running until it is
# stopped, and none is started once _stopping is set.
_lock = threading.Lock()
_running: list[Child] = []
_stopping = False
# Signal deferral, main thread only (where Python runs signal handlers).
_deferring = 0
_pending: int | None = None


def handle_signals() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt in the main thread."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _stopping:
        return
    if _deferring:
        _pending = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold signals for the block, in the main thread; elsewhere none is raised anyway."""
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending is not None and not _stopping:
        signum, _pending = _pending, None
        raise KeyboardInterrupt(signal.Signals(signum).name)


class Child:
    """A subprocess in a session of its own, its output in a log file.

    ``capture_stdout`` keeps stdout for :meth:`communicate` (the load
    generator's result); stderr, and stdout otherwise, go to ``log``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        capture_stdout: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed by stop()
        with signals_deferred(), _lock:
            if _stopping:
                self._log_file.close()
                raise KeyboardInterrupt("the demo is stopping")
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else self._log_file,
                stderr=self._log_file,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
            _running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def communicate(self, timeout: float) -> str:
        """Wait for the child to end and return its stdout (``capture_stdout``)."""
        stdout, _ = self.proc.communicate(timeout=timeout)
        return stdout.decode(errors="replace") if stdout else ""

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """Wait until the child's log holds ``text``; False if it exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if text in self.log.read_text(errors="replace"):
                    return True
            if self.exited():
                return False
            time.sleep(0.01)
        return False

    def output_tail(self, lines: int = 15) -> str:
        """The end of the child's log, to explain a failure."""
        if not self._log_file.closed:
            self._log_file.flush()
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to the whole group, SIGKILL after ``grace``; returns when it is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while group_members(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.proc.poll() is None or group_members(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
            deadline = time.monotonic() + 5
            while group_members(self.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()
        with _lock:
            if self in _running:
                _running.remove(self)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if state != "Z" and int(pgrp) == pgid:
            members.append(int(entry.name))
    return members


def stop_all() -> None:
    """Stop every child still running, newest first; signals are ignored from now on."""
    global _stopping
    with _lock:
        _stopping = True
        children = list(reversed(_running))
    for child in children:
        child.stop()
