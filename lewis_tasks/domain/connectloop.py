"""The connect loop under :mod:`.portscan`: plain non-blocking sockets on one ``epoll``.

Per port: ``socket(SOCK_NONBLOCK)``, ``connect`` (EINPROGRESS), then a second ``connect`` at
once — on Linux it reports the state the first one reached meanwhile: 0 (open), ECONNREFUSED
(closed) or EALREADY (still waiting). On loopback nearly every port is settled by that second
call, so it never touches epoll; only the ports still waiting are registered and count as in
flight.

Exactness, as tested properties:

* **No false opens from self-connects.** Connecting to a port in the ephemeral range of the
  scanning host, the kernel may pick that very port as the local one: TCP simultaneous open
  then "connects" the socket to itself. Every open is checked (local address == remote
  address) and such a port is probed again from a fresh socket. Two of our sockets connected
  to each other (local X → Y and local Y → X) are found the same way and re-probed one by one.
* **No missed ports under load.** In-flight work is bounded (``concurrency``, also clamped to
  the free file descriptors), and a socket only times out if its deadline had passed *before*
  the epoll wait that found it still silent — so a starved loop cannot turn a late answer into
  a false timeout. A real timeout is retried ``retries`` times with a fresh socket.
* **Local shortages are not target states.** EMFILE, EADDRNOTAVAIL and friends put the port
  back and shrink the in-flight bound; only seconds of nothing else fail the scan (transient).

Loops of one process take turns (:class:`Turns`): each launches its burst of connects holding
the process's turn, and waits in epoll without it. Side by side without turns, every connect
of one loop released the GIL to another loop's thread and took it back: 16 loops in 17
threads cost 2.0× the CPU of one loop over the same ports, 32 in 33 cost 3.4×; taking turns,
1.04× and 1.10× (``python -m bench.scan_loops``). Waits still overlap, so a loop waiting on a
slow host holds no one up.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidInput, OutOfScope, TransientError
from .scope import IPAddress, never_allowed, unmap

_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_LINGER_RST = struct.pack("ii", 1, 0)  # close → RST: no TIME_WAIT here, no half-open peer
# Errors that say "this machine is out of something", not anything about the target.
_RESOURCE_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL, errno.EAGAIN}
)
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
class LoopTally:
    """What one run of the loop found; :mod:`.portscan` turns it into a PortScanResult."""

    address: str
    ports_total: int
    open: tuple[int, ...]
    filtered: tuple[int, ...]
    closed: int
    retried: int
    self_connects: int
    seconds: float
    cancelled: bool = False  # stopped by its cancel check: ports left unscanned


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


class Turns:
    """The turn a process's connect loops take to launch connects (a lock), and how many turns
    were taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()


