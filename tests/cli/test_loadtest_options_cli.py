"""`lewis loadtest` -H/-m/--body/--body-file/--timeout/--ramp/--csv through the embedded worker."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lewis_tasks.cli import cli
from lewis_tasks.cli.http import parse_header
from lewis_tasks.errors import InvalidInput
from tests.support.httpservers import RunningServer, ServerThread


@pytest.fixture
def server(serve: ServerThread) -> RunningServer:
    return serve.start("app", "127.0.0.1")


def lewis(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _stored_request(run_id: str) -> dict[str, Any]:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.models import LoadtestRow
    from lewis_tasks.storage.runs import get_run

    with session_scope(get_engine()) as session:
        return dict(get_run(session, LoadtestRow, run_id).request)  # type: ignore[union-attr]


def test_headers_method_and_body_file_reach_the_server_and_secrets_are_stored_masked(
    celery_worker: Any, server: RunningServer, tmp_path: Path
) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"hello": "wörld"}')
    result = lewis(
        "loadtest",
        f"{server.url}/record",
        "-m",
        "patch",
        "-c",
        "2",
        "-n",
        "10",
        "-H",
        "X-Trace: abc: def",
        "-H",
        "Authorization: Bearer s3cret",
        "-H",
        "Cookie: sid=42",
        "--body-file",
        str(body),
        "--timeout",
        "5s",
        "--csv",
        str(tmp_path / "run"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["requests"] == 10 and data["method"] == "PATCH"
    assert len(server.seen) == 10
    for seen in server.seen:
        assert seen.method == "PATCH" and seen.body == body.read_bytes()
        assert seen.headers["X-Trace"] == "abc: def"  # split at the first colon only
        assert seen.headers["Authorization"] == "Bearer s3cret"
        assert seen.headers["Cookie"] == "sid=42"
    stored = _stored_request(data["run_id"])
    assert stored["headers"] == [
        ["X-Trace", "abc: def"],
        ["Authorization", "***"],
        ["Cookie", "***"],
    ]
    assert stored["body_bytes"] == len(body.read_bytes()) and "body" not in stored
    assert stored["timeout"] == 5.0 and stored["method"] == "PATCH"
    assert "s3cret" not in json.dumps(stored) and "sid=42" not in json.dumps(stored)
    with (tmp_path / "run_stats.csv").open(newline="") as stream:
        endpoint, aggregated = csv.DictReader(stream)
    assert int(endpoint["Request Count"]) == int(aggregated["Request Count"]) == 10
    assert endpoint["Type"] == "PATCH" and int(endpoint["Failure Count"]) == 0
    with (tmp_path / "run_stats_history.csv").open(newline="") as stream:
        history = list(csv.DictReader(stream))
    assert int(history[-1]["Total Request Count"]) == 10
    assert sum(int(row["Requests/s"]) for row in history) == 10


def test_a_ramp_and_a_timeout_show_in_the_table(celery_worker: Any, server: RunningServer) -> None:
    result = lewis(
        "loadtest",
        f"{server.url}/record/3000",
        "-m",
        "POST",
        "--body",
        "x",
        "-c",
        "2",
        "-d",
        "1500ms",
        "--ramp",
        "500ms",
        "--timeout",
        "200ms",
    )
    assert result.exit_code == 1, result.output  # nothing answered in time
    rows = dict(line.split(None, 1) for line in result.output.splitlines())
    assert "ramp 0.5 s" in rows["load"]
    assert "timeout: " in rows["errors"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-H", "NoColon"], "a header is 'Name: value'"),
        (["-H", "Bad Name: x"], "'Bad Name' is malformed"),
        (["-H", "X-A: a\x01b"], "control character"),
        (["--body", "x"], "GET request carries no body"),
        (["-m", "POST", "--body", "x", "--body-file", "/etc/hostname"], "not both"),
        (["-m", "TRACE"], "TRACE"),
        (["--ramp", "20s", "-d", "10s"], "must end before"),
        (["--timeout", "0s"], "timeout must be"),
    ],
)
def test_bad_request_options_exit_2(lewis_settings: Any, args: list[str], message: str) -> None:
    result = lewis("loadtest", "http://127.0.0.1:1/", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_an_oversized_body_exits_2_naming_the_cap(lewis_settings: Any, tmp_path: Path) -> None:
    from lewis_tasks.infra import config

    big = tmp_path / "big"
    big.write_text("x" * 2000)
    config.set_settings(config.replace_section(lewis_settings, "loadtest", max_body_bytes=1000))
    try:
        result = lewis("loadtest", "http://127.0.0.1:1/", "-m", "POST", "--body-file", str(big))
    finally:
        config.set_settings(lewis_settings)
    assert result.exit_code == 2 and "loadtest.max_body_bytes" in result.output


def test_parse_header() -> None:
    assert parse_header("Accept:  text/html ") == ("Accept", "text/html")
    assert parse_header("X-Empty:") == ("X-Empty", "")
    with pytest.raises(InvalidInput):
        parse_header(": value")
