"""Benchmark report: stored runs → one self-contained HTML file and a PNG of the same charts.

A run is a plain dict as stored: ``{created_at, suite, name, queue, metrics: {throughput_per_s,
p50_ms, p99_ms, ...}, machine, versions}``. Runs are grouped into series by (queue, suite,
name); the charts show each series' throughput (every ``*_per_s`` metric) and latency (p50
solid, p99 dashed) over time. The HTML embeds the chart as a base64 PNG and its CSS inline, so
it opens anywhere offline and can be mailed as one file: no external URL at all.

Drawn with matplotlib's Agg canvas on a bare ``Figure`` — no pyplot, so no global backend state
in a worker process.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, TypeGuard

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..domain.memsites import format_bytes
from ..errors import InvalidInput

_LATENCY = (("p50_ms", "-", "p50"), ("p99_ms", "--", "p99"))
_FIRST_COLUMNS = ("throughput_per_s", "p50_ms", "p99_ms")
_LOG_SPAN = 50.0  # a y-range wider than this factor is drawn on a log scale


@dataclass(frozen=True)
class Run:
    """One stored benchmark run, validated."""

    created_at: datetime
    suite: str
    name: str
    queue: str | None
    metrics: dict[str, Any]
    machine: dict[str, Any]
    versions: dict[str, Any]

    @property
    def series(self) -> tuple[str, str, str]:
        return (self.queue or "", self.suite, self.name)

    @property
    def label(self) -> str:
        head = f"{self.queue} · " if self.queue else ""
        return f"{head}{self.suite}/{self.name}" if self.suite else f"{head}{self.name}"

    @classmethod
    def of(cls, index: int, data: Mapping[str, Any]) -> Run:
        """Validate run ``index``; InvalidInput names the run and the field otherwise."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"run {index}: expected a mapping, got {type(data).__name__}")
        metrics = data.get("metrics")
        if not isinstance(metrics, Mapping):
            raise InvalidInput(f"run {index}: 'metrics' must be a mapping of name → number")
        return cls(created_at=_when(index, data.get("created_at")),
                   suite=str(data.get("suite") or ""), name=str(data.get("name") or "unnamed"),
                   queue=str(data["queue"]) if data.get("queue") else None,
                   metrics=dict(metrics), machine=dict(data.get("machine") or {}),
                   versions=dict(data.get("versions") or {}))


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`render_report` wrote."""

    html_path: str
    png_path: str
    runs: int
    series: int


def render_report(runs: Iterable[Mapping[str, Any]], html_path: str | os.PathLike[str],
                  png_path: str | os.PathLike[str], *,
                  title: str = "LEWIS tasks — benchmarks") -> ReportFiles:
    """Write the HTML report and the PNG chart for ``runs`` (any order; none gives an empty report)."""
    parsed = sorted((Run.of(i, r) for i, r in enumerate(runs)), key=lambda r: r.created_at)
    by_series: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in parsed:
        by_series[run.series].append(run)
    for target in (Path(html_path), Path(png_path)):
        if not target.parent.is_dir():
            raise InvalidInput(f"cannot write {str(target)!r}: no directory {str(target.parent)!r}")
    png = render_png(by_series)
    _write(Path(png_path), png)
    page = Template(resources.files(__package__).joinpath("bench_report.html").read_text("utf-8"))
    chart = (f'<img class="chart" alt="throughput and latency over runs, per queue" '
             f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    span = (f"{parsed[0].created_at:%Y-%m-%d %H:%M} → {parsed[-1].created_at:%Y-%m-%d %H:%M} UTC"
            if parsed else "no runs stored yet")
    text = page.substitute(
        title=html.escape(title),
        summary=html.escape(f"{len(parsed)} runs in {len(by_series)} series, {span}; "
                            f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"),
        charts=chart, latest=_latest_table(by_series), machines=_machines_table(by_series))
    _write(Path(html_path), text.encode("utf-8"))
    return ReportFiles(str(html_path), str(png_path), len(parsed), len(by_series))


def render_png(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> bytes:
    """Two stacked charts — throughput, then latency — over time, one colour per series."""
    fig = Figure(figsize=(12, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    thr, lat = fig.subplots(2, 1, sharex=True)
    palette = [f"C{i % 10}" for i in range(len(by_series))]
    for colour, (_, runs) in zip(palette, sorted(by_series.items()), strict=True):
        times = [r.created_at for r in runs]
        for metric in sorted({m for r in runs for m in r.metrics if m.endswith("_per_s")}):
            points = _points(runs, times, metric)
            if points:
                suffix = "" if metric == "throughput_per_s" else f" {metric}"
                thr.plot(*zip(*points, strict=True), marker="o", color=colour,
                         label=runs[0].label + suffix)
        for metric, style, short in _LATENCY:
            points = _points(runs, times, metric)
            if points:
                lat.plot(*zip(*points, strict=True), style, marker="o", color=colour,
                         label=f"{runs[0].label} {short}")
    for ax, ylabel, title in ((thr, "per second", "Throughput"),
                              (lat, "milliseconds", "Latency (p50 solid, p99 dashed)")):
        ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            _scale(ax)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center",
                    transform=ax.transAxes, fontsize=14, color="#888")
            ax.set_xticks([])
            ax.set_yticks([])
    if any(ax.lines for ax in (thr, lat)):
        locator = AutoDateLocator()
        lat.xaxis.set_major_locator(locator)
        lat.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    lat.set_xlabel("run time (UTC)")
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _points(runs: Sequence[Run], times: Sequence[datetime], metric: str) -> list[tuple[Any, float]]:
    return [(t, float(r.metrics[metric])) for t, r in zip(times, runs, strict=True)
            if _is_number(r.metrics.get(metric))]


def _scale(ax: Any) -> None:
    ys = [y for line in ax.lines for y in line.get_ydata() if y > 0]
    if ys and max(ys) / min(ys) > _LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0)


def _latest_table(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> str:
    if not by_series:
        return '<div class="empty">No benchmark runs stored yet: run <code>lewis bench run</code>.</div>'
    names = {m for runs in by_series.values() for m in runs[-1].metrics}
    columns = [m for m in _FIRST_COLUMNS if m in names] + sorted(names - set(_FIRST_COLUMNS))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in
                   ["queue", "suite", "benchmark", "run at (UTC)", "runs", *columns,
                    "Δ throughput vs previous"])
    rows = []
    for key in sorted(by_series):
        runs = by_series[key]
        last = runs[-1]
        cells = [_td(last.queue or "—"), _td(last.suite or "—"), _td(last.name),
                 _td(f"{last.created_at:%Y-%m-%d %H:%M:%S}"), _td(str(len(runs)), num=True)]
        cells += [_td(_fmt(last.metrics.get(c)), num=True) for c in columns]
        cells.append(_delta(runs))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _delta(runs: Sequence[Run]) -> str:
    values = [float(v) for r in runs if _is_number(v := r.metrics.get("throughput_per_s"))]
    if len(values) < 2 or values[-2] == 0:
        return _td("—", num=True)
    change = values[-1] / values[-2] - 1
    css = "up" if change > 0 else "down" if change < 0 else ""
    return f'<td class="num {css}">{change:+.1%}</td>'


def _machines_table(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> str:
    seen: dict[str, tuple[str, str]] = {}
    for key in sorted(by_series):
        last = by_series[key][-1]
        machine = ", ".join(f"{k}: {format_bytes(v) if k.endswith('_bytes') and _is_number(v) else _fmt(v)}"
                            for k, v in sorted(last.machine.items())
                            if not isinstance(v, Mapping)) or "—"
        versions = ", ".join(f"{k} {v}" for k, v in sorted(last.versions.items())) or "—"
        seen.setdefault(machine + versions, (machine, versions))
    if not seen:
        return '<div class="empty">—</div>'
    rows = "".join(f"<tr>{_td(m)}{_td(v)}</tr>" for m, v in seen.values())
    return f"<table><thead><tr><th>machine</th><th>versions</th></tr></thead><tbody>{rows}</tbody></table>"


def _td(text: str, *, num: bool = False) -> str:
    return f'<td class="num">{html.escape(text)}</td>' if num else f"<td>{html.escape(text)}</td>"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _when(index: int, value: Any) -> datetime:
    """A run's time as an aware UTC datetime, from ISO text, epoch seconds or a datetime."""
    try:
        if isinstance(value, datetime):
            when = value
        elif _is_number(value):
            when = datetime.fromtimestamp(float(value), UTC)
        elif isinstance(value, str):
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        else:
            raise ValueError(f"{value!r}")
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidInput(f"run {index}: created_at {value!r} is not a time "
                           "(ISO 8601, epoch seconds or datetime)") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _write(target: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, target)


__all__ = ["ReportFiles", "Run", "render_png", "render_report"]
