"""The worker runtime: everything a process keeps between tasks, in one object.

A worker process builds ONE :class:`WorkerRuntime` when it starts (``worker_init`` in the main
process, ``worker_process_init`` in each prefork child; see :mod:`lewis_tasks.infra.signals`)
and closes it at shutdown. It holds the event loop thread and its aiohttp session and fetch
pool, the Redis clients, the database engines, the cache, the row writer, the scan executors,
the metrics reporter and the little bookkeeping tasks share (batches created, slot caches).
Tasks reach it one way: :func:`runtime`.

Outside a worker (CLI, producers, tests) the same :func:`runtime` builds one for the current
process on first use, and again after a fork: a child must never use its parent's sockets,
engines or loop thread. Apart from this object and the settings cache (``config._settings``)
the package keeps no module-level mutable state.

Each resource is made on first use, from the settings of that moment, so a process that never
fetches starts no loop thread and one that never queries opens no engine.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from ..domain.connectloop import Turns
from .aio import LoopRuntime
from .config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ..domain.httpfetch import FetchPool
    from .alerting import SlotCache
    from .cache import Cache
    from .config import DatabaseSettings
    from .reporter import MetricsReporter
    from .rowwriter import RowWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

SAVED_BATCHES = 256  # batch rows this process remembers having created


@dataclass
class ScanSlots:
    """What a scanning process keeps: a thread pool the connect loops run in (sized to the io
    pool's slots, so a chunk never queues behind others and eats its budget waiting), a
    one-thread publisher for live progress, the chunks running here (they share
    ``scan.concurrency``), whether the soft RLIMIT_NOFILE was lifted already, and the turn
    their connect loops take to launch connects (:class:`~lewis_tasks.domain.connectloop.Turns`),
    and the lock its chunks record a planned scan under."""

    executor: ThreadPoolExecutor
    publisher: ThreadPoolExecutor
    active: int = 0
    fd_raised: bool = False
    turns: Turns = field(default_factory=Turns)  # the connect loops launch in turns
    # a scan's first chunks arrive together and each would record the scan from its plan;
    # in turn, only the first of this process writes and the rest find the plan recorded
    recording: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.publisher.shutdown(wait=False)


@dataclass
class Presence:
    """The worker's side of the fleet (infra/fleet_worker.py): draining or not, the queues it
    consumed before a drain, and its own short-timeout Redis client."""

    draining: bool = False
    queues: tuple[str, ...] = ()
    client: redis.Redis | None = None


@dataclass(eq=False)  # one per process: compared by identity
class WorkerRuntime:
    """One process's long-lived resources; build with :func:`start_runtime` or :func:`runtime`."""

    role: str = "command"  # sizes the database pools (infra/database.py ROLE_POOLS)
    hostname: str = ""  # the worker's name (metrics labels), "" outside a worker
    pid: int = field(default_factory=os.getpid)
    reporter: MetricsReporter | None = None
    presence: Presence = field(default_factory=Presence)
    slot_caches: dict[str, SlotCache] = field(default_factory=dict)
    tasks_since_gc_check: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _loop: LoopRuntime | None = field(default=None, repr=False)
    _fetch_pool: FetchPool | None = field(default=None, repr=False)  # loop thread only
    _redis: dict[str, redis.Redis] = field(default_factory=dict, repr=False)
    _engines: dict[str, Engine] = field(default_factory=dict, repr=False)
    _cache: Cache | None = field(default=None, repr=False)
    _row_writer: RowWriter | None = field(default=None, repr=False)
    _scan: ScanSlots | None = field(default=None, repr=False)
    _saved_batches: deque[str] = field(
        default_factory=lambda: deque(maxlen=SAVED_BATCHES), repr=False
    )

    # --- the event loop, its session and fetch pool -------------------------------------------

    @property
    def loop_runtime(self) -> LoopRuntime:
        """The process's one event loop thread (started on first use)."""
        with self._lock:
            if self._loop is None:
                self._loop = LoopRuntime()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the process's loop and wait for its result (from any other thread)."""
        return self.loop_runtime.run(coro, timeout)

    async def fetch_pool(self) -> FetchPool:
        """The process's one FetchPool on its one session (call on the loop): the chunks
        running in this process share ``network.max_connections`` fetchers, first chunk first."""
        from ..domain.httpfetch import FetchPool

        session = await self.loop_runtime.session()
        pool = self._fetch_pool
        if pool is None or pool.session is not session:  # first use, or a new session
            settings = get_settings()
            pool = self._fetch_pool = FetchPool(
                session,
                concurrency=settings.network.max_connections,
                max_body_bytes=settings.http.max_body_bytes,
                max_redirects=settings.http.max_redirects,
                retries=settings.http.retries,
                max_url_length=settings.http.max_url_length,
            )
        return pool

    def close_loop(self) -> None:
        """Stop the loop thread and close its session (the next use starts them anew, with the
        settings of then)."""
        with self._lock:
            loop, self._loop = self._loop, None
            self._fetch_pool = None
        if loop is not None:
            loop.close()

    # --- Redis -------------------------------------------------------------------------------

    def redis(self, url: str | None = None, *, timeout: float | None = None) -> redis.Redis:
        """A pooled client for ``url`` (default: the broker's Redis), private to this process."""
        settings = get_settings()
        url = url or settings.broker.url
        with self._lock:
            client = self._redis.get(url)
            if client is None:
                timeout = timeout or settings.broker.connect_timeout
                client = self._redis[url] = redis.Redis.from_url(
                    url,
                    socket_timeout=max(timeout, 5.0),
                    socket_connect_timeout=timeout,
                    max_connections=settings.broker.max_connections,
                    health_check_interval=25,
                )
            return client

    def forget_redis(self) -> None:
        """Drop every client (settings changed: the next use connects anew)."""
        with self._lock:
            self._redis.clear()

    # --- the database ------------------------------------------------------------------------

    def engine(
        self, database: DatabaseSettings, make: Callable[[DatabaseSettings, str], Engine]
    ) -> Engine:
        """This process's engine for ``database``, made by ``make(database, role)`` once."""
        with self._lock:
            engine = self._engines.get(database.url)
            if engine is None:
                engine = self._engines[database.url] = make(database, self.role)
            return engine

    def dispose_engines(self, *, close: bool = True) -> None:
        """Drop every engine; ``close=False`` leaves the sockets to the process that owns them
        (a forked child's inherited pools)."""
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.dispose(close=close)

    # --- the cache and the row writer --------------------------------------------------------

    @property
    def cache(self) -> Cache:
        """The process's cache, built from the settings on first use."""
        with self._lock:
            if self._cache is None:
                from .cache import Cache

                self._cache = Cache.from_settings(get_settings())
            return self._cache

    def forget_cache(self) -> None:
        with self._lock:
            self._cache = None

    def row_writer(self, database: DatabaseSettings, rows: str) -> RowWriter:
        """The process's row writer for ``database``, storing with ``rows`` (``module:function``,
        see infra/rowwriter.py); a new one after a settings change."""
        with self._lock:
            writer = self._row_writer
            if writer is None or writer.database != database or writer.rows != rows:
                from .rowwriter import RowWriter

                if writer is not None:
                    writer.close()
                writer = self._row_writer = RowWriter(database, rows)
            return writer

    def close_row_writer(self) -> None:
        with self._lock:
            writer, self._row_writer = self._row_writer, None
        if writer is not None:
            writer.close()

    # --- scanning ----------------------------------------------------------------------------

    @property
    def scan(self) -> ScanSlots:
        """The scan executor and progress publisher (made on first use)."""
        with self._lock:
            if self._scan is None:
                from .planning import io_slots

                slots = io_slots(get_settings())
                self._scan = ScanSlots(
                    ThreadPoolExecutor(slots + 1, thread_name_prefix="lewis-scan"),
                    ThreadPoolExecutor(1, thread_name_prefix="lewis-progress"),
                )
            return self._scan

    @contextmanager
    def running_chunk(self) -> Iterator[int]:
        """Count a scan chunk among the running ones (lifting RLIMIT_NOFILE the first time);
        yields how many run now."""
        scan = self.scan
        with self._lock:
            if not scan.fd_raised:
                raise_fd_limit()
                scan.fd_raised = True
            scan.active += 1
            running = scan.active
        try:
            yield running
        finally:
            with self._lock:
                scan.active -= 1

    # --- batches this process created --------------------------------------------------------

    def batch_saved(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self._saved_batches

    def note_batch_saved(self, batch_id: str) -> None:
        with self._lock:
            self._saved_batches.append(batch_id)

    # --- the end -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the reporter, the loop, the writer and the executors; close clients and engines."""
        reporter, self.reporter = self.reporter, None
        if reporter is not None:
            reporter.stop()
        self.close_loop()
        self.close_row_writer()
        with self._lock:
            scan, self._scan = self._scan, None
            cache, self._cache = self._cache, None
            clients = list(self._redis.values())
            self._redis.clear()
            presence, self.presence = self.presence.client, Presence()
        if scan is not None:
            scan.close()
        if cache is not None:
            _quietly(cache.close)
        for client in clients:
            _quietly(client.close)
        if presence is not None:
            _quietly(presence.close)
        self.dispose_engines()

    def abandon(self) -> None:
        """Let go of what a forked child inherited, touching none of the parent's sockets:
        its threads do not exist here, and its pooled connections are the parent's."""
        self._lock = threading.RLock()  # the fork may have copied it held by another thread
        self.reporter = None
        self._loop = None
        self._fetch_pool = None
        self._row_writer = None  # its pipe belongs to the parent's writer
        self._scan = None
        self._cache = None
        self._redis = {}
        self.presence = Presence()
        self.dispose_engines(close=False)


def raise_fd_limit() -> tuple[int, int]:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit (the scanner keeps its in-flight
    connects under the free descriptors − 64, so the soft limit bounds its speed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep what we have
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception as exc:  # closing is best effort on the way out
        log.debug("closing %r: %s", close, exc)


# --- the process's runtime ---------------------------------------------------------------------


class _Holder:
    """The one slot the process's runtime lives in (with its lock, replaced after a fork: a
    fork may copy it held by another thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: WorkerRuntime | None = None

    def after_fork(self) -> None:
        """In a forked child: a runtime of its own, with the parent's role and name and none
        of its resources."""
        self.lock = threading.Lock()
        inherited, self.current = self.current, None
        if inherited is not None:
            inherited.abandon()
            self.current = WorkerRuntime(role=inherited.role, hostname=inherited.hostname)


_holder = _Holder()
os.register_at_fork(after_in_child=_holder.after_fork)


def runtime() -> WorkerRuntime:
    """This process's runtime: the worker's, or one built on first use (and after a fork)."""
    # Every io task and every reporter signal asks: no lock once it exists (in an io worker's
    # profile, its 100 threads queued on the lock took 4 % of the GIL's time).
    current = _holder.current
    if current is not None and current.pid == os.getpid():
        return current
    with _holder.lock:
        current = _holder.current
        if current is None or current.pid != os.getpid():
            if current is not None:
                current.abandon()
            current = _holder.current = WorkerRuntime()
        return current


def start_runtime(role: str = "command", hostname: str = "") -> WorkerRuntime:
    """Build this process's runtime (a worker's start): what an inherited or earlier one held
    is let go first."""
    with _holder.lock:
        old, _holder.current = _holder.current, None
    if old is not None:
        if old.pid == os.getpid():
            old.close()
        else:
            old.abandon()
    rt = WorkerRuntime(role=role, hostname=hostname)
    with _holder.lock:
        _holder.current = rt
    return rt


def close_runtime() -> None:
    """Close this process's runtime (shutdown; tests). The next :func:`runtime` builds anew."""
    with _holder.lock:
        rt, _holder.current = _holder.current, None
    if rt is not None and rt.pid == os.getpid():
        rt.close()


__all__ = [
    "WorkerRuntime",
    "ScanSlots",
    "Presence",
    "runtime",
    "start_runtime",
    "close_runtime",
    "raise_fd_limit",
]
