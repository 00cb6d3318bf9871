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
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
_LOG_SPAN = 50.0  # a y-range wider than this factor is drawn on a log scale
_STACK_UNITS = {"scan": "ports/s", "http": "requests/s"}  # cluster suite's stack figures
_UNIT_ORDER = ("tasks/s", "ports/s", "requests/s", "calls/s")
_RUN_UNIQUE = ("scan_id", "run_id")  # options that differ in every run and compare nothing
# the latest-figures table: these, with readable names; the rest go to "other figures"
_KEY_FIGURES = (("p50_ms", "p50 (ms)"), ("p99_ms", "p99 (ms)"), ("failures", "failures"))
_READABLE = {
    "mean_ms": "mean (ms)",
    "max_ms": "max (ms)",
    "min_ms": "min (ms)",
    "stdev_ms": "stdev (ms)",
    "success_rate": "success rate",
    "seconds": "duration (s)",
    "enqueue_tasks_per_sec": "enqueue (tasks/s)",
    "stopped_early": "stopped early",
}
# a change within this is noise unless the series' comparable runs measured their own spread
# (BENCHMARKS.md: on these shared 2-core machines, differences under ~15 % are noise)
DEFAULT_NOISE = 0.15


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
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The run's own options (iterations, tasks, samples, …): what makes two runs comparable."""
        run = self.settings.get("run")
        return (
            {k: v for k, v in run.items() if k not in _RUN_UNIQUE}
            if isinstance(run, Mapping)
            else {}
        )

    @property
    def comparable_key(self) -> str:
        """Equal for runs whose figures may be compared: same options, same kind of machine."""
        machine = {k: self.machine.get(k) for k in ("cpu_model", "cores_logical")}
        return json.dumps([self.params, machine], sort_keys=True, default=str)

    def rate_unit(self, metric: str) -> str:
        """What a ``*_per_s`` metric of this run counts per second."""
        if metric != "throughput_per_s":
            return metric.removesuffix("_per_s").replace("_", " ") + "/s"
        if self.suite == "function":
            return "calls/s"
        return _STACK_UNITS.get(self.name, "tasks/s")

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
        return cls(
            created_at=_when(index, data.get("created_at")),
            suite=str(data.get("suite") or ""),
            name=str(data.get("name") or "unnamed"),
            queue=str(data["queue"]) if data.get("queue") else None,
            metrics=dict(metrics),
            machine=dict(data.get("machine") or {}),
            versions=dict(data.get("versions") or {}),
            settings=dict(data.get("settings") or {}),
        )


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`render_report` wrote."""

    html_path: str
    png_path: str
    runs: int
    series: int


def render_report(
    runs: Iterable[Mapping[str, Any]],
    html_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    *,
    title: str = "LEWIS tasks — benchmarks",
) -> ReportFiles:
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
    chart = (
        f'<img class="chart" alt="throughput and latency over runs, per queue" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )
    span = (
        f"{parsed[0].created_at:%Y-%m-%d %H:%M} → {parsed[-1].created_at:%Y-%m-%d %H:%M} UTC"
        if parsed
        else "no runs stored yet"
    )
    text = page.substitute(
        title=html.escape(title),
        summary=html.escape(
            f"{len(parsed)} runs in {len(by_series)} series, {span}; "
            f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        ),
        charts=chart,
        latest=_latest_table(by_series),
        machines=_machines_table(by_series),
    )
    _write(Path(html_path), text.encode("utf-8"))
    return ReportFiles(str(html_path), str(png_path), len(parsed), len(by_series))


def render_png(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> bytes:
    """Stacked charts over time, one colour per series: one panel per rate unit (tasks/s,
    ports/s, requests/s, calls/s: rates of different things never share an axis), then
    latency."""
    units = _rate_units(by_series)
    fig = Figure(figsize=(12, 1.5 + 3.4 * (len(units) + 1)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(units) + 1, 1, sharex=True, squeeze=False)[:, 0]
    rate_axes, lat = dict(zip(units, axes, strict=False)), axes[-1]
    palette = [f"C{i % 10}" for i in range(len(by_series))]
    for colour, (_, runs) in zip(palette, sorted(by_series.items()), strict=True):
        times = [r.created_at for r in runs]
        for metric in sorted({m for r in runs for m in r.metrics if m.endswith("_per_s")}):
            points = _points(runs, times, metric)
            if points:
                rate_axes[runs[-1].rate_unit(metric)].plot(  # the panel names the unit
                    *zip(*points, strict=True), marker="o", color=colour, label=runs[0].label
                )
        for metric, style, short in _LATENCY:
            points = _points(runs, times, metric)
            if points:
                lat.plot(
                    *zip(*points, strict=True),
                    style,
                    marker="o",
                    color=colour,
                    label=f"{runs[0].label} {short}",
                )
    panels = [(ax, unit, f"Throughput, {unit}") for unit, ax in rate_axes.items()]
    panels.append((lat, "milliseconds", "Latency (p50 solid, p99 dashed)"))
    for ax, ylabel, title in panels:
        ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            _scale(ax)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        else:
            ax.text(
                0.5,
                0.5,
                "no data yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=14,
                color="#888",
            )
            ax.set_xticks([])
            ax.set_yticks([])
    if any(ax.lines for ax in axes):
        locator = AutoDateLocator()
        lat.xaxis.set_major_locator(locator)
        lat.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    lat.set_xlabel("run time (UTC)")
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _rate_units(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> list[str]:
    """The rate units the runs have, known ones first; "tasks/s" alone when there are none."""
    found = {
        runs[-1].rate_unit(m)
        for runs in by_series.values()
        for r in runs
        for m in r.metrics
        if m.endswith("_per_s")
    }
    return [u for u in _UNIT_ORDER if u in found] + sorted(found - set(_UNIT_ORDER)) or ["tasks/s"]


def _points(runs: Sequence[Run], times: Sequence[datetime], metric: str) -> list[tuple[Any, float]]:
    return [
        (t, float(r.metrics[metric]))
        for t, r in zip(times, runs, strict=True)
        if _is_number(r.metrics.get(metric))
    ]


def _scale(ax: Any) -> None:
    ys = [y for line in ax.lines for y in line.get_ydata() if y > 0]
    if ys and max(ys) / min(ys) > _LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
        )
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0)


def _latest_table(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> str:
    """The newest run of each series: its rate with the unit, the key figures by readable
    name, the change since the last comparable run, its parameters, and the other figures."""
    if not by_series:
        return '<div class="empty">No benchmark runs stored yet: run <code>lewis bench run</code>.</div>'
    head = "".join(
        f"<th>{html.escape(c)}</th>"
        for c in [
            "queue",
            "suite",
            "benchmark",
            "run at (UTC)",
            "runs",
            "rate",
            "unit",
            *(name for _, name in _KEY_FIGURES),
            "Δ rate vs last comparable run",
            "parameters",
            "other figures",
        ]
    )
    rows = []
    for key in sorted(by_series):
        runs = by_series[key]
        last = runs[-1]
        cells = [
            _td(last.queue or "—"),
            _td(last.suite or "—"),
            _td(last.name),
            _td(f"{last.created_at:%Y-%m-%d %H:%M:%S}"),
            _td(str(len(runs)), num=True),
            _td(_fmt(last.metrics.get("throughput_per_s")), num=True),
            _td(last.rate_unit("throughput_per_s")),
        ]
        cells += [_td(_fmt(last.metrics.get(metric)), num=True) for metric, _ in _KEY_FIGURES]
        cells += [_delta(runs), _td(_params_text(last.params)), _others(last.metrics)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def rate_change(runs: Sequence[Run]) -> tuple[float, float] | None:
    """(change, noise) of the newest run's rate against the newest earlier run with the same
    parameters on the same kind of machine; None when there is no such run. ``noise`` is the
    relative spread (stdev / mean) of the earlier comparable rates when there are three or
    more, else :data:`DEFAULT_NOISE`."""
    if not runs or not _is_number(now := runs[-1].metrics.get("throughput_per_s")):
        return None
    key = runs[-1].comparable_key
    before = [
        float(v)
        for r in runs[:-1]
        if r.comparable_key == key and _is_number(v := r.metrics.get("throughput_per_s"))
    ]
    if not before or before[-1] == 0:
        return None
    mean = statistics.fmean(before)
    noise = statistics.stdev(before) / mean if len(before) >= 3 and mean > 0 else DEFAULT_NOISE
    return float(now) / before[-1] - 1, noise


def _delta(runs: Sequence[Run]) -> str:
    found = rate_change(runs)
    if found is None:
        return '<td class="num" title="no earlier run with the same parameters">—</td>'
    change, noise = found
    if abs(change) <= noise:
        css, title = "noise", f"within the measured noise (±{noise:.0%})"
    else:
        css, title = ("up" if change > 0 else "down"), f"beyond the measured noise (±{noise:.0%})"
    return f'<td class="num {css}" title="{html.escape(title)}">{change:+.1%}</td>'


def _params_text(params: Mapping[str, Any]) -> str:
    return (
        ", ".join(
            f"{k}={json.dumps(v, sort_keys=True, default=str) if isinstance(v, Mapping | list) else _fmt(v)}"
            for k, v in sorted(params.items())
            if v is not None
        )
        or "—"
    )


def _others(metrics: Mapping[str, Any]) -> str:
    shown = {"throughput_per_s", *(m for m, _ in _KEY_FIGURES)}
    parts = [
        f"{html.escape(_READABLE.get(k, k.replace('_', ' ')))}: "
        f'<span class="v">{html.escape(_fmt(v))}</span>'
        for k, v in sorted(metrics.items())
        if k not in shown
    ]
    return f'<td class="other">{" · ".join(parts) or "—"}</td>'


def _machines_table(by_series: Mapping[tuple[str, str, str], Sequence[Run]]) -> str:
    seen: dict[str, tuple[str, str]] = {}
    for key in sorted(by_series):
        last = by_series[key][-1]
        machine = (
            ", ".join(
                f"{k}: {format_bytes(v) if k.endswith('_bytes') and _is_number(v) else _fmt(v)}"
                for k, v in sorted(last.machine.items())
                if not isinstance(v, Mapping)
            )
            or "—"
        )
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
        return (
            f"{value:,.0f}"
            if abs(value) >= 1000
            else f"{value:,.3g}"
            if abs(value) < 1
            else f"{value:,.1f}"
        )
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
        raise InvalidInput(
            f"run {index}: created_at {value!r} is not a time (ISO 8601, epoch seconds or datetime)"
        ) from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _write(target: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, target)


__all__ = ["DEFAULT_NOISE", "ReportFiles", "Run", "rate_change", "render_png", "render_report"]
