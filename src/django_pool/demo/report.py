"""The demo's results: tables for the terminal (and Markdown), JSON, and a chart.

The tables are Markdown with padded columns, so the terminal output can be
pasted into a README as it is: one table per scenario, then the throughput
rows. The JSON keeps every figure and the settings they were measured
with; the chart (matplotlib, drawn off-screen) has a panel for the
throughput and one per scenario, each saying its unit and which way is better.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .modes import LABELS, MODES

#: Report format version, for tools that read the JSON (2: the scenarios).
FORMAT = 2

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


Figure = float | int | str | None


@dataclass(frozen=True)
class Row:
    """One mode in one scenario: ``ran`` (with its figures), ``skipped`` or ``failed``."""

    scenario: str
    mode: str
    label: str
    status: str
    reason: str | None = None
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """A figure of a scenario's table: its key in ``Row.figures``, header and digits."""

    key: str
    header: str
    digits: int = 0


@dataclass(frozen=True)
class View:
    """How a scenario is shown: its table, and the one figure its chart panel draws."""

    key: str
    title: str  # the table's heading and the panel's title
    setup: str  # server, workers, pool, load: one line under the heading
    columns: tuple[Column, ...]
    drawn: str  # the key of the figure in the panel
    axis: str  # the panel's axis: the unit, and which way is better
    noted: str | None = None  # the key of a figure written beside each bar

    def describe(self, figures: dict[str, Figure]) -> str:
        """The figures in one line, for the progress output."""
        return ", ".join(
            f"{column.header} {_number(figures.get(column.key), column.digits)}"
            for column in self.columns
        )


@dataclass
class Report:
    """Everything the demo measured, and how."""

    setup: dict[str, Any]
    servers: dict[str, str]  # key: description (workers, threads)
    runs: list[Run] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    views: list[View] = field(default_factory=list)  # the scenarios run, in order
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "setup": self.setup,
            "modes": {mode: LABELS[mode] for mode in MODES},
            "servers": self.servers,
            "runs": [asdict(run) for run in self.runs],
            "results": [asdict(cell) for cell in self.cells],
            "scenarios": {
                view.key: {
                    "title": view.title,
                    "setup": view.setup,
                    "rows": [asdict(row) for row in self.rows if row.scenario == view.key],
                }
                for view in self.views
            },
        }


