"""`lewis http` and `lewis loadtest` against the embedded worker: exit codes, tables, JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lewis_tasks.cli import cli
from lewis_tasks.cli.http import parse_duration, read_requests
from lewis_tasks.errors import InvalidInput
from tests.support.httpservers import ServerThread, free_port, sha256_of


@pytest.fixture(scope="module")
def server(serve: ServerThread) -> str:
    return serve.start("app", "127.0.0.1").url


def lewis(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_http_json_gives_every_url_and_exits_0_when_all_answered(
    celery_worker: Any, server: str
) -> None:
    result = lewis("http", f"{server}/bytes/100", f"{server}/status/503", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"batch_id", "seconds", "summary", "results"}
    assert data["summary"]["statuses"] == {"200": 1, "503": 1}
    first, second = data["results"]
    assert (first["index"], first["status"], first["bytes"]) == (0, 200, 100)
    assert first["sha256"] == sha256_of(100) and first["error_class"] is None
    assert set(first["timings"]) == {"dns_ms", "connect_ms", "ttfb_ms", "total_ms"}
    assert second["status"] == 503


def test_http_table_from_a_file_exits_1_when_a_url_failed(
    celery_worker: Any, server: str, tmp_path: Path
) -> None:
    source = tmp_path / "urls.txt"
    refused = f"http://127.0.0.1:{free_port()}/"
    source.write_text(f"# two URLs\n{server}/bytes/10\n\n{refused}\n")
    result = lewis("http", "-f", str(source))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["#", "status", "time", "ms", "bytes", "sha256", "url", "/", "error"]
    assert sha256_of(10)[:12] in lines[1]
    assert "[connection_refused]" in lines[2]
    assert "2 URLs" in result.output and "1 failed (connection_refused: 1)" in result.output


def test_http_usage_errors_exit_2(lewis_settings: Any) -> None:
    result = lewis("http")
    assert result.exit_code == 2 and "give URLs" in result.output
    result = lewis("http", "http://127.0.0.1:1/", "--timeout", "1x")
    assert result.exit_code == 2 and "not a duration" in result.output


def test_http_over_the_cap_exits_2_naming_it(lewis_settings: Any) -> None:
    from lewis_tasks.infra import config

    config.set_settings(config.replace_section(lewis_settings, "http", max_urls=2))
    try:
        result = lewis(
            "http", "http://127.0.0.1:1/a", "http://127.0.0.1:1/b", "http://127.0.0.1:1/c"
        )
    finally:
        config.set_settings(lewis_settings)
    assert result.exit_code == 2
    assert "http.max_urls=2" in result.output


def test_loadtest_json_has_rate_percentiles_and_codes(celery_worker: Any, server: str) -> None:
    result = lewis("loadtest", f"{server}/", "-c", "2", "-d", "500ms", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["mode"] == "closed" and data["concurrency"] == 2 and data["parts"] == 1
    assert data["requests"] > 0 and data["rps"] > 0
    assert set(data["latency_ms"]) >= {"p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms"}
    assert set(data["status_counts"]) == {"200"} and data["errors"] == {}
    assert data["latency_ms"]["count"] == data["requests"]
    assert data["warmup"] == 2  # one uncounted request per connection before the clock


def test_loadtest_table_and_open_loop(celery_worker: Any, server: str) -> None:
    result = lewis("loadtest", f"{server}/", "-c", "2", "-n", "20", "--rate", "200")
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.output.splitlines())
    assert rows["requests"].startswith("20 in") and "+2 uncounted" in rows["requests"]
    assert "open loop at 200 req/s" in rows["load"]
    assert rows["status"] == "200: 20" and rows["errors"] == "none"
    assert "p99.9" in rows["latency"]
    assert "p99" in rows["service"] and "actual send" in rows["service"]


def test_loadtest_with_no_answer_exits_1(celery_worker: Any) -> None:
    result = lewis("loadtest", f"http://127.0.0.1:{free_port()}/", "-c", "1", "-n", "3", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["errors"] == {"connection_refused": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "100000"], "loadtest.max_concurrency"),
        (["-d", "1h"], "loadtest.max_duration"),
        (["-d", "ten"], "not a duration"),
        (["-w", "3", "-c", "2"], "cannot be split over 3 workers"),
    ],
)
def test_loadtest_refusals_exit_2(lewis_settings: Any, args: list[str], message: str) -> None:
    result = lewis("loadtest", "http://127.0.0.1:1/", *args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m", 60), ("500ms", 0.5), ("2", 2), ("1.5h", 5400), (" 3 S ", 3)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "-1s", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_duration(text)


def test_request_files_take_urls_json_lines_and_comments(tmp_path: Path) -> None:
    source = tmp_path / "urls.txt"
    source.write_text(
        '# comment\n\nhttp://127.0.0.1:1/a\n{"url": "http://127.0.0.1:1/b", "method": "HEAD"}\n'
    )
    with source.open() as stream:
        assert read_requests(stream) == [
            "http://127.0.0.1:1/a",
            {"url": "http://127.0.0.1:1/b", "method": "HEAD"},
        ]
    source.write_text("{broken\n")
    with source.open() as stream, pytest.raises(InvalidInput, match="line 1"):
        read_requests(stream)


# --- no io worker: a bounded wait, one line, exit 3 -------------------------------------------


@pytest.fixture
def unconsumed(worker_redis: Any) -> Iterator[None]:
    """Nothing consumes the io queue here: drop what the test enqueued, so a later test's
    worker does not run it."""
    before = set(worker_redis.lrange("io", 0, -1))
    yield
    for message in set(worker_redis.lrange("io", 0, -1)) - before:
        worker_redis.lrem("io", 0, message)


@pytest.mark.parametrize(
    "command",
    [
        ["http", "http://127.0.0.1:1/", "--wait", "1"],
        ["loadtest", "http://127.0.0.1:1/", "-n", "1", "--wait", "1s"],
    ],
)
def test_without_an_io_worker_the_wait_ends_in_one_line_and_exit_3(
    lewis_settings: Any, unconsumed: None, command: list[str]
) -> None:
    result = lewis(*command)
    assert result.exit_code == 3, result.output
    assert result.output.strip() == (
        "lewis: no io worker answered within 1 s; is the stack up? (`lewis status`)"
    )


def test_a_bad_wait_exits_2(lewis_settings: Any) -> None:
    for command in (["http", "http://127.0.0.1:1/"], ["loadtest", "http://127.0.0.1:1/"]):
        result = lewis(*command, "--wait", "0")
        assert result.exit_code == 2 and "--wait must be a duration > 0" in result.output


def test_default_waits_cover_the_work_at_its_worst(lewis_settings: Any) -> None:
    from lewis_tasks.cli.http import batch_wait, loadtest_wait
    from lewis_tasks.infra.planning import chunk_size, loadtest_budget, url_budget

    s = lewis_settings
    # A load test: its part's hard time limit (barrier, run, drain, slack) and then some
    for duration in (0.5, 10.0, None):
        assert loadtest_wait(s, duration) > loadtest_budget(s).time_limits(duration)[1]
    assert loadtest_wait(s, 0.5) < loadtest_wait(s, 10.0) <= loadtest_wait(s, None)
    # A batch: every URL may use its whole budget; more URLs (more chunks) wait longer
    one = batch_wait(s, 1, None)
    assert one > url_budget(s, None) and batch_wait(s, 1, 1.0) < one
    size = chunk_size(s, url_budget(s, None))
    assert batch_wait(s, 3 * size, None) > batch_wait(s, size, None) >= one
