"""The demo's results: a table for the terminal (and Markdown), JSON, and a chart.

The table is Markdown with padded columns, so the terminal output can be pasted
into a README as it is. The JSON keeps every figure and the settings they were
measured with; the chart (matplotlib, drawn off-screen) shows the four figures
that tell the modes apart, grouped by server and number of clients.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .modes import LABELS, MODES

#: Report format version, for tools that read the JSON.
FORMAT = 1

_COLORS = {
    "no_pool": "#b0b0b0",
    "persistent": "#7f9fbf",
    "django_builtin": "#e0a040",
    "dj_db_conn_pool": "#b07cc6",
    "django_pool": "#2e9e5b",
}


@dataclass(frozen=True)
class Cell:
    """One mode, under one server, at one number of concurrent clients."""

    server: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    peak_connections: int
    connections_opened: int | None
    first_error: str | None = None


@dataclass(frozen=True)
class Run:
    """What became of one mode under one server: ``ran``, ``skipped`` or ``failed``."""

    server: str
    mode: str
    status: str
    reason: str | None = None


@dataclass
class Report:
    """Everything the demo measured, and how."""

    setup: dict[str, Any]
    servers: dict[str, str]  # key: description (workers, threads)
    runs: list[Run] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "setup": self.setup,
            "modes": {mode: LABELS[mode] for mode in MODES},
            "servers": self.servers,
            "runs": [asdict(run) for run in self.runs],
            "results": [asdict(cell) for cell in self.cells],
        }


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(report: Report) -> str:
    """The results as a padded Markdown table, then the modes that did not run."""
    header = (
        "server",
        "connections",
        "clients",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "peak conns",
        "conns opened",
    )
    rows: list[tuple[str, ...]] = []
    previous = None
    for cell in report.cells:
        server = "" if cell.server == previous else cell.server
        previous = cell.server
        label = LABELS[cell.mode]
        rows.append(
            (
                server,
                f"**{label}**" if cell.mode == "django_pool" else label,
                str(cell.concurrency),
                _number(cell.requests_per_second),
                _number(cell.p50_ms, 1),
                _number(cell.p99_ms, 1),
                str(cell.errors),
                str(cell.peak_connections),
                _number(cell.connections_opened),
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = range(2, len(header))

    def line(values: Sequence[str]) -> str:
        cells = (
            value.rjust(width) if i in numeric else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        )
        return "| " + " | ".join(cells) + " |"

    rule = (
        "| "
        + " | ".join(
            "-" * (w - 1) + ":" if i in numeric else "-" * w for i, w in enumerate(widths)
        )
        + " |"
    )
    lines = [line(header), rule, *(line(row) for row in rows)]
    # A mode left out of every server for the same reason is said once.
    not_run: dict[tuple[str, str, str | None], list[str]] = {}
    for run in report.runs:
        if run.status != "ran":
            not_run.setdefault((run.mode, run.status, run.reason), []).append(run.server)
    if not_run:
        lines.append("")
    for (mode, status, reason), servers in not_run.items():
        where = "" if set(servers) == set(report.servers) else f" under {', '.join(servers)}"
        lines.append(f"- {LABELS[mode]}{where}: {status}, {reason}")
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def _opened_per_thousand(cell: Cell) -> float | None:
    if cell.connections_opened is None or not cell.requests:
        return None
    return 1000 * cell.connections_opened / cell.requests


def write_chart(report: Report, path: Path, title: str) -> None:
    """Grouped bars: one group per server and client count, one bar per mode."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((cell.server, cell.concurrency) for cell in report.cells))
    modes = [mode for mode in MODES if any(cell.mode == mode for cell in report.cells)]
    by_key = {(cell.server, cell.concurrency, cell.mode): cell for cell in report.cells}
    panels: list[tuple[str, Callable[[Cell], float | None]]] = [
        ("requests per second (higher is better)", lambda c: c.requests_per_second),
        ("p99 latency, ms (lower is better)", lambda c: c.p99_ms),
        ("peak server connections", lambda c: c.peak_connections),
        ("connections opened per 1,000 requests", _opened_per_thousand),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    width = 0.8 / max(1, len(modes))
    for ax, (name, value) in zip(axes.flat, panels, strict=True):
        for i, mode in enumerate(modes):
            xs, heights = [], []
            for g, (server, concurrency) in enumerate(groups):
                cell = by_key.get((server, concurrency, mode))
                height = value(cell) if cell is not None else None
                if height is not None:
                    xs.append(g + (i - (len(modes) - 1) / 2) * width)
                    heights.append(height)
            bars = ax.bar(xs, heights, width, label=LABELS[mode], color=_COLORS[mode])
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_title(name, fontsize=11)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{server}\n{conc} clients" for server, conc in groups])
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes.flat[0].legend(fontsize=9)
    # Long setup lines would run off the figure's edges.
    fig.suptitle("\n".join(textwrap.fill(line, 130) for line in title.splitlines()), fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
