"""Scans are cut into enough chunks that a worker added mid-scan finds work queued."""

from __future__ import annotations

import math

from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.planning import MIN_CHUNK_PORTS, SCAN_WAVES, chunk_ports_for, io_slots


def chunks(hosts: int, ports: int, size: int) -> int:
    return hosts * math.ceil(ports / size)


def test_a_scan_makes_waves_of_every_io_slot_online() -> None:
    s = load_settings(env={"LEWIS_SCAN_CHUNK_PORTS": "65535"})
    slots = io_slots(s)
    # one host, every port, one worker: enough chunks for SCAN_WAVES waves of its slots
    size = chunk_ports_for(s, None, hosts=8, ports=65535)
    assert chunks(8, 65535, size) >= SCAN_WAVES * slots
    # three workers online: three times as many (the first ones take a wave each, the rest waits)
    size3 = chunk_ports_for(s, None, hosts=16, ports=65535, slots_online=3 * slots)
    assert chunks(16, 65535, size3) >= SCAN_WAVES * 3 * slots


def test_never_below_the_minimum_nor_above_the_setting() -> None:
    s = load_settings(env={"LEWIS_SCAN_CHUNK_PORTS": "8192"})
    assert chunk_ports_for(s, None, hosts=1, ports=65535) == MIN_CHUNK_PORTS
    assert chunk_ports_for(s, None, hosts=4096, ports=8192) == 8192  # many hosts: full chunks
    assert chunk_ports_for(s, None) == 8192  # no scan given: the setting (and the budget)
    small = load_settings(env={"LEWIS_SCAN_CHUNK_PORTS": "64"})
    assert chunk_ports_for(small, None, hosts=1, ports=65535) == 64
