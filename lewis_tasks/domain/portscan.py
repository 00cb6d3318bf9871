"""TCP connect scan: exact under load, and as fast as ``nmap -sT`` on loopback.

The connect loop is plain non-blocking sockets on one ``epoll``, run in a worker thread of the
caller's event loop (:func:`scan_ports`) or inline (:func:`scan_ports_blocking`). Per port:
``socket(SOCK_NONBLOCK)``, ``connect`` (EINPROGRESS), then a second ``connect`` at once — on
Linux it reports the state the first one reached meanwhile: 0 (open), ECONNREFUSED (closed) or
EALREADY (still waiting). On loopback nearly every port is settled by that second call, so it
never touches epoll; only the ports still waiting are registered and count as in flight.

Exactness, as tested properties:

* **No false opens from self-connects.** Connecting to a port in the ephemeral range of the
  scanning host, the kernel may pick that very port as the local one: TCP simultaneous open then
  "connects" the socket to itself. Every open is checked (local address == remote address) and
  such a port is probed again from a fresh socket. Two of our sockets connected to each other
  (local X → Y and local Y → X) are found the same way and probed again one by one.
* **No missed ports under load.** In-flight work is bounded (``concurrency``, also clamped to
  the free file descriptors), and a socket only times out if its deadline had passed *before*
  the epoll wait that found it still silent — so a starved loop cannot turn a late answer into
  a false timeout. A real timeout is retried ``retries`` times with a fresh socket.

Measured here (2 shared cores, all 65,535 ports of 127.0.0.1, one process, single runs):

* this loop in a worker thread under :func:`scan_ports`: 1.08–1.22 s, 54–60k ports/s, exact;
  the event loop it runs beside stalled at most 4.6 ms (the GIL switch interval);
* the same double-connect loop on the event loop thread (``loop.add_writer`` for the
  sockets still waiting, ``call_later`` timeouts, yielding every 128 / 1024 ports):
  1.31 / 1.26 s, 50–52k ports/s, but it stalls the event loop 28 / 68 ms at a time;
* ``nmap -sT -p- -T4 -n -Pn 127.0.0.1`` in the same minutes: 2.9 s (1.3–2.2 s in ANCHORS.md);
* socket() + connect + connect + close alone: 50–60k/s through ``_socket.socket``, 44k/s
  through ``socket.socket`` — the Python wrapper is the one cost worth cutting.

So the thread variant is kept: as fast or faster, and the event loop stays responsive.

Limiter protocol (nmap ``--max-rate``): ``limiter.acquire(n) -> (granted, wait)`` grants up
to ``n`` connect permits now and says how many seconds until the rest may be available; it is
called from the scanning thread (a blocking Redis call is fine there). Retries and re-probes
consume permits like first connects.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import select
import socket
import struct
import threading
import time
from _socket import socket as _RawSocket  # the type socket.socket wraps; see _open_socket
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidInput, TransientError
from .scope import IPAddress, Scope

OPEN, CLOSED, FILTERED = "open", "closed", "filtered"
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_LINGER_RST = struct.pack("ii", 1, 0)  # close → RST: no TIME_WAIT here, no half-open peer
# Errors that say "this machine is out of something", not anything about the target.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                              errno.EADDRNOTAVAIL, errno.EAGAIN})
_FD_HEADROOM = 64  # descriptors left for the rest of the process (Redis, logs, sessions)
_RESOURCE_GIVE_UP = 5.0  # seconds of nothing but resource errors before failing the scan
_MAX_REPROBES = 3  # self-connect re-probes of one port before calling it closed
_STOP_CHECK = 0.1  # seconds between looks at the stop flag while waiting


class ConnectLimiter(Protocol):
    """Rate limit on connects, e.g. a Redis token bucket shared by every worker."""

    def acquire(self, n: int) -> tuple[int, float]:
        """Up to ``n`` permits now, and seconds to wait before asking for more."""
        ...


@dataclass(frozen=True)
class ScanProgress:
    """Ports settled so far out of ``total``, and how many of them are open."""

    address: str
    done: int
    total: int
    open: int

    def to_dict(self) -> dict[str, object]:
        return {"address": self.address, "done": self.done, "total": self.total,
                "open": self.open}


@dataclass(frozen=True)
class PortScanResult:
    """The state of every scanned port: open and filtered listed, the rest closed."""

    address: str
    ports_total: int
    open: tuple[int, ...]
    filtered: tuple[int, ...]
    closed_count: int
    retried: int  # connects re-tried after a timeout
    self_connects: int  # false opens caught and re-probed
    seconds: float

    def state_of(self, port: int) -> str:
        """open / filtered / closed for a port of this scan."""
        if port in self.open:
            return OPEN
        return FILTERED if port in self.filtered else CLOSED

    @property
    def ports_per_second(self) -> float:
        return self.ports_total / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"address": self.address, "ports_total": self.ports_total,
                "open": list(self.open), "filtered": list(self.filtered),
                "closed_count": self.closed_count, "retried": self.retried,
                "self_connects": self.self_connects, "seconds": round(self.seconds, 4)}


async def scan_ports(address: str | IPAddress, ports: Iterable[int], *, scope: Scope,
                     concurrency: int = 4096, timeout: float = 1.0, retries: int = 1,
                     limiter: ConnectLimiter | None = None,
                     on_progress: Callable[[ScanProgress], None] | None = None,
                     progress_interval: float = 0.25,
                     executor: Executor | None = None) -> PortScanResult:
    """Connect-scan ``ports`` of ``address`` from a worker thread; the event loop stays free.

    The address is checked by ``scope`` first (OutOfScope before any packet). ``on_progress``
    runs on the event loop. Cancelling the awaiting task stops the scan within one epoll wait.
    """
    loop = asyncio.get_running_loop()
    checked = scope.check_address(address)
    report = None
    if on_progress is not None:
        def report(progress: ScanProgress) -> None:
            loop.call_soon_threadsafe(on_progress, progress)
    stop = threading.Event()
    job = _ConnectLoop(checked, ports, concurrency=concurrency, timeout=timeout,
                       retries=retries, limiter=limiter, on_progress=report,
                       progress_interval=progress_interval, stop=stop)
    try:
        return await loop.run_in_executor(executor, job.run)
    except asyncio.CancelledError:
        stop.set()  # the thread notices within one epoll wait and closes its sockets
        raise


def scan_ports_blocking(address: str | IPAddress, ports: Iterable[int], *, scope: Scope,
                        concurrency: int = 4096, timeout: float = 1.0, retries: int = 1,
                        limiter: ConnectLimiter | None = None,
                        on_progress: Callable[[ScanProgress], None] | None = None,
                        progress_interval: float = 0.25) -> PortScanResult:
    """:func:`scan_ports` on the calling thread (CLI, benchmarks, sync callers)."""
    checked = scope.check_address(address)
    return _ConnectLoop(checked, ports, concurrency=concurrency, timeout=timeout,
                        retries=retries, limiter=limiter, on_progress=on_progress,
                        progress_interval=progress_interval).run()


def is_self_connect(sock: socket.socket) -> bool:
    """True if ``sock`` is connected to itself (TCP simultaneous open on one port)."""
    try:
        return bool(sock.getsockname()[:2] == sock.getpeername()[:2])
    except OSError:
        return False


def _open_socket(family: int) -> _RawSocket:
    # The C socket type without socket.socket's Python wrapper: measured 60k vs 44k
    # socket+connect+connect+close per second here. Also the self-connect test's seam.
    return _RawSocket(family, _STREAM_NONBLOCK)


def free_descriptors() -> int:
    """File descriptors this process may still open (soft limit minus those in use)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a modest count in use
        used = 64
    return max(0, soft - used)


