"""Progress lines in Redis, written off the event loop: one writer for scans and HTTP work.

A long chunk or load-test part publishes how far it has come into a Redis hash field that
producers read for their progress bars. The work runs on the io loop every task of the process
shares, so publishing must never block it and never fail the work it reports on.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import redis

log = logging.getLogger(__name__)

# Where progress lives; the tasks write these hashes and the producers' handles read them.
SCAN_LIVE_KEY = "lewis:scan:{scan_id}:live"  # hash: chunk index → "ports done,open so far"
LOADTEST_PROGRESS_KEY = "lewis:loadtest:{run}:progress"  # hash: part → its last line (JSON)


class ProgressWriter:
    """One field of a Redis hash kept at the latest progress line, written off the event loop.

    :meth:`publish` is called on the io loop every task of the process shares, so it never
    blocks and never raises: the HSET goes to ``executor`` (the process's one-thread progress
    publisher), a line still waiting there is
    replaced rather than queued behind, and a failed write is logged once — a progress line
    must never stall the loop nor fail the work it reports on.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        field: str,
        ttl: int,
        executor: concurrent.futures.Executor,
    ) -> None:
        self._client, self._key, self._field, self._ttl = client, key, field, ttl
        self._executor = executor
        self._lock = threading.Lock()
        self._line: str | None = None  # the newest line not yet handed to Redis
        self._queued = False  # a write of ``_line`` is waiting in the executor
        self._failed = False

    def publish(self, line: Mapping[str, Any] | str) -> None:
        """Write ``line`` (a mapping as JSON, text as is) soon, from any thread; returns at once."""
        text = line if isinstance(line, str) else json.dumps(line)
        with self._lock:
            self._line = text
            if self._queued:
                return
            self._queued = True
        try:
            self._executor.submit(self._write)
        except RuntimeError as exc:  # the executor shut down: the process is on its way out
            log.debug("progress %s[%s] not published: %s", self._key, self._field, exc)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the lines published so far (call it off the loop)."""
        try:
            self._executor.submit(_nothing).result(timeout)  # one thread: runs after them
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.debug(
                "progress %s[%s] still being written after %g s", self._key, self._field, timeout
            )

    def _write(self) -> None:
        with self._lock:
            text, self._line, self._queued = self._line, None, False
        if text is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(self._key, self._field, text)
            pipe.expire(self._key, self._ttl)
            pipe.execute()
        except Exception as exc:  # logged here: a future nobody reads would swallow it
            if not self._failed:
                self._failed = True
                log.warning(
                    "progress %s[%s] not published (%s); the work goes on, further "
                    "failures are logged at debug level",
                    self._key,
                    self._field,
                    exc,
                )
            else:
                log.debug("progress %s[%s] not published: %s", self._key, self._field, exc)


def _nothing() -> None:
    return None
