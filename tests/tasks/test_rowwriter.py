"""The row writer: a batch's rows stored by a helper process, once each, whatever happens to it.

Real pieces throughout: the writer is a real ``python -m lewis_tasks.infra.rowwriter`` child
on a real pipe, writing the test's SQLite; the batch test runs the embedded worker against the
loopback servers.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lewis_tasks.domain.httpfetch import HttpOutcome, Timings
from lewis_tasks.errors import InvalidInput, StorageError
from lewis_tasks.infra import aio, config, rowwriter
from lewis_tasks.infra.runtime import runtime
from lewis_tasks.producer.base import submit
from lewis_tasks.producer.http import submit_http_batch
from lewis_tasks.tasks.http import ROW_WRITER_ROWS
from tests.support.httpservers import ServerThread, sha256_of

WAIT = 60


def outcome(index: int, **changes: Any) -> HttpOutcome:
    fields: dict[str, Any] = {
        "status": 200,
        "bytes": 3,
        "sha256": "ab" * 32,
        "timings": Timings(None, 0.2, 0.3, 0.6),
        "headers": (("server", "test"),),
    }
    fields.update(changes)
    return HttpOutcome(index, f"http://127.0.0.1/{index}", "GET", **fields)


def new_batch(batch_id: str, total: int) -> None:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.http import save_http_batch

    with session_scope(get_engine()) as session:
        save_http_batch(session, batch_id, total=total)


def counters(batch_id: str) -> tuple[int, int, int]:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.http import get_http_batch

    with session_scope(get_engine()) as session:
        batch = get_http_batch(session, batch_id)
        assert batch is not None
        return batch.done, batch.ok, batch.failed


@pytest.fixture
def writer(lewis_settings: Any) -> Iterator[rowwriter.RowWriter]:
    made = rowwriter.RowWriter(lewis_settings.database, ROW_WRITER_ROWS)
    yield made
    made.close()


def writer_pid(made: rowwriter.RowWriter) -> int:
    assert made._proc is not None
    return made._proc.pid


def test_rows_are_stored_by_the_writer_process_once_each(writer: rowwriter.RowWriter) -> None:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.http import get_http_results

    new_batch("w-once", 4)
    # When three outcomes are stored, then again with one more
    first = writer.store(
        "w-once",
        10,
        [outcome(0), outcome(1, error="timeout", status=None, message="no answer"), outcome(2)],
    )
    second = writer.store("w-once", 10, [outcome(2), outcome(3)])
    # Then each row went in once, from another process, counters moved by new rows only
    assert (first, second) == (3, 1)
    assert writer_pid(writer) != os.getpid()
    assert counters("w-once") == (4, 3, 1)
    with session_scope(get_engine()) as session:
        rows = get_http_results(session, "w-once")
        assert [r.idx for r in rows] == [10, 11, 12, 13]
        assert rows[0].timings == {
            "dns_ms": None,
            "connect_ms": 0.2,
            "ttfb_ms": 0.3,
            "total_ms": 0.6,
        }
        assert rows[0].headers == {"server": "test"} and rows[0].redirects == []
        assert (rows[1].error_class, rows[1].error, rows[1].status) == (
            "timeout",
            "no answer",
            None,
        )


def test_a_writer_that_died_is_started_again_and_nothing_is_stored_twice(
    writer: rowwriter.RowWriter,
) -> None:
    new_batch("w-died", 6)
    assert writer.store("w-died", 0, [outcome(i) for i in range(3)]) == 3
    # Given the writer process killed between two flushes
    old = writer_pid(writer)
    os.kill(old, signal.SIGKILL)
    time.sleep(0.2)
    # When the next flush (overlapping the last one) is stored
    assert writer.store("w-died", 0, [outcome(i) for i in range(2, 6)]) == 3
    # Then a new writer took it, and every row counts once
    assert writer_pid(writer) != old
    assert counters("w-died") == (6, 6, 0)


def test_a_failed_write_is_a_storage_error_and_the_writer_goes_on(
    writer: rowwriter.RowWriter,
) -> None:
    new_batch("w-error", 1)
    assert writer.store("w-error", 0, [outcome(0)]) == 1
    pid = writer_pid(writer)
    # When a flush names a batch the database does not have (its foreign key refuses it)
    with pytest.raises(StorageError, match="row writer: database error.*FOREIGN KEY"):
        writer.store("no-such-batch", 0, [outcome(0)])
    # Then the same writer process serves the next flush
    new_batch("w-error-2", 1)
    assert writer.store("w-error-2", 0, [outcome(0)]) == 1
    assert writer_pid(writer) == pid


def test_the_writer_exits_when_its_pipe_closes(writer: rowwriter.RowWriter) -> None:
    new_batch("w-close", 1)
    writer.store("w-close", 0, [outcome(0)])
    proc = writer._proc
    assert proc is not None and proc.poll() is None
    writer.close()
    assert proc.wait(10) == 0


def test_frames_that_are_cut_or_oversized_are_refused() -> None:
    header = struct.Struct(">I")
    with pytest.raises(EOFError, match="inside a frame header"):
        rowwriter._read_frame(io.BytesIO(b"\x00\x00"))
    with pytest.raises(EOFError, match="inside a frame"):
        rowwriter._read_frame(io.BytesIO(header.pack(10) + b"abc"))
    with pytest.raises(InvalidInput, match="over the"):
        rowwriter._read_frame(io.BytesIO(header.pack(rowwriter.MAX_FRAME + 1)))
    assert rowwriter._read_frame(io.BytesIO(b"")) is None
    out = io.BytesIO()
    rowwriter.serve(io.BytesIO(b""), out)  # a pipe closed before its first frame: done
    assert out.getvalue() == b""


def test_the_writer_stores_with_what_the_task_names() -> None:
    from lewis_tasks.storage.http import http_rows

    assert rowwriter.resolve_rows(ROW_WRITER_ROWS) is http_rows
    with pytest.raises(InvalidInput, match="module:function"):
        rowwriter.RowWriter(config.DatabaseSettings(url="sqlite://"), "no_colon")


# --- through the worker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_server(serve: ServerThread) -> ServerThread:
    serve.start("app", "127.0.0.1")
    return serve


@pytest.fixture
def with_writer(lewis_settings: Any) -> Iterator[None]:
    config.set_settings(config.replace_section(lewis_settings, "http", row_writer=True))
    aio.shutdown()
    try:
        yield
    finally:
        rowwriter.close_row_writer()
        config.set_settings(lewis_settings)
        aio.shutdown()


def test_a_batch_with_the_row_writer_is_stored_like_any_other(
    celery_worker: Any, app_server: ServerThread, with_writer: None
) -> None:
    base = app_server.servers[0].url
    urls: list[Any] = [
        f"{base}/bytes/512",
        f"{base}/status/404",
        f"{base}/redirect/2",
        "not a url",
        {"url": f"{base}/echo", "method": "POST", "body": "hi"},
    ]
    # When a batch runs with http.row_writer on
    handle = submit_http_batch(urls)
    summary = handle.wait(timeout=WAIT)
    # Then every row is there, stored by this process's writer, counted once
    assert (summary["total"], summary["done"], summary["ok"], summary["failed"]) == (5, 5, 4, 1)
    rows = handle.result()
    assert [r["index"] for r in rows] == list(range(5))
    assert (rows[0]["status"], rows[0]["bytes"], rows[0]["sha256"]) == (200, 512, sha256_of(512))
    assert len(rows[2]["redirects"]) == 2 and rows[3]["error_class"] == "invalid_url"
    writer = runtime()._row_writer
    assert writer is not None and writer._proc is not None and writer._proc.poll() is None
    # And a chunk delivered again stores nothing new
    again = submit("lewis.http.fetch_chunk", args=[handle.id, 0, urls, {"total": 5}]).wait(
        timeout=WAIT
    )
    assert again["new"] == 0 and handle.progress()["done"] == 5