class _Stopped(Exception):
    """The awaiting task was cancelled; nobody reads this result."""


class _Waiting:
    __slots__ = ("sock", "port", "deadline")

    def __init__(self, sock: _RawSocket, port: int, deadline: float) -> None:
        self.sock, self.port, self.deadline = sock, port, deadline


class _ConnectLoop:
    """One scan of one address: the epoll loop and its bookkeeping."""

    def __init__(self, address: IPAddress, ports: Iterable[int], *, concurrency: int,
                 timeout: float, retries: int, limiter: ConnectLimiter | None,
                 on_progress: Callable[[ScanProgress], None] | None,
                 progress_interval: float, stop: threading.Event | None = None) -> None:
        if concurrency < 1 or timeout <= 0 or retries < 0:
            raise InvalidInput(f"scan parameters: concurrency {concurrency} must be ≥ 1, "
                               f"timeout {timeout} > 0, retries {retries} ≥ 0")
        self.address = str(address)
        self.family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self.ports = sorted(set(ports))
        for port in (self.ports[0], self.ports[-1]) if self.ports else ():
            if not 1 <= port <= 65535:
                raise InvalidInput(f"port {port}: ports run from 1 to 65535")
        self.max_limit = max(1, min(concurrency, free_descriptors() - _FD_HEADROOM))
        self.limit = self.max_limit
        self.timeout, self.retries = timeout, retries
        self.limiter, self.on_progress = limiter, on_progress
        self.progress_interval, self.stop = progress_interval, stop
        self.pending: deque[int] = deque(self.ports)
        self.waiting: dict[int, _Waiting] = {}  # fd → socket still connecting
        self.expiry: deque[_Waiting] = deque()  # same objects, in deadline order
        self.opens: dict[int, int] = {}  # port → local port of the socket that saw it open
        self.filtered: list[int] = []
        self.closed = 0
        self.attempts: dict[int, int] = {}
        self.reprobes: dict[int, int] = {}
        self.retried = self.self_connects = 0
        self.tokens = 0
        self.next_ask = 0.0
        self.resource_since: float | None = None

    def run(self) -> PortScanResult:
        started = time.monotonic()
        epoll = select.epoll()
        try:
            self._drain(epoll)
            for _round in range(_MAX_REPROBES):  # sockets of ours that met each other
                crossed = [p for p, local in self.opens.items()
                           if local != p and self.opens.get(local) == p]
                if not crossed:
                    break
                for port in crossed:
                    del self.opens[port]
                    self.self_connects += 1
                self.pending.extend(sorted(crossed))
                self.limit = self.max_limit = 1  # one at a time: they cannot meet again
                self._drain(epoll)
        finally:
            for entry in self.waiting.values():
                entry.sock.close()
            self.waiting.clear()
            epoll.close()
        self._report(force=True)
        return PortScanResult(self.address, len(self.ports), tuple(sorted(self.opens)),
                              tuple(sorted(self.filtered)), self.closed, self.retried,
                              self.self_connects, time.monotonic() - started)

    def _drain(self, epoll: select.epoll) -> None:
        pending, waiting, expiry = self.pending, self.waiting, self.expiry
        last_report = time.monotonic()
        while pending or waiting:
            if self.stop is not None and self.stop.is_set():
                raise _Stopped(f"scan of {self.address} cancelled")
            now = time.monotonic()
            room = self.limit - len(waiting)
            if room > 0 and pending:
                self._launch(epoll, self._permits(room, now), now)
                if not pending and not waiting:
                    break  # all settled synchronously: nothing to wait for
            wait = self._poll_timeout(now)
            polled_at = time.monotonic()
            for fd, _events in epoll.poll(wait):
                entry = waiting.pop(fd)
                err = entry.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._settle(entry.sock, entry.port, err)
            # Only deadlines that passed before the wait began: that wait saw them silent.
            while expiry and expiry[0].deadline <= polled_at:
                entry = expiry.popleft()
                fd = entry.sock.fileno()
                if fd < 0 or waiting.get(fd) is not entry:
                    continue  # settled already
                del waiting[fd]
                entry.sock.close()
                self._timed_out(entry.port)
            if self.on_progress is not None and polled_at - last_report >= self.progress_interval:
                last_report = polled_at
                self._report()

    def _launch(self, epoll: select.epoll, count: int, now: float) -> None:
        # The hot path: per port a socket, two connects and a close, with nothing else
        # on the common outcomes (refused, open) than a counter or a dict entry.
        pending, waiting, expiry = self.pending, self.waiting, self.expiry
        popleft, new_socket, family = pending.popleft, _open_socket, self.family
        address, deadline, closed = self.address, now + self.timeout, 0
        EINPROGRESS, EALREADY, ECONNREFUSED = errno.EINPROGRESS, errno.EALREADY, errno.ECONNREFUSED
        for _ in range(min(count, len(pending))):
            port = popleft()
            try:
                sock = new_socket(family)
            except OSError as exc:
                pending.appendleft(port)
                self.closed += closed
                self._out_of_resources(exc)
                return
            err = sock.connect_ex((address, port))
            if err == EINPROGRESS:
                err = sock.connect_ex((address, port))
            if err == ECONNREFUSED:
                closed += 1
                sock.close()
            elif err == EALREADY:
                entry = _Waiting(sock, port, deadline)
                waiting[sock.fileno()] = entry
                expiry.append(entry)
                epoll.register(sock.fileno(), select.EPOLLOUT)
            elif err in _RESOURCE_ERRORS:
                sock.close()
                pending.appendleft(port)
                self.closed += closed
                self._out_of_resources(OSError(err, os.strerror(err)))
                return
            else:
                self._settle(sock, port, 0 if err == errno.EISCONN else err)
        self.closed += closed
        self.resource_since = None
        if self.limit < self.max_limit:  # recovering from a resource shortage: grow back
            self.limit = min(self.max_limit, self.limit * 2)

    def _settle(self, sock: _RawSocket, port: int, err: int) -> None:
        if err == errno.ECONNREFUSED:
            self.closed += 1
            sock.close()
        elif err == 0:
            self._opened(sock, port)
        elif err in _RESOURCE_ERRORS:
            sock.close()
            self.pending.appendleft(port)
        else:  # unreachable, timed out in the kernel, refused by a local firewall: nmap's filtered
            sock.close()
            self.filtered.append(port)

    def _opened(self, sock: _RawSocket, port: int) -> None:
        try:
            local = sock.getsockname()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:  # reset between connect and here: it answered, so something listens
            local = ("", 0)
        sock.close()
        if local[1] == port and local[0] == self.address:
            self.self_connects += 1
            tries = self.reprobes.get(port, 0) + 1
            self.reprobes[port] = tries
            if tries < _MAX_REPROBES:
                self.pending.append(port)
            else:  # the kernel keeps handing out that very port: nothing listens there
                self.closed += 1
            return
        self.opens[port] = local[1]

    def _timed_out(self, port: int) -> None:
        tries = self.attempts.get(port, 0)
        if tries < self.retries:
            self.attempts[port] = tries + 1
            self.retried += 1
            self.pending.appendleft(port)
        else:
            self.filtered.append(port)

    def _permits(self, room: int, now: float) -> int:
        if self.limiter is None:
            return room
        if self.tokens == 0 and now >= self.next_ask:
            asked = min(room, len(self.pending))
            granted, wait = self.limiter.acquire(asked)
            self.tokens += max(0, int(granted))
            self.next_ask = now + max(0.0, float(wait)) if granted < asked else now
        used = min(room, self.tokens)
        self.tokens -= used
        return used

    def _poll_timeout(self, now: float) -> float:
        can_launch = self.limiter is None or self.tokens > 0 or now >= self.next_ask
        if (self.pending and len(self.waiting) < self.limit and self.resource_since is None
                and can_launch):
            return 0.0
        horizon = now + self.progress_interval if self.on_progress else now + self.timeout
        if self.expiry:
            horizon = min(horizon, self.expiry[0].deadline)
        if self.pending and self.limiter is not None and self.tokens == 0:
            horizon = min(horizon, self.next_ask)
        if self.resource_since is not None:
            horizon = min(horizon, now + 0.01)
        if self.stop is not None:  # a cancelled scan must notice soon, whatever it waits for
            horizon = min(horizon, now + _STOP_CHECK)
        return max(0.0, horizon - now)

    def _out_of_resources(self, exc: OSError) -> None:
        now = time.monotonic()
        if self.resource_since is None:
            self.resource_since = now
        elif not self.waiting and now - self.resource_since > _RESOURCE_GIVE_UP:
            raise TransientError(f"scan of {self.address}: out of local resources "
                                 f"({exc.strerror}) for {_RESOURCE_GIVE_UP:.0f} s") from exc
        self.limit = max(1, len(self.waiting))  # back off to what is already in flight

    def _report(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        done = self.closed + len(self.opens) + len(self.filtered)
        if force or done:
            self.on_progress(ScanProgress(self.address, done, len(self.ports), len(self.opens)))


__all__ = [
    "OPEN", "CLOSED", "FILTERED", "ConnectLimiter", "ScanProgress", "PortScanResult",
    "scan_ports", "scan_ports_blocking", "is_self_connect", "free_descriptors",
]
