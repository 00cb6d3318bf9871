"""HTTP batches: results keyed by index, counters moved only by new rows."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from lewis_tasks.storage import http
from lewis_tasks.storage.db import session_scope

RESULTS = [
    {
        "idx": 0,
        "url": "http://127.0.0.1:8080/",
        "status": 200,
        "bytes": 12,
        "sha256": "ab" * 32,
        "timings": {"total_ms": 3.2},
        "headers": {"server": "test"},
        "redirects": [],
    },
    {"idx": 1, "url": "http://127.0.0.1:8080/missing", "status": 404, "bytes": 0},
    {
        "idx": 2,
        "url": "http://127.0.0.1:1/",
        "error_class": "ConnectionRefused",
        "error": "connection refused",
    },
]


def test_results_recorded_twice_count_once(engine: Engine) -> None:
    with session_scope(engine) as s:
        assert http.save_http_batch(s, "b1", total=3, request={"urls": 3})
        assert not http.save_http_batch(s, "b1", total=99)
        assert http.save_http_results(s, "b1", RESULTS[:2]) == 2
    with session_scope(engine) as s:  # the chunk ran again, plus the last URL
        assert http.save_http_results(s, "b1", RESULTS) == 1
        assert http.finish_http_batch(s, "b1", summary={"ok": 2})
    with session_scope(engine) as s:
        batch = http.get_http_batch(s, "b1")
        assert batch is not None
        assert (batch.total, batch.done, batch.ok, batch.failed) == (3, 3, 2, 1)
        assert batch.status == "done" and batch.finished_at is not None
        rows = http.get_http_results(s, "b1")
        assert [r.idx for r in rows] == [0, 1, 2]
        assert rows[0].timings == {"total_ms": 3.2} and rows[0].method == "GET"
        assert rows[0].truncated is False
        failed = http.get_http_results(s, "b1", failed_only=True)
        assert [(r.idx, r.error_class) for r in failed] == [(2, "ConnectionRefused")]
        assert [r.idx for r in http.get_http_results(s, "b1", offset=1, limit=1)] == [1]
