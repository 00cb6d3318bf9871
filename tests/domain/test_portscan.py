"""The connect scanner against real loopback listeners: exactness as a property, not luck."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lewis_tasks.domain import connectloop
from lewis_tasks.domain.portscan import (
    CLOSED,
    FILTERED,
    OPEN,
    PortScanProgress,
    PortScanResult,
    scan_ports,
    scan_ports_blocking,
)
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import InvalidInput, OutOfScope
from lewis_tasks.infra.redis_server import free_port
from tests.support.listeners import ListenerSet, blackhole_port, listening_ports, running_listeners

# A loopback address of its own: only our listeners and wildcard (0.0.0.0 / ::) ones answer.
ADDRESS = "127.77.0.1"
SCOPE = Scope.from_allow()


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    with running_listeners(300, host=ADDRESS, seed=11) as running:
        yield running


@pytest.fixture(scope="module")
def full_scan(listeners: ListenerSet) -> tuple[PortScanResult, set[int], set[int]]:
    """One full scan of ADDRESS with the kernel's listening set taken before and after."""
    before = listening_ports(ADDRESS)
    result = scan_ports_blocking(
        ADDRESS, range(1, 65536), scope=SCOPE, concurrency=4096, timeout=1.0, retries=1
    )
    after = listening_ports(ADDRESS)
    return result, before & after, before ^ after


def test_full_scan_finds_exactly_the_listening_ports(
    listeners: ListenerSet, full_scan: tuple[PortScanResult, set[int], set[int]]
) -> None:
    # Given 300 listeners of ours on random ports, and whatever listens on the wildcard
    result, stable, changing = full_scan
    truth = set(listeners.ports) | stable
    # Then the open set is the truth exactly (ports other processes opened or closed during
    # the scan are left out of the comparison), nothing is filtered, the rest is closed
    assert set(listeners.ports) <= stable
    assert set(result.open) - changing == truth - changing
    assert result.filtered == ()
    assert result.ports_total == 65535
    assert result.closed_count == 65535 - len(result.open)


def test_closed_ports_are_closed(
    listeners: ListenerSet, full_scan: tuple[PortScanResult, set[int], set[int]]
) -> None:
    result, stable, changing = full_scan
    quiet = [p for p in range(1, 65536) if p not in stable and p not in changing][:2000]
    assert all(result.state_of(p) == CLOSED for p in quiet)
    assert all(result.state_of(p) == OPEN for p in listeners.ports)


def test_results_are_json(full_scan: tuple[PortScanResult, set[int], set[int]]) -> None:
    result = full_scan[0]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["open"] == list(result.open) and data["closed_count"] == result.closed_count


def test_the_async_scan_runs_beside_a_live_event_loop(listeners: ListenerSet) -> None:
    ports = list(range(1, 20001)) + listeners.ports
    expected = {p for p in listeners.ports} | {p for p in listening_ports(ADDRESS) if p <= 20000}

    async def main() -> tuple[PortScanResult, list[PortScanProgress], int]:
        progress: list[PortScanProgress] = []
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await scan_ports(
            ADDRESS,
            ports,
            scope=SCOPE,
            timeout=1.0,
            on_progress=progress.append,
            progress_interval=0.01,
        )
        await asyncio.sleep(0)  # the last progress callback was scheduled with call_soon
        task.cancel()
        return result, progress, ticks

    result, progress, ticks = asyncio.run(main())
    assert expected <= set(result.open) and set(listeners.ports) <= set(result.open)
    assert ticks > 0  # the loop kept running while the scan did
    assert progress and progress[-1].done == progress[-1].total == result.ports_total
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].open == len(result.open)


