"""A batch's per-URL rows written by a helper process, so the io process only fetches.

An io worker process runs every fetch on one event loop, and that loop needs the GIL. Writing
rows in the same process (building each row, binding its parameters, the transaction) took
that GIL from the loop for ~15 % of the process's time. Handing the work to a Celery task
cost more than it saved: a message envelope, events, a result and a pool hand-off per flush
(~20 µs per row on a machine whose cores were already busy).

So each io worker process starts ONE writer process (``python -m lewis_tasks.infra.rowwriter``)
on first use and talks to it over a pipe: length-prefixed JSON frames (orjson, no pickle).
The io side encodes a flush's outcomes in one C call and waits for the reply on its chunk
thread; the writer decodes them, stores them with the same repository the task would store
with, and answers how many rows were new, so exactly-once counters, progress and the chunk's
result are what they were. Infra does not import storage: the task names that repository by
import path (``module:function``, a function of an Engine giving a
:class:`~lewis_tasks.infra.batchfetch.ChunkRows`: storage/http.py's ``http_rows``), and the
writer resolves it once at start. The writer reads nothing but its pipe and exits when the pipe closes (its worker
process ended) or on a frame it cannot parse.

Failures stay per call: an error in the writer comes back as :class:`StorageError` with its
message and the writer goes on; a writer that died is started again once for the same call
(storing is idempotent, so a half-written flush is safe to send twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

import orjson

from ..domain.httpfetch import HttpOutcome, decode_outcomes, encode_outcomes
from ..errors import DatabaseConflict, DatabaseUnavailable, InvalidInput, LewisError, StorageError
from .config import DatabaseSettings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .batchfetch import ChunkRows

_HEADER = struct.Struct(">I")  # frame length, big-endian
MAX_FRAME = 256 << 20  # a flush of a 100k-URL chunk with long URLs stays far below


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at a clean end of the stream."""
    head = stream.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise EOFError("the pipe closed inside a frame header")
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise InvalidInput(f"a frame of {size} bytes is over the {MAX_FRAME}-byte cap")
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the pipe closed inside a frame")
    return payload


# the writer's StorageErrors, by name, so a transient one stays a TransientError here
_KINDS: dict[str, type[StorageError]] = {
    kind.__name__: kind for kind in (StorageError, DatabaseUnavailable, DatabaseConflict)
}


class RowWriter:
    """The io process's side: one writer process, shared by the process's chunk threads.

    ``rows`` names (``module:function``) what the writer stores with: see the module's doc."""

    def __init__(self, database: DatabaseSettings, rows: str) -> None:
        check_rows_path(rows)
        self.database = database
        self.rows = rows
        self._lock = threading.Lock()  # one request on the pipe at a time
        self._proc: subprocess.Popen[bytes] | None = None

    def store(self, batch_id: str, start: int, outcomes: Sequence[HttpOutcome]) -> int:
        """Store ``outcomes`` (indexes from ``start``); how many rows were new."""
        # a line of JSON for the batch, then the outcomes as they encode (no JSON in JSON)
        request = (
            orjson.dumps({"batch_id": batch_id, "start": start}) + b"\n" + encode_outcomes(outcomes)
        )
        with self._lock:
            try:
                reply = self._call(request)
            except (OSError, EOFError, ValueError) as exc:  # the writer died: once more, anew
                self._stop()
                try:
                    reply = self._call(request)
                except (OSError, EOFError, ValueError) as again:
                    self._stop()
                    raise StorageError(
                        f"the row writer process failed twice: {exc}; {again}"
                    ) from again
        if "error" in reply:  # a passing failure stays one (the task retries it)
            raise _KINDS.get(reply.get("kind", ""), StorageError)(f"row writer: {reply['error']}")
        return int(reply["new"])

    def _call(self, request: bytes) -> dict[str, Any]:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        _write_frame(proc.stdin, request)
        payload = _read_frame(proc.stdout)
        if payload is None:
            raise EOFError(f"the row writer exited (code {proc.poll()})")
        reply = orjson.loads(payload)
        if not isinstance(reply, dict):
            raise ValueError(f"the row writer answered {reply!r}")
        return reply

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._stop()  # a writer that died: its pipes closed before the next one starts
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lewis_tasks.infra.rowwriter"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            assert self._proc.stdin is not None
            _write_frame(
                self._proc.stdin,
                orjson.dumps({"database": dataclasses.asdict(self.database), "rows": self.rows}),
            )
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a pipe whose reader is gone already
                    stream.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the writer: its pipe closes, it finishes the request in hand and exits."""
        with self._lock:
            self._stop()


def row_writer(database: DatabaseSettings, rows: str) -> RowWriter:
    """This process's writer for ``database`` storing with ``rows`` (the runtime's; a new one
    after a settings change)."""
    from .runtime import runtime

    return runtime().row_writer(database, rows)


def close_row_writer() -> None:
    from .runtime import runtime

    runtime().close_row_writer()


def check_rows_path(path: str) -> str:
    """``path`` if it has the ``module:function`` form, else InvalidInput."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise InvalidInput(f"the row writer's rows must be 'module:function', not {path!r}")
    return path


def resolve_rows(path: str) -> Callable[[Engine], ChunkRows]:
    """The function ``path`` (``module:function``) names."""
    module, _, name = check_rows_path(path).partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise InvalidInput(f"the row writer's rows {path!r} is not callable")
    return cast("Callable[[Engine], ChunkRows]", found)


# --- the writer process ----------------------------------------------------------------------


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """Answer store requests from ``inp`` until it closes; the first frame is the database and
    the ``module:function`` that makes the repository it stores with."""
    from .database import get_engine

    first = _read_frame(inp)
    if first is None:
        return
    start = orjson.loads(first)
    database = DatabaseSettings(**start["database"])
    rows = resolve_rows(start["rows"])(get_engine(database))
    while (payload := _read_frame(inp)) is not None:
        try:
            head, _, outcomes = payload.partition(b"\n")
            request = orjson.loads(head)
            stored = decode_outcomes(outcomes)
            new = rows.store(request["batch_id"], request["start"], stored)
            reply: dict[str, Any] = {"new": new}
        except Exception as exc:  # answered, not fatal: the next request may well succeed
            reply = {
                "error": str(exc)
                if isinstance(exc, LewisError)
                else f"{type(exc).__name__}: {exc}",
                "kind": type(exc).__name__,
            }
        _write_frame(out, orjson.dumps(reply))


def main() -> None:
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
