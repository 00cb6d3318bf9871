"""Scan job parts: chunk sizing against the time budget, one chunk inside its deadline, findings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from lewis_tasks.domain.scanjob import (
    IDENTIFY_CONNECTS,
    OpenPort,
    assess_ports,
    max_chunk_ports,
    run_chunk,
    take_permits,
)
from lewis_tasks.domain.scope import Scope
from lewis_tasks.domain.services import ServiceInfo, guess_name
from lewis_tasks.domain.vulns import find_cves, sample_records
from lewis_tasks.errors import OutOfScope
from tests.support.listeners import CATALOGUE, ListenerSet, blackhole_port, running_listeners

ADDRESS = "127.88.1.1"
SCOPE = Scope.from_allow()


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    # every catalogue service once, plus six silent listeners
    count = len(CATALOGUE) + 6
    with running_listeners(
        count, host=ADDRESS, seed=5, banner_share=len(CATALOGUE) / count
    ) as running:
        yield running


def test_chunk_size_keeps_the_worst_case_inside_the_budget() -> None:
    # Given 100 s, 1 s timeouts retried once, 1000 connects in flight
    n = max_chunk_ports(100.0, concurrency=1000, timeout=1.0, retries=1)
    # Then all-filtered ports (2 attempts each, 1000 at a time) fit: ceil(n/1000) waves × 2 s
    assert -(-n // 1000) * 2.0 <= 100.0 and n >= 40_000
    # and a rate makes every attempt wait for a permit: 50/s for 2 attempts → ~25 ports/s
    slow = max_chunk_ports(100.0, concurrency=1000, timeout=1.0, retries=1, rate=50)
    assert slow * 2 / 50 <= 99.0 and slow >= 2000
    assert max_chunk_ports(0.5, concurrency=10, timeout=1.0, retries=0) == 1


def test_run_chunk_finds_open_ports_and_names_their_services(listeners: ListenerSet) -> None:
    ports = sorted(set(listeners.ports) | set(range(1, 200)))
    outcome = asyncio.run(
        run_chunk(ADDRESS, ports, scope=SCOPE, deadline=time.monotonic() + 30, banner_timeout=1.0)
    )
    assert set(listeners.ports) <= set(outcome.scan.open)
    named = {s.port: s for s in outcome.services}
    for port, item in listeners.listeners.items():
        expected = item.service.name if item.service else guess_name(port)
        assert named[port].name == expected, (port, named[port])
    assert outcome.unidentified == ()
    assert outcome.to_dict()["scan"]["ports_total"] == len(ports)


def test_identification_is_cut_at_the_deadline_not_after(listeners: ListenerSet) -> None:
    # Given silent listeners that would each hold identification for 2 × 5 s
    silent = listeners.silent_ports
    began = time.monotonic()
    outcome = asyncio.run(
        run_chunk(ADDRESS, silent, scope=SCOPE, deadline=began + 1.5, banner_timeout=5.0)
    )
    # Then the chunk ends with them open but unnamed, marked as cut by the deadline
    assert set(outcome.scan.open) == set(silent)
    assert set(outcome.unidentified) == set(silent)
    assert all(s.name == guess_name(s.port) and s.probe == "deadline" for s in outcome.services)
    assert outcome.seconds < 5.0  # well before even one banner timeout would have passed


def test_a_filtered_port_ends_as_filtered(listeners: ListenerSet) -> None:
    with blackhole_port(ADDRESS) as port:
        outcome = asyncio.run(
            run_chunk(
                ADDRESS, [port], scope=SCOPE, timeout=0.3, retries=1, deadline=time.monotonic() + 10
            )
        )
    assert outcome.scan.filtered == (port,) and outcome.scan.open == ()
    assert not outcome.timed_out


def test_a_chunk_overrunning_its_deadline_ends_with_what_settled(listeners: ListenerSet) -> None:
    # Given a listener and a black-holed port whose connects (2 × 30 s) outlive a 0.5 s deadline
    listening = listeners.ports[0]
    with blackhole_port(ADDRESS) as port:
        outcome = asyncio.run(
            run_chunk(
                ADDRESS,
                [listening, port],
                scope=SCOPE,
                timeout=30.0,
                retries=1,
                deadline=time.monotonic() + 0.5,
            )
        )
    # Then (before: TransientError, and the task retried into the same wall) the chunk ends
    # timed out: the open port kept but unnamed, the stalled one left unsettled
    assert outcome.timed_out and not outcome.scan.cancelled
    assert outcome.scan.open == (listening,) and outcome.scan.filtered == ()
    assert outcome.scan.ports_done == 1 and outcome.unidentified == (listening,)
    assert outcome.to_dict()["timed_out"] is True


def test_out_of_scope_address_is_refused_before_any_connect() -> None:
    with pytest.raises(OutOfScope):
        asyncio.run(run_chunk("10.1.2.3", [80], scope=SCOPE, deadline=time.monotonic() + 5))


class CountingLimiter:
    """Grants at most ``per_call`` permits a call; records what was asked."""

    def __init__(self, per_call: int) -> None:
        self.per_call, self.asked, self.granted = per_call, [], 0

    def acquire(self, n: int) -> tuple[int, float]:
        self.asked.append(n)
        give = min(n, self.per_call)
        self.granted += give
        return give, 0.001


def test_identification_takes_rate_permits_for_each_connect(listeners: ListenerSet) -> None:
    limiter = CountingLimiter(per_call=4)
    asyncio.run(take_permits(limiter, IDENTIFY_CONNECTS))
    assert limiter.granted == IDENTIFY_CONNECTS
    assert limiter.asked == list(range(IDENTIFY_CONNECTS, 0, -4))  # 4 granted per call
    ports = listeners.service_ports[:3]
    limiter = CountingLimiter(per_call=1000)
    outcome = asyncio.run(
        run_chunk(
            ADDRESS,
            ports,
            scope=SCOPE,
            deadline=time.monotonic() + 30,
            banner_timeout=1.0,
            limiter=limiter,
        )
    )
    # every scan connect and IDENTIFY_CONNECTS per identified port went through the limiter
    assert limiter.granted >= len(ports) + IDENTIFY_CONNECTS * len(outcome.services)


def test_findings_rank_and_cite_cves_from_the_lookup() -> None:
    records = sample_records()
    asked: list[str | None] = []

    def lookup(product: str | None) -> list:
        asked.append(product)
        return list(records)

    ports = [
        OpenPort(ADDRESS, ServiceInfo(22, "ssh", "OpenSSH", "8.9p1")),
        OpenPort(
            ADDRESS, ServiceInfo(6379, "redis", "Redis", "6.0.16", extra={"auth_required": False})
        ),
        OpenPort(ADDRESS, ServiceInfo(9999, "unknown")),
    ]
    findings = assess_ports(ports, lookup)
    # both critical (a CVE at 9.8; a Redis without AUTH), the higher CVSS score first
    assert [(f.port, f.severity) for f in findings[:2]] == [(22, "critical"), (6379, "critical")]
    ssh = next(f for f in findings if f.port == 22)
    assert ssh.cve_ids and ssh.cve_ids == [r.cve_id for r in find_cves("OpenSSH", "8.9p1", records)]
    assert findings[-1].port == 9999 and findings[-1].severity == "info"
    assert None not in asked and "OpenSSH" in asked  # no lookup for an unnamed service
