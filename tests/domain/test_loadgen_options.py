"""run_loadtest's request options against a real loopback server that records what it saw:
headers, method and body; the per-request timeout; the ramp-up; the locust-style CSV files.

Timing is only compared coarsely (a ramp's first part against its full load, with a wide
margin), never asserted against the clock.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.domain.httpclient import create_session
from lewis_tasks.domain.loadcsv import HISTORY_COLUMNS, STATS_COLUMNS, write_csv
from lewis_tasks.domain.loadgen import LoadResult, check_request_options, ramp_offset, run_loadtest
from lewis_tasks.domain.redact import MASK, redact_headers
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import InvalidInput
from tests.support.httpservers import RunningServer, ServerThread

LOOPBACK = Scope.from_allow(["127.0.0.0/8"])


@pytest.fixture
def server(serve: ServerThread) -> RunningServer:
    return serve.start("app", "127.0.0.1")


def load(url: str, **options: Any) -> LoadResult:
    async def main() -> LoadResult:
        session = create_session(
            LOOPBACK,
            max_connections=100,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=None,
            keep_alive=True,
        )
        async with session:
            return await run_loadtest(session, url, **options)

    return asyncio.run(main())


def test_every_request_carries_the_headers_method_and_body(server: RunningServer) -> None:
    headers = [["X-Trace", "run-42"], ["Authorization", "Bearer s3cret"]]
    result = load(
        server.url + "/record",
        concurrency=3,
        requests=30,
        method="PUT",
        headers=headers,
        body='{"k": "é"}',
    )
    assert result.requests == 30 and result.method == "PUT"
    assert len(server.seen) == 30  # no warm-up requests: PUT is not safe to repeat
    for seen in server.seen:
        assert seen.method == "PUT" and seen.body == '{"k": "é"}'.encode()
        assert seen.headers["X-Trace"] == "run-42"
        assert seen.headers["Authorization"] == "Bearer s3cret"


def test_the_per_request_timeout_cuts_a_slow_servers_requests(server: RunningServer) -> None:
    # a server answering after 5 s, requests cut at 200 ms, a 1 s run
    result = load(
        server.url + "/record/5000", concurrency=2, duration=1.0, method="POST", timeout=0.2
    )
    assert result.requests == 0
    assert result.errors.get("timeout", 0) >= 4  # each connection got to try again and again
    assert len(server.seen) >= 4


def _counts(
    server: RunningServer, first: tuple[float, float], last: tuple[float, float]
) -> tuple[int, int]:
    t0 = min(seen.at for seen in server.seen)
    times = [seen.at - t0 for seen in server.seen]
    return (
        sum(first[0] <= t < first[1] for t in times),
        sum(last[0] <= t < last[1] for t in times),
    )


def test_a_closed_loop_ramp_starts_with_fewer_requests_than_at_full_load(
    server: RunningServer,
) -> None:
    # 8 connections joining one after another over 2 s of a 3 s run; 20 ms per answer
    result = load(server.url + "/record/20", concurrency=8, duration=3.0, ramp=2.0, method="POST")
    assert result.ramp_s == 2.0 and result.errors.get("timeout", 0) == 0
    early, late = _counts(server, (0.0, 0.5), (2.3, 2.8))
    # 1–2 connections early against 8 late: four times as many at full load, 1.5 times is plenty
    assert early > 0 and late > 1.5 * early, (early, late)


def test_an_open_loop_ramp_raises_the_rate_from_zero(server: RunningServer) -> None:
    result = load(
        server.url + "/record", concurrency=20, duration=3.0, rate=200, ramp=2.0, method="POST"
    )
    early, late = _counts(server, (0.0, 0.5), (2.3, 2.8))
    # due in the first 0.5 s: 200·0.5²/(2·2) ≈ 12; in 0.5 s at full rate: 100
    assert late > 3 * early, (early, late)
    assert result.requests == len(server.seen)


def test_the_ramp_schedule_reaches_the_rate_when_the_ramp_ends() -> None:
    assert ramp_offset(50, 200.0, 2.0) == pytest.approx(1.0)  # 200·1²/(2·2) due by 1 s
    offsets = [ramp_offset(n, 200.0, 2.0) for n in range(600)]
    assert offsets == sorted(offsets) and offsets[200] == pytest.approx(2.0)
    assert offsets[399] - offsets[398] == pytest.approx(1 / 200)  # full rate after the ramp
    assert ramp_offset(50, 100.0, None) == pytest.approx(0.5)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_the_csv_files_parse_and_their_totals_are_the_results(
    server: RunningServer, tmp_path: Path
) -> None:
    ok = load(server.url + "/bytes/100", concurrency=2, duration=1.2)
    failing = load(server.url + "/status/503", concurrency=2, requests=40)
    for name, result in (("ok", ok), ("failing", failing)):
        data = json_round_trip(result)
        stats_path, history_path = write_csv(data, tmp_path / name)
        assert stats_path.name == f"{name}_stats.csv"
        assert history_path.name == f"{name}_stats_history.csv"
        stats, history = _rows(stats_path), _rows(history_path)
        assert list(stats[0]) == list(STATS_COLUMNS) and list(history[0]) == list(HISTORY_COLUMNS)
        endpoint, aggregated = stats
        assert (endpoint["Type"], endpoint["Name"]) == ("GET", result.url)
        assert aggregated["Name"] == "Aggregated"
        total = result.requests + sum(result.errors.values())
        assert int(endpoint["Request Count"]) == int(aggregated["Request Count"]) == total
        assert sum(int(row["Requests/s"]) for row in history) == total
        assert int(history[-1]["Total Request Count"]) == total
        assert float(endpoint["100%"]) == pytest.approx(result.latency.max / 1000)
        assert float(endpoint["Median Response Time"]) == pytest.approx(
            result.latency.percentile(50) / 1000
        )
    assert int(_rows(tmp_path / "ok_stats.csv")[0]["Failure Count"]) == sum(ok.errors.values())
    assert float(_rows(tmp_path / "ok_stats.csv")[0]["Average Content Size"]) == pytest.approx(
        ok.bytes / (ok.requests + sum(ok.errors.values())), abs=0.1
    )
    failed = _rows(tmp_path / "failing_stats_history.csv")
    assert int(failed[-1]["Total Failure Count"]) == 40  # a 503 is a failure, as locust counts it


def json_round_trip(result: LoadResult) -> dict[str, Any]:
    """What the CLI gets: the merged result, through JSON and back (merge of one part)."""
    import json

    merged = LoadResult.merge([LoadResult.from_dict(json.loads(json.dumps(result.to_dict())))])
    assert merged.timeline == result.timeline
    return json.loads(json.dumps(merged.to_dict()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"headers": [["Bad Name", "x"]]}, "'Bad Name' is malformed"),
        ({"headers": [["X-A", "a\r\nX-Injected: 1"]]}, "control character"),
        ({"headers": [["X-A", "a\x00b"]]}, "control character"),
        ({"headers": [["X-A"]]}, "pair"),
        ({"headers": {"X-A": "b"}}, "list of"),
        ({"body": "x", "method": "GET"}, "GET request carries no body"),
        ({"body": "x" * 101}, "loadtest.max_body_bytes"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"ramp": 5.0, "duration": 5.0}, "must end before"),
    ],
)
def test_bad_request_options_are_invalid_input(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "method": "POST",
        "headers": None,
        "body": None,
        "timeout": None,
        "ramp": None,
        "duration": 10.0,
        "max_body": 100,
        **options,
    }
    with pytest.raises(InvalidInput, match=message):
        check_request_options(**arguments)


def test_a_bad_header_is_refused_before_any_request(server: RunningServer) -> None:
    with pytest.raises(InvalidInput, match="malformed"):
        load(server.url + "/record", concurrency=1, requests=1, headers=[["X:Y", "1"]])
    assert server.seen == []


def test_credential_headers_are_masked_for_storing() -> None:
    shown = redact_headers(
        [
            ("Authorization", "Bearer s3cret"),
            ("cookie", "sid=1"),
            ("X-Api-Key", "k"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Accept", "text/html"),
        ]
    )
    assert shown == [
        ["Authorization", MASK],
        ["cookie", MASK],
        ["X-Api-Key", MASK],
        ["Proxy-Authorization", MASK],
        ["Accept", "text/html"],
    ]
