"""What the pool keeps about each connection and each queued request.

A :class:`Slot` is a connection plus its dates and its borrower; a
:class:`Waiter` is a ``getconn`` waiting to be handed one. Both are plain
records, read and written under the pool's lock (see :mod:`.pool`).
"""

from __future__ import annotations

import sys
import threading
import traceback
from types import CodeType
from typing import Any


class Slot:
    """A connection plus what the pool remembers about it."""

    __slots__ = (
        "conn",
        "expires_at",
        "generation",
        "last_ok",
        "leak_reported",
        "lent_at",
        "owner",
        "taken_by",
    )

    def __init__(self, conn: Any, now: float, expires_at: float, generation: int) -> None:
        self.conn = conn
        self.expires_at = expires_at
        self.generation = generation
        # Last moment the connection was known good: opened, pinged or cleanly
        # returned. While the slot is idle, that is also when it became idle.
        self.last_ok = now
        self.lent_at = now
        # Leak detection: where the borrower took it, and whether it was reported.
        self.taken_by: list[tuple[CodeType, int]] | None = None
        self.leak_reported = False
        # The thread the borrower runs in, when it said so (getconn's owner).
        self.owner: threading.Thread | None = None


class Waiter:
    """A queued ``getconn``: woken by whoever hands it a slot or an error."""

    __slots__ = ("error", "ready", "since", "slot")

    def __init__(self, since: float) -> None:
        self.since = since
        self.slot: Slot | None = None
        self.error: Exception | None = None
        # A plain lock used as a one-shot signal: cheaper than an Event.
        self.ready = threading.Lock()
        self.ready.acquire()


def note_taker(slot: Slot, depth: int = 2) -> None:
    """Record who is taking ``slot``: the frames above ``getconn``, as (code, line).

    ``depth`` is how far up the caller of ``getconn`` is from here.

    Cheaper than ``traceback.extract_stack()``, which reads source lines; those
    are looked up only if a leak is reported.
    """
    frame = sys._getframe(depth)
    stack = []
    while frame is not None:
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back  # type: ignore[assignment]
    slot.taken_by = stack
    slot.leak_reported = False


def format_stack(stack: list[tuple[CodeType, int]] | None) -> str:
    if not stack:
        return "  (unknown)\n"
    frames = [(code.co_filename, line, code.co_name, None) for code, line in reversed(stack)]
    return "".join(traceback.StackSummary.from_list(frames).format())
