"""One persistent asyncio event loop per worker process, and one aiohttp session on it.

Celery has no asyncio pool, and ``asyncio.run()`` per task throws away the loop together with
every client bound to it. Instead each process runs ONE loop in a daemon thread, created on
first use and held by the process's runtime (:mod:`lewis_tasks.infra.runtime`); tasks (from
any pool thread) hand it coroutines with :func:`run`. Concurrency within a task comes from
gather/semaphores on that loop; with the threads pool, tasks of several threads share it too.
A forked child's runtime starts a loop of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class LoopRuntime:
    """An event loop running forever in a daemon thread, plus the objects that live on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._session: Any = None
        self._session_lock: asyncio.Lock | None = None
        self.thread = threading.Thread(target=self._run, name="lewis-aio-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            # Timeout, soft time limit, Ctrl-C…: the task is over, so is its coroutine. Left
            # running on the shared loop it would keep scanning or fetching after a retry.
            future.cancel()
            raise

    async def session(self) -> Any:
        """The process's aiohttp session, created on first use with the scope-guarded connector."""
        if self._session is None or self._session.closed:
            if self._session_lock is None:
                self._session_lock = asyncio.Lock()
            async with self._session_lock:
                if self._session is None or self._session.closed:
                    self._session = await _new_session()
        return self._session

    def close(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return

        async def _close() -> None:
            if self._session is not None and not self._session.closed:
                await self._session.close()

        if self.thread.is_alive():
            try:
                self.run(_close(), timeout)
            except Exception as exc:  # closing is best effort on the way out
                log.debug("closing the aiohttp session: %s", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)


async def _new_session() -> Any:
    from ..domain.httpclient import create_session
    from ..domain.scope import Scope
    from .config import get_settings

    s = get_settings()
    # The session serves batch URLs, each ended by its budget (≤ http.timeout): a read
    # timeout at least that long never fires first, and costs a timer per read on the loop.
    read_timeout = s.network.read_timeout if s.network.read_timeout < s.http.timeout else None
    return create_session(
        Scope.from_allow(s.scope.allow),
        max_connections=s.network.max_connections,
        limit_per_host=s.network.limit_per_host,
        connect_timeout=s.network.connection_timeout,
        read_timeout=read_timeout,
        keep_alive=s.network.keep_alive,
    )


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on this process's persistent loop and return its result."""
    from .runtime import runtime

    return runtime().run(coro, timeout)


def shutdown() -> None:
    """Stop this process's loop and close its session; the next :func:`run` starts them anew
    (with the settings of then)."""
    from .runtime import runtime

    runtime().close_loop()
