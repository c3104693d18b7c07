"""The HTTP load generator: N keep-alive connections for a fixed time.

It always runs as a process of its own, so that it shares no interpreter (and
no GIL) with anything it measures. ``wrk`` is used when it is on PATH; without
it, this module is the generator (``python -m django_pool.demo.load``): an
asyncio HTTP/1.1 client, each connection sending its next request as soon as
the previous response is read, recording every request's latency. Both report
requests per second, the median and 99th percentile latency, and errors (a
response other than 200, or a failed connection). The built-in one also says
when things went wrong: the longest stretch without a successful response
(an outage, seen from the clients), and how many errors of each kind
(``HTTP 409``, say) there were.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import re
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .processes import Child

#: Seconds after the end of a run that a request may still take before it counts
#: as an error.
GRACE = 15.0
#: The built-in generator's line on stderr as its clients start.
STARTED = "load: clients starting"


@dataclass(frozen=True)
class LoadResult:
    """One run of the load generator."""

    requests: int  # answered with 200
    errors: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    first_error: str | None = None
    # From the built-in generator only (None or empty with wrk):
    longest_gap_s: float | None = None  # the longest time without a 200 finishing
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------- #
# The built-in generator (runs in its own process)
# --------------------------------------------------------------------------- #


class _Tally:
    def __init__(self, start: float) -> None:
        self.start = start
        self.latencies: list[float] = []
        self.successes: list[float] = []  # when each 200 finished, after the start
        self.errors = 0
        self.first_error: str | None = None
        self.kinds: Counter[str] = Counter()

    def success(self, started: float) -> None:
        now = time.perf_counter()
        self.latencies.append(now - started)
        self.successes.append(now - self.start)

    def error(self, what: str) -> None:
        self.errors += 1
        self.kinds[what.split(":", 1)[0]] += 1
        if self.first_error is None:
            self.first_error = what

    def longest_gap(self, elapsed: float) -> float:
        """The longest time without a success, the start and the end included."""
        edges = [0.0, *sorted(self.successes), elapsed]
        return max(later - earlier for earlier, later in itertools.pairwise(edges))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the connection may be reused.

    The demo's pages always send Content-Length. A response without it (an
    error page from the server itself, say) cannot be framed here, so the
    connection is dropped after its headers.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    if length is None:
        return status, False
    await reader.readexactly(length)
    return status, keep_alive


async def _connection(
    host: str, port: int, request: bytes, deadline: float, tally: _Tally
) -> None:
    """One client connection: request after request until the deadline."""
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while time.perf_counter() < deadline:
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError as exc:
                    tally.error(f"connect: {exc}")
                    await asyncio.sleep(0.05)
                    continue
            start = time.perf_counter()
            try:
                writer.write(request)
                status, keep_alive = await _read_response(reader)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                keep_alive, status = False, 0
            else:
                if status == 200:
                    tally.success(start)
                else:
                    tally.error(f"HTTP {status}")
            if not keep_alive:
                writer.close()
                writer = reader = None
    finally:
        if writer is not None:
            writer.close()


async def drive(url: str, connections: int, duration: float) -> LoadResult:
    """Keep ``connections`` connections busy with GET ``url`` for ``duration`` seconds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "User-Agent: django-pool-demo\r\nAccept: */*\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    tally = _Tally(start)
    deadline = start + duration
    tasks = [
        asyncio.create_task(_connection(host, port, request, deadline, tally))
        for _ in range(connections)
    ]
    _, pending = await asyncio.wait(tasks, timeout=duration + GRACE)
    elapsed = time.perf_counter() - start
    for task in pending:  # a request still unanswered long after the end
        task.cancel()
        tally.error(f"no response within {GRACE:.0f} s of the end")
    latencies = sorted(tally.latencies)
    return LoadResult(
        requests=len(latencies),
        errors=tally.errors,
        seconds=elapsed,
        p50_ms=_ms(percentile(latencies, 0.50)),
        p99_ms=_ms(percentile(latencies, 0.99)),
        first_error=tally.first_error,
        longest_gap_s=round(tally.longest_gap(elapsed), 3),
        error_kinds=dict(tally.kinds),
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main(argv: list[str] | None = None) -> None:
    """``python -m django_pool.demo.load URL -c N -d SECONDS``: prints a JSON result."""
    parser = argparse.ArgumentParser(prog="python -m django_pool.demo.load")
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, required=True)
    parser.add_argument("-d", "--duration", type=float, required=True)
    args = parser.parse_args(argv)
    print(STARTED, file=sys.stderr, flush=True)
    result = asyncio.run(drive(args.url, args.connections, args.duration))
    json.dump(asdict(result), sys.stdout)


# --------------------------------------------------------------------------- #
# Running a generator from the demo
# --------------------------------------------------------------------------- #


def choose_tool(choice: str) -> str:
    """``wrk`` or ``builtin`` for the ``--load`` option's ``auto``, ``wrk`` or ``builtin``."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "builtin"
    if choice == "wrk" and not shutil.which("wrk"):
        raise ValueError("--load wrk: wrk is not on PATH")
    return choice


def generate(
    tool: str,
    url: str,
    connections: int,
    duration: float,
    log: Path,
    started: threading.Event | None = None,
) -> LoadResult:
    """Run one load in a separate process and return what it measured.

    ``started`` is set once the load is under way (the built-in generator says
    so; wrk, once it is started), for a caller that acts during the load.
    """
    if tool == "wrk":
        seconds = max(1, round(duration))  # wrk takes whole seconds
        threads = min(connections, 2)
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    else:
        argv = [sys.executable, "-m", "django_pool.demo.load", url]
        argv += ["-c", str(connections), "-d", str(duration)]
    child = Child(f"load ({tool})", argv, log=log, capture_stdout=True)
    try:
        if started is not None:
            if tool == "builtin" and not child.wait_for_output(STARTED, timeout=30):
                raise RuntimeError(f"the load generator did not start:\n{child.output_tail()}")
            started.set()
        output = child.communicate(timeout=duration + GRACE + 30)
    finally:
        child.stop()
    if child.proc.returncode != 0:
        raise RuntimeError(
            f"the load generator ({tool}) failed with exit code {child.proc.returncode}:\n"
            f"{output}{child.output_tail()}"
        )
    if tool == "wrk":
        return parse_wrk(output)
    return LoadResult(**json.loads(output))


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(output: str) -> LoadResult:
    """The figures of ``wrk --latency`` output."""

    def number(pattern: str) -> str | None:
        match = re.search(pattern, output)
        return match.group(1) if match else None

    def latency(label: str) -> float | None:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
        return float(match.group(1)) * _WRK_UNITS[match.group(2)] if match else None

    total = number(r"(\d+) requests in ([\d.]+)(?:us|ms|s|m|h)")
    rate = number(r"Requests/sec:\s*([\d.]+)")
    if total is None or rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    non_2xx = int(number(r"Non-2xx or 3xx responses:\s*(\d+)") or 0)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(n) for n in socket.groups()) if socket else 0
    first_error = None
    if non_2xx:
        first_error = f"{non_2xx} responses other than 2xx or 3xx"
    elif socket:
        first_error = socket.group(0)
    requests = int(total) - non_2xx
    return LoadResult(
        requests=requests,
        errors=non_2xx + socket_errors,
        # wrk reports the rate; the duration is what gives that rate for these requests.
        seconds=int(total) / float(rate) if float(rate) else 0.0,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        first_error=first_error,
    )


if __name__ == "__main__":
    main()
