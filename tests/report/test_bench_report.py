"""Benchmark report: both files written, the HTML self-contained with the figures, the PNG valid."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from matplotlib.image import imread

from lewis_tasks.errors import InvalidInput
from lewis_tasks.report import render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _runs() -> list[dict]:
    """Four runs per queue, times given in each accepted form, newest figures known."""
    machine = {"cpu_model": "Test CPU", "cores_logical": 2, "memory_total_bytes": 8 << 30}
    versions = {"celery": "5.7.0", "redis": "8.1.0"}
    runs = []
    for day in range(4):
        when = START + timedelta(days=day)
        forms = (when.isoformat(), when.timestamp(), when, when.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for queue, base in (("io", 1000.0), ("cpu", 700.0)):
            runs.append(
                {
                    "created_at": forms[day],
                    "suite": "cluster",
                    "name": "roundtrip",
                    "queue": queue,
                    "machine": machine,
                    "versions": versions,
                    "metrics": {
                        "throughput_per_s": base + 100 * day,
                        "p50_ms": 2.0 + day / 10,
                        "p99_ms": 4.5,
                        "tasks": 20000,
                    },
                }
            )
    runs.append(
        {
            "created_at": START.isoformat(),
            "suite": "stack",
            "name": "scan",
            "queue": "io",
            "machine": machine,
            "versions": versions,
            "metrics": {"ports_per_s": 21345.0, "p99_ms": 9.0},
        }
    )
    return runs


def test_report_files_exist_and_html_is_self_contained(tmp_path: Path) -> None:
    html_path, png_path = tmp_path / "report.html", tmp_path / "report.png"

    written = render_report(_runs(), html_path, png_path)

    assert (written.runs, written.series) == (9, 3)
    page = html_path.read_text("utf-8")
    assert not re.search(
        r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|<link\b|<script\b|@import|url\(",
        page,
        flags=re.IGNORECASE,
    )
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = base64.b64decode(sources[0].split(",", 1)[1])
    assert embedded == png_path.read_bytes()  # the HTML shows exactly the PNG's charts


def test_html_holds_the_latest_figures(tmp_path: Path) -> None:
    html_path = tmp_path / "r.html"
    render_report(_runs(), html_path, tmp_path / "r.png")
    page = html_path.read_text("utf-8")

    for figure in ("1,300", "1,000", "21,345", "2.3", "4.5", "20,000"):  # latest io/cpu/scan values
        assert f">{figure}<" in page
    assert ">+8.3%<" in page  # io throughput 1200 → 1300
    assert "celery 5.7.0" in page and "8.0 GiB" in page and "Test CPU" in page
    assert "2026-11-04 12:00:00" in page  # the latest run of a series, in UTC


def test_png_is_a_valid_image(tmp_path: Path) -> None:
    png_path = tmp_path / "r.png"
    render_report(_runs(), tmp_path / "r.html", png_path)

    data = png_path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    pixels = imread(png_path)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 600
    assert pixels.std() > 0.05  # not a blank canvas


def test_text_from_storage_is_escaped(tmp_path: Path) -> None:
    runs = [
        {
            "created_at": START.isoformat(),
            "suite": "s",
            "name": "<script>alert(1)</script>",
            "queue": "io",
            "metrics": {"throughput_per_s": 1.0},
        }
    ]
    html_path = tmp_path / "r.html"
    render_report(runs, html_path, tmp_path / "r.png")
    page = html_path.read_text("utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_no_runs_still_gives_a_report(tmp_path: Path) -> None:
    html_path, png_path = tmp_path / "r.html", tmp_path / "r.png"
    written = render_report([], html_path, png_path)
    assert written.runs == 0
    assert "No benchmark runs stored yet" in html_path.read_text("utf-8")
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)


def test_a_single_run_renders(tmp_path: Path) -> None:
    run = _runs()[0]
    written = render_report([run], tmp_path / "r.html", tmp_path / "r.png")
    assert written.series == 1 and (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("run", "named"),
    [
        ({"created_at": "yesterday", "metrics": {}}, "run 0: created_at 'yesterday'"),
        ({"created_at": None, "metrics": {}}, "run 0: created_at None"),
        (
            {"created_at": START.isoformat(), "metrics": [1, 2]},
            "run 0: 'metrics' must be a mapping",
        ),
        ("not a run", "run 0: expected a mapping"),
    ],
)
def test_malformed_runs_are_refused_by_index(tmp_path: Path, run: object, named: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(named)):
        render_report([run], tmp_path / "r.html", tmp_path / "r.png")  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no directory"):
        render_report(_runs(), tmp_path / "nope" / "r.html", tmp_path / "r.png")


def _run(day: int, rate: float, **params: object) -> dict:
    return {
        "created_at": (START + timedelta(days=day)).isoformat(),
        "suite": "cluster",
        "name": "noop",
        "queue": "io",
        "machine": {"cpu_model": "Test CPU", "cores_logical": 2},
        "metrics": {"throughput_per_s": rate, "p50_ms": 1.5, "enqueue_tasks_per_sec": 900.0},
        "settings": {"run": {"tasks": 2000, "samples": 200, **params}},
    }


def test_rates_of_different_things_get_a_panel_each(tmp_path: Path) -> None:
    tasks_only = [r for r in _runs() if r["suite"] == "cluster"]
    render_report(tasks_only, tmp_path / "a.html", tmp_path / "a.png")
    render_report(_runs(), tmp_path / "b.html", tmp_path / "b.png")  # + a scan in ports/s
    # one more panel (ports/s) makes the chart taller by one panel's height
    assert imread(tmp_path / "b.png").shape[0] - imread(tmp_path / "a.png").shape[0] == 340
    page = (tmp_path / "b.html").read_text("utf-8")
    assert "<td>ports/s</td>" in page and "<td>tasks/s</td>" in page


def test_the_change_compares_only_runs_with_the_same_parameters(tmp_path: Path) -> None:
    # Given an earlier run with other parameters and no comparable one
    runs = [_run(0, 1000.0, tasks=500), _run(1, 2000.0)]
    render_report(runs, tmp_path / "r.html", tmp_path / "r.png")
    page = (tmp_path / "r.html").read_text("utf-8")
    # Then no change is shown (a doubling from 500 to 2,000 tasks is no speed-up)
    assert 'title="no earlier run with the same parameters">—</td>' in page
    assert "+100.0%" not in page
    # and the run's parameters are shown, readable names for its figures
    assert "samples=200, tasks=2,000" in page
    assert "<th>p50 (ms)</th>" in page and 'enqueue (tasks/s): <span class="v">900.0</span>' in page


def test_a_change_within_the_measured_noise_is_greyed_and_one_beyond_it_is_not(
    tmp_path: Path,
) -> None:
    # Given comparable runs whose rates spread ±~10 %
    history = [_run(d, rate) for d, rate in enumerate((1000.0, 1200.0, 1000.0, 1200.0))]
    render_report([*history, _run(9, 1260.0)], tmp_path / "a.html", tmp_path / "a.png")
    within = (tmp_path / "a.html").read_text("utf-8")
    assert 'class="num noise" title="within the measured noise (±10%)">+5.0%<' in within
    render_report([*history, _run(9, 1800.0)], tmp_path / "b.html", tmp_path / "b.png")
    beyond = (tmp_path / "b.html").read_text("utf-8")
    assert 'class="num up" title="beyond the measured noise (±10%)">+50.0%<' in beyond
    # with fewer than three comparable runs the noise is the default 15 %
    render_report([_run(0, 1000.0), _run(1, 880.0)], tmp_path / "c.html", tmp_path / "c.png")
    assert 'class="num down" title="beyond the measured noise (±15%)">-12.0%<' not in (
        tmp_path / "c.html"
    ).read_text("utf-8")
    assert 'class="num noise" title="within the measured noise (±15%)">-12.0%<' in (
        tmp_path / "c.html"
    ).read_text("utf-8")