def _number(value: Figure, digits: int = 0) -> str:
    if value is None or isinstance(value, str):
        return value or "-"
    return f"{value:,.{digits}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], first_numeric: int) -> str:
    """A Markdown table with padded columns, those from ``first_numeric`` on right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        cells = (
            value.rjust(width) if i >= first_numeric else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        )
        return "| " + " | ".join(cells) + " |"

    rule = " | ".join(
        "-" * (w - 1) + ":" if i >= first_numeric else "-" * w for i, w in enumerate(widths)
    )
    return "\n".join([line(header), f"| {rule} |", *(line(row) for row in rows)])


def _bold_ours(mode: str, label: str) -> str:
    return f"**{label}**" if mode == "django_pool" else label


def table(report: Report) -> str:
    """A table per scenario, the throughput table, then the modes that did not run."""
    parts = []
    for view in report.views:
        ran = [row for row in report.rows if row.scenario == view.key and row.status == "ran"]
        header = ("connections", *(column.header for column in view.columns))
        rows = [
            (
                _bold_ours(row.mode, row.label),
                *(_number(row.figures.get(c.key), c.digits) for c in view.columns),
            )
            for row in ran
        ]
        parts.append(f"{view.title}\n({view.setup})\n\n{_markdown(header, rows, 1)}")
    if report.cells:
        parts.append(_throughput_table(report))
    not_run = _not_run(report)
    if not_run:
        parts.append("\n".join(not_run))
    return "\n\n".join(parts)


def _throughput_table(report: Report) -> str:
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
        rows.append(
            (
                server,
                _bold_ours(cell.mode, LABELS[cell.mode]),
                str(cell.concurrency),
                _number(cell.requests_per_second),
                _number(cell.p50_ms, 1),
                _number(cell.p99_ms, 1),
                str(cell.errors),
                str(cell.peak_connections),
                _number(cell.connections_opened),
            )
        )
    return f"Throughput: three queries per request\n\n{_markdown(header, rows, 2)}"


def _not_run(report: Report) -> list[str]:
    """A line per mode left out: where (servers, scenarios), once per reason."""
    not_run: dict[tuple[str, str, str | None], list[str]] = {}
    for run in report.runs:
        if run.status != "ran":
            not_run.setdefault((LABELS[run.mode], run.status, run.reason), []).append(run.server)
    for row in report.rows:
        if row.status != "ran":
            # A label's release= tells nothing here: the mode did not run.
            label = LABELS[row.mode]
            not_run.setdefault((label, row.status, row.reason), []).append(row.scenario)
    lines = []
    for (label, status, reason), places in not_run.items():
        lines.append(f"- {label} ({', '.join(places)}): {status}, {reason}")
    return lines


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def write_chart(report: Report, path: Path, title: str) -> bool:
    """One panel per scenario, one for the throughput rows; False if there is none."""
    panels = len(report.views) + (1 if report.cells else 0)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    columns = 3 if panels > 4 else min(2, panels)
    lines = -(-panels // columns)
    fig = plt.figure(figsize=(6 * columns, 4.2 * lines + 0.8))
    grid = fig.add_gridspec(lines, columns)
    for index, view in enumerate(report.views):
        ax = fig.add_subplot(grid[divmod(index, columns)])
        rows = [row for row in report.rows if row.scenario == view.key and row.status == "ran"]
        _scenario_panel(ax, view, rows)
    if report.cells:
        line, column = divmod(len(report.views), columns)
        # The rest of its line: room for a group of bars per server and load.
        _throughput_panel(fig.add_subplot(grid[line, column:]), report.cells)
    fig.suptitle("\n".join(textwrap.fill(line, 150) for line in title.splitlines()), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _throughput_panel(ax: Any, cells: list[Cell]) -> None:
    """Grouped bars of requests per second: a group per server and client count."""
    groups = list(dict.fromkeys((cell.server, cell.concurrency) for cell in cells))
    modes = [mode for mode in MODES if any(cell.mode == mode for cell in cells)]
    by_key = {(cell.server, cell.concurrency, cell.mode): cell for cell in cells}
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        xs, heights = [], []
        for g, (server, concurrency) in enumerate(groups):
            cell = by_key.get((server, concurrency, mode))
            if cell is not None:
                xs.append(g + (i - (len(modes) - 1) / 2) * width)
                heights.append(cell.requests_per_second)
        bars = ax.bar(xs, heights, width, label=LABELS[mode], color=_COLORS[mode])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    tallest = max((cell.requests_per_second for cell in cells), default=0.0)
    ax.set_ylim(0, max(tallest, 1e-9) * 1.45)  # room for the legend above the bars
    ax.set_title("Throughput: three queries per request", fontsize=11, fontweight="bold")
    ax.set_ylabel("requests per second (higher is better)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{server}\n{conc} clients" for server, conc in groups])
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncol=2, loc="upper left")


def _scenario_panel(ax: Any, view: View, rows: list[Row]) -> None:
    """Horizontal bars of the scenario's drawn figure, one per mode, values written on."""
    labels = [textwrap.fill(row.label, 26) for row in rows]
    values = [float(_figure(row, view.drawn)) for row in rows]
    colors = [_COLORS[row.mode] for row in rows]
    bars = ax.barh(range(len(rows)), values, color=colors)
    columns = {column.key: column for column in view.columns}
    drawn = columns[view.drawn]
    texts = [_number(value, drawn.digits) for value in values]
    if view.noted:
        noted = columns[view.noted]
        texts = [
            f"{text}\n{noted.header}: {_number(row.figures.get(noted.key), noted.digits)}"
            for text, row in zip(texts, rows, strict=True)
        ]
    ax.bar_label(bars, labels=texts, padding=3, fontsize=9)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()  # the first mode on top, as in the table
    ax.set_xlim(0, max([*values, 1e-9]) * (1.7 if view.noted else 1.25))
    ax.set_title(textwrap.fill(view.title, 45), fontsize=11, fontweight="bold")
    ax.set_xlabel(textwrap.fill(view.axis, 55))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _figure(row: Row, key: str) -> float:
    value = row.figures.get(key)
    return float(value) if isinstance(value, int | float) else 0.0
