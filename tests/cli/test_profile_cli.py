"""`lewis profile`, `lewis diagnose`, `lewis bench run|report` end to end, with an embedded worker."""

from __future__ import annotations

import json
import pstats
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lewis_tasks.cli import Exit, cli


def lewis(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_profile_prints_tables_with_the_hot_function(celery_worker: Any) -> None:
    result = lewis("profile", "workload.spin", "30000", "--top", "5")
    assert result.exit_code == Exit.OK, result.output
    assert result.output.startswith("profile of workload.spin: wall ")
    assert re.search(r"top [1-5] by cumulative time", result.output)
    assert re.search(r"top [1-5] by own \(tottime\) time", result.output)
    assert re.search(r"workloads\.py:\d+\(spin\)", result.output)
    assert "allocation sites" in result.output


def test_profile_json_and_pstats_file(celery_worker: Any, tmp_path: Path) -> None:
    target = tmp_path / "merge.pstats"
    result = lewis(
        "profile",
        "workload.merge_histograms",
        "-k",
        "parts=2",
        "-k",
        "values_per_part=1000",
        "--no-memory",
        "--pstats",
        str(target),
        "--json",
    )
    assert result.exit_code == Exit.OK, result.output
    data = json.loads(result.output)
    assert data["status"] == "ok" and data["memory"] is None and "pstats_b64" not in data
    assert data["pstats_file"] == str(target)
    assert any(f == "record" for (_file, _line, f) in pstats.Stats(str(target)).stats)  # type: ignore[attr-defined]


def test_profile_of_a_raising_target_shows_the_exception(celery_worker: Any) -> None:
    result = lewis("profile", "lewis.bench.io_sleep", "--", "-5")  # `--`: -5 is no option
    assert result.exit_code == Exit.OK, result.output
    assert "RAISED lewis_tasks.errors.InvalidInput: seconds must be a number" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "os.system", "true"], "unknown profilable task 'os.system'"),
        (["profile", "workload.spin", "--top", "9999"], "profiling.top_n"),
        (["profile", "workload.spin", "-k", "oops"], "expected KEY=VALUE"),
        (
            ["bench", "run", "workload.spin", "--iterations", "999999999"],
            "profiling.max_iterations",
        ),
        (["diagnose", "--worker", "ghost@nowhere"], "no live worker named 'ghost@nowhere'"),
    ],
)
def test_bad_requests_exit_2_with_one_line(
    celery_worker: Any, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == Exit.USAGE
    assert message in result.output and "Traceback" not in result.output


def test_diagnose_table_and_json(celery_worker: Any) -> None:
    table = lewis("diagnose")
    assert table.exit_code == Exit.OK, table.output
    assert "cluster: 1/1 workers replied" in table.output and celery_worker.hostname in table.output
    data = json.loads(lewis("diagnose", "--worker", celery_worker.hostname, "--json").output)
    assert [w["worker"] for w in data["workers"]] == [celery_worker.hostname]
    assert data["workers"][0]["snapshot"]["processes"]


def test_bench_run_function_and_cluster_then_report(celery_worker: Any, tmp_path: Path) -> None:
    # A function benchmark, in a worker
    function = lewis("bench", "run", "workload.spin", "2000", "--iterations", "5")
    assert function.exit_code == Exit.OK, function.output
    assert (
        "benchmark workload.spin: 5/5 iterations" in function.output and "stored" in function.output
    )
    # A cluster benchmark, from here through the broker
    cluster = json.loads(
        lewis("bench", "run", "latency", "--queue", "io", "--samples", "5", "--json").output
    )
    assert [x["queue"] for x in cluster["latency"]] == ["io"] and cluster["latency"][0][
        "samples"
    ] == 5
    # Then a report of the stored runs: a self-contained page and a PNG
    html, png = tmp_path / "report.html", tmp_path / "report.png"
    report = lewis(
        "bench", "report", "--html", str(html), "--png", str(png), "--suite", "all", "--json"
    )
    assert report.exit_code == Exit.OK, report.output
    written = json.loads(report.output)
    assert written["runs"] >= 2 and written["series"] >= 2
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = html.read_text()
    assert "data:image/png;base64," in page and "workload.spin" in page and "latency" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from outside


def test_bench_report_default_png_sits_next_to_the_html(
    lewis_settings: Any, tmp_path: Path
) -> None:
    result = lewis("bench", "report", "--html", str(tmp_path / "r.html"), "--suite", "nothing-here")
    assert result.exit_code == Exit.OK, result.output
    assert (tmp_path / "r.png").exists() and "0 runs in 0 series" in result.output