def test_scans_side_by_side_take_turns_and_stay_exact(listeners: ListenerSet) -> None:
    # Given one process's scans running side by side, each in its own thread, as the chunks
    # of an io worker do, sharing the process's turns
    class Counted(connectloop.Turns):
        holding = most = 0

        def __enter__(self) -> None:
            super().__enter__()
            Counted.holding += 1
            Counted.most = max(Counted.most, Counted.holding)

        def __exit__(self, *exc: object) -> None:
            Counted.holding -= 1
            super().__exit__(*exc)

    turns = Counted()
    parts = [range(1 + i * 8192, min(65536, 1 + (i + 1) * 8192)) for i in range(8)]
    before = listening_ports(ADDRESS)

    async def main() -> list[PortScanResult]:
        with ThreadPoolExecutor(len(parts)) as executor:
            return await asyncio.gather(
                *(
                    scan_ports(
                        ADDRESS, part, scope=SCOPE, concurrency=512, executor=executor, turns=turns
                    )
                    for part in parts
                )
            )

    results = asyncio.run(main())
    stable = before & listening_ports(ADDRESS)
    # Then together they found exactly what listens, launching their connects in turns (one
    # loop at a time), many turns each
    found = {p for r in results for p in r.open}
    assert set(listeners.ports) <= found and found - set(listeners.ports) <= stable
    assert Counted.most == 1
    assert turns.taken >= len(parts)


def test_an_unanswered_port_ends_filtered_within_its_budget(listeners: ListenerSet) -> None:
    # Given a port whose listener's accept queue is full: SYNs to it are dropped
    with blackhole_port(ADDRESS) as silent:
        started = time.monotonic()
        result = scan_ports_blocking(
            ADDRESS, [silent, *listeners.ports[:5]], scope=SCOPE, timeout=0.3, retries=1
        )
        elapsed = time.monotonic() - started
    # Then it is filtered after one retry, the open ones stay open, and nothing hangs
    assert result.filtered == (silent,)
    assert result.retried == 1
    assert set(result.open) == set(listeners.ports[:5])
    assert elapsed >= 0.6  # two full timeouts: it was not given up early
    assert elapsed < 0.6 + 10  # and not left hanging (a generous bound on a shared machine)


def test_retries_zero_gives_up_after_one_timeout() -> None:
    with blackhole_port(ADDRESS) as silent:
        result = scan_ports_blocking(ADDRESS, [silent], scope=SCOPE, timeout=0.2, retries=0)
    assert result.state_of(silent) == FILTERED and result.retried == 0


@pytest.mark.parametrize("bind_every_time", [False, True])
def test_self_connects_are_never_reported_open(
    monkeypatch: pytest.MonkeyPatch, bind_every_time: bool
) -> None:
    # Given the kernel hands the scanner's socket the very port it scans (forced here by
    # binding it; in a real scan it happens now and then in the ephemeral range)
    port = free_port()
    real_open = connectloop._open_socket
    bound = 0

    def open_bound(family: int) -> Any:
        nonlocal bound
        sock = real_open(family)
        if bind_every_time or bound == 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            bound += 1
        return sock

    monkeypatch.setattr(connectloop, "_open_socket", open_bound)
    result = scan_ports_blocking("127.0.0.1", [port], scope=SCOPE, timeout=1.0)
    # Then the port, where nothing listens, is closed, and the false open was counted
    assert result.open == () and result.state_of(port) == CLOSED
    assert result.self_connects >= 1 and bound >= 1


def test_a_rate_limiter_grants_every_connect() -> None:
    class Grants:
        """A local budget: 7 permits per ask, counted."""

        def __init__(self) -> None:
            self.granted = 0

        def acquire(self, n: int) -> tuple[int, float]:
            take = min(n, 7)
            self.granted += take
            return take, 0.001

    with running_listeners(10, host="127.77.0.2", seed=5) as few:
        limiter = Grants()
        ports = list(range(40000, 40100)) + few.ports
        result = scan_ports_blocking("127.77.0.2", ports, scope=SCOPE, limiter=limiter)
    assert set(few.ports) <= set(result.open)
    assert limiter.granted == len(set(ports))  # one permit per connect, none wasted