class ConnectLoop:
    """One scan of one address: the epoll loop and its bookkeeping."""

    def __init__(
        self,
        address: IPAddress,
        ports: Iterable[int],
        *,
        concurrency: int,
        timeout: float,
        retries: int,
        limiter: ConnectLimiter | None,
        on_progress: Callable[[int, int, int], None] | None,
        progress_interval: float,
        stop: threading.Event | None = None,
        cancelled: Callable[[], bool] | None = None,
        turns: Turns | None = None,
    ) -> None:
        if concurrency < 1 or timeout <= 0 or retries < 0:
            raise InvalidInput(
                f"scan parameters: concurrency {concurrency} must be ≥ 1, "
                f"timeout {timeout} > 0, retries {retries} ≥ 0"
            )
        reason = never_allowed(unmap(address))  # the last line of defence, whatever the scope
        if reason:
            raise OutOfScope(f"{address} is out of scope: {reason}es are never allowed")
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
        self.cancel_check, self.cancelled = cancelled, False
        self.turns = turns
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

    def run(self) -> LoopTally:
        started = time.monotonic()
        epoll = select.epoll()
        try:
            self._drain(epoll)
            for _round in range(
                0 if self.cancelled else _MAX_REPROBES
            ):  # sockets of ours that met each other
                crossed = [
                    p
                    for p, local in self.opens.items()
                    if local != p and self.opens.get(local) == p
                ]
                if not crossed:
                    break
                for port in crossed:
                    del self.opens[port]
                    self.self_connects += 1
                self.pending.extend(sorted(crossed))
                self.limit = self.max_limit = 1  # one at a time: they cannot meet again
                self._drain(epoll)
                if self.cancelled:
                    break
        finally:
            for entry in self.waiting.values():
                entry.sock.close()
            self.waiting.clear()
            epoll.close()
        self._report(force=True)
        return LoopTally(
            self.address,
            len(self.ports),
            tuple(sorted(self.opens)),
            tuple(sorted(self.filtered)),
            self.closed,
            self.retried,
            self.self_connects,
            time.monotonic() - started,
            self.cancelled,
        )

    def _drain(self, epoll: select.epoll) -> None:
        pending, waiting, expiry = self.pending, self.waiting, self.expiry
        last_report = time.monotonic()
        while pending or waiting:
            if self.stop is not None and self.stop.is_set():
                raise _Stopped(f"scan of {self.address} cancelled")
            if self.cancel_check is not None and self.cancel_check():
                self.cancelled = True  # what is settled is kept; the rest is not sent
                return
            now = time.monotonic()
            room = self.limit - len(waiting)
            if room > 0 and pending:
                permits = self._permits(room, now)
                if self.turns is None:
                    launched = self._launch(epoll, permits, now)
                else:
                    with self.turns:  # this process's other loops launch after this burst
                        launched = self._launch(epoll, permits, now)
                self.tokens += permits - launched  # unused: kept
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

    def _launch(self, epoll: select.epoll, count: int, now: float) -> int:
        # The hot path: per port a socket, two connects and a close, with nothing else
        # on the common outcomes (refused, open) than a counter or a dict entry.
        pending, waiting, expiry = self.pending, self.waiting, self.expiry
        popleft, new_socket, family = pending.popleft, _open_socket, self.family
        address, deadline, closed = self.address, now + self.timeout, 0
        EINPROGRESS, EALREADY, ECONNREFUSED = errno.EINPROGRESS, errno.EALREADY, errno.ECONNREFUSED
        count = min(count, len(pending))
        for launched in range(count):
            port = popleft()
            try:
                sock = new_socket(family)
            except OSError as exc:
                pending.appendleft(port)
                self.closed += closed
                self._out_of_resources(exc)
                return launched
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
                return launched
            else:
                self._settle(sock, port, 0 if err == errno.EISCONN else err)
        self.closed += closed
        self.resource_since = None
        if self.limit < self.max_limit:  # recovering from a resource shortage: grow back
            self.limit = min(self.max_limit, self.limit * 2)
        return count

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
            # nothing granted: never ask again sooner than 5 ms (a bucket saying "wait 0")
            floor = 0.005 if granted <= 0 else 0.0
            self.next_ask = now + max(floor, float(wait)) if granted < asked else now
        used = min(room, self.tokens)
        self.tokens -= used
        return used

    def _poll_timeout(self, now: float) -> float:
        can_launch = self.limiter is None or self.tokens > 0 or now >= self.next_ask
        if (
            self.pending
            and len(self.waiting) < self.limit
            and self.resource_since is None
            and can_launch
        ):
            return 0.0
        horizon = now + self.progress_interval if self.on_progress else now + self.timeout
        if self.expiry:
            horizon = min(horizon, self.expiry[0].deadline)
        if self.pending and self.limiter is not None and self.tokens == 0:
            horizon = min(horizon, self.next_ask)
        if self.resource_since is not None:
            horizon = min(horizon, now + 0.01)
        if (
            self.stop is not None or self.cancel_check is not None
        ):  # a cancelled scan must notice soon, whatever it waits for
            horizon = min(horizon, now + _STOP_CHECK)
        return max(0.0, horizon - now)

    def _out_of_resources(self, exc: OSError) -> None:
        now = time.monotonic()
        if self.resource_since is None:
            self.resource_since = now
        elif not self.waiting and now - self.resource_since > _RESOURCE_GIVE_UP:
            raise TransientError(
                f"scan of {self.address}: out of local resources "
                f"({exc.strerror}) for {_RESOURCE_GIVE_UP:.0f} s"
            ) from exc
        self.limit = max(1, len(self.waiting))  # back off to what is already in flight

    def _report(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        done = self.closed + len(self.opens) + len(self.filtered)
        if force or done:
            self.on_progress(done, len(self.ports), len(self.opens))


__all__ = ["ConnectLimiter", "ConnectLoop", "LoopTally", "free_descriptors"]
