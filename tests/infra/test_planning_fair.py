"""Scans are cut into enough chunks that a worker added mid-scan finds work queued."""

from __future__ import annotations

import math

from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.planning import (
    MIN_CHUNK_PORTS,
    PROCESS_SHARES,
    SCAN_WAVES,
    chunk_ports_for,
    io_slots,
)


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


def test_a_scan_of_one_wave_is_cut_per_io_process_not_per_slot() -> None:
    s = load_settings(env={"LEWIS_SCAN_CHUNK_PORTS": "8192"})
    slots = io_slots(s)
    # one host, every port, two io processes online: the whole scan is one wave of their
    # slots, so it is cut into PROCESS_SHARES chunks a process, at most chunk_ports each
    size = chunk_ports_for(
        s, None, hosts=1, ports=65535, slots_online=2 * slots, processes_online=2
    )
    assert size == 8192 and chunks(1, 65535, size) == 8 >= PROCESS_SHARES * 2
    wide = load_settings(env={"LEWIS_SCAN_CHUNK_PORTS": "65535"})
    size = chunk_ports_for(
        wide, None, hosts=1, ports=65535, slots_online=2 * slots, processes_online=2
    )
    # (the shares, or what the task's time budget allows a chunk, whichever cuts finer)
    budget = chunks(1, 65535, chunk_ports_for(wide, None))
    assert chunks(1, 65535, size) == max(PROCESS_SHARES * 2, budget)
    # sixteen io processes: every one still gets its shares (the waves' floor is kept)
    size = chunk_ports_for(
        wide, None, hosts=1, ports=65535, slots_online=16 * slots, processes_online=16
    )
    assert size == MIN_CHUNK_PORTS
    # processes not known: the waves, as before
    assert chunk_ports_for(s, None, hosts=1, ports=65535, slots_online=2 * slots) == MIN_CHUNK_PORTS


def test_a_scan_of_more_than_one_wave_keeps_its_waves() -> None:
    s = load_settings(env={"LEWIS_SCAN_CHUNK_PORTS": "65535"})
    slots = io_slots(s)
    # sixteen hosts, every port, two processes: more chunks than slots, so some stay queued
    # for a worker that joins, and the processes online change nothing
    waves = chunk_ports_for(s, None, hosts=16, ports=65535, slots_online=2 * slots)
    size = chunk_ports_for(
        s, None, hosts=16, ports=65535, slots_online=2 * slots, processes_online=2
    )
    assert size == waves and chunks(16, 65535, size) > 2 * slots