def test_out_of_scope_addresses_are_refused_before_any_packet() -> None:
    narrow = Scope.from_allow(["127.0.0.2/32"])
    with pytest.raises(OutOfScope):
        scan_ports_blocking("127.0.0.1", [80], scope=narrow)
    with pytest.raises(OutOfScope):
        asyncio.run(scan_ports("127.0.0.1", [80], scope=narrow))
    with pytest.raises(OutOfScope):
        scan_ports_blocking("0.0.0.0", [80], scope=Scope.from_allow(["0.0.0.0/0"]))


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "::ffff:0.0.0.0"]
)
def test_the_connect_loop_itself_refuses_never_allowed_addresses(address: str) -> None:
    # The scope check before it is the first line; the loop that opens the sockets is the
    # second, and takes no scope at all: these classes are refused whatever anyone allowed.
    listening = ipaddress.ip_address(address)
    with pytest.raises(
        OutOfScope, match=f"^{re.escape(str(listening))} is out of scope: .*es are never allowed"
    ):
        connectloop.ConnectLoop(
            listening,
            [free_port("127.0.0.1")],
            concurrency=1,
            timeout=0.1,
            retries=0,
            limiter=None,
            on_progress=None,
            progress_interval=1,
        )
    assert (
        connectloop.ConnectLoop(
            ipaddress.ip_address("127.0.0.1"),
            [80],
            concurrency=1,
            timeout=0.1,
            retries=0,
            limiter=None,
            on_progress=None,
            progress_interval=1,
        ).address
        == "127.0.0.1"
    )


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"timeout": 0}, {"retries": -1}])
def test_bad_parameters_are_invalid_input(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        scan_ports_blocking("127.0.0.1", [80], scope=SCOPE, **kwargs)  # type: ignore[arg-type]


def test_ports_out_of_range_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="70000"):
        scan_ports_blocking("127.0.0.1", [80, 70000], scope=SCOPE)


@pytest.mark.timeout(30)
def test_cancelling_the_scan_stops_its_thread() -> None:
    pool = ThreadPoolExecutor(max_workers=1)

    async def main(silent: int) -> None:
        task = asyncio.create_task(
            scan_ports(ADDRESS, [silent], scope=SCOPE, timeout=100, executor=pool)
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with blackhole_port(ADDRESS) as silent:  # still silent while the thread is waited for
        asyncio.run(main(silent))
        pool.shutdown(wait=True)  # returns only once the scanning thread has stopped
    # (the timeout mark fails the test if the thread waited out its 100 s connect timeout)


def test_an_empty_port_list_is_an_empty_result() -> None:
    result = scan_ports_blocking("127.0.0.1", [], scope=SCOPE)
    assert result.ports_total == 0 and result.open == () and result.closed_count == 0


def test_no_false_opens_across_the_ephemeral_range_of_127_0_0_1() -> None:
    # Given the range where the kernel picks our own source ports (32768-60999 here), on the
    # address our sockets come from, so self-connects can happen for real
    before = listening_ports("127.0.0.1")
    result = scan_ports_blocking("127.0.0.1", range(32768, 61000), scope=SCOPE, timeout=1.0)
    after = listening_ports("127.0.0.1")
    # Then every port reported open was listening (before or after: others come and go),
    # and none listening throughout was reported closed (filtered would be a full backlog)
    assert set(result.open) <= before | after
    assert all(result.state_of(p) != CLOSED for p in before & after if 32768 <= p < 61000)


def test_ipv6_loopback_scans_exactly() -> None:
    with running_listeners(8, host="::1", seed=9) as six:
        ports = list(range(50000, 50500)) + six.ports
        wildcard = listening_ports("::1")
        result = scan_ports_blocking("::1", ports, scope=SCOPE)
    assert set(six.ports) <= set(result.open) <= set(six.ports) | wildcard
    assert result.address == "::1" and result.filtered == ()
