"""Fixed-bucket histograms of the pool's wait and usage times.

The pool records into them under its own lock, so a histogram needs no lock of
its own and an observation costs one bisection and two additions. The return
path, run on every checkout, only appends to a list and observes in batches
(see ``Pool.putconn``). Readers (the Prometheus collector,
``Pool.get_histograms()``) get a copy.

The bounds are in seconds, as Prometheus expects, and span what a pool sees:
waits of a few microseconds (an idle connection was there) up to a timeout,
and usage from a single query to a long report.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

#: Upper bounds (inclusive, in seconds) of every bucket but the last, +Inf.
BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSnapshot:
    """Counts per bucket (not cumulative; the last is above every bound) and their sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)


class Histogram:
    """Counts of observations per bucket of :data:`BOUNDS`; not thread-safe by itself."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        # Public so that the pool's return path can observe inline, without a call.
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    def observe_all(self, values: list[float]) -> None:
        """Observe every value in ``values``, then empty it."""
        counts, total = self.counts, self.total
        for seconds in values:
            counts[bisect_left(BOUNDS, seconds)] += 1
            total += seconds
        self.total = total
        values.clear()

    def forget(self, seconds: float) -> None:
        """Take back an :meth:`observe` of the same value."""
        self.counts[bisect_left(BOUNDS, seconds)] -= 1
        self.total -= seconds

    def snapshot(self, zeros: int = 0) -> HistogramSnapshot:
        """A copy, with ``zeros`` more observations of 0 counted elsewhere."""
        counts = list(self.counts)
        counts[0] += zeros
        return HistogramSnapshot(BOUNDS, tuple(counts), self.total)
