"""Protocols that wait for the client to speak first (AMQP, epmd, Erlang distribution, MQTT)
get probes; a port that answers none is named from nmap's services table, marked as a guess."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from lewis_tasks.domain.findings import assess
from lewis_tasks.domain.scope import Scope
from lewis_tasks.domain.services import (
    PROBE_COUNT,
    UNKNOWN,
    ServiceInfo,
    guess_name,
    identify_services,
    match_answer,
)
from tests.support.listeners import Service, running_listeners

SCOPE = Scope.from_allow()
ADDRESS = "127.77.0.21"


def identify(address: str, ports: list[int]) -> dict[int, ServiceInfo]:
    found = asyncio.run(identify_services(address, ports, scope=SCOPE, banner_timeout=0.3))
    return {info.port: info for info in found}


def _long_string(key: bytes, value: bytes) -> bytes:
    return bytes([len(key)]) + key + b"S" + struct.pack("!I", len(value)) + value


def amqp_connection_start(product: bytes, version: bytes) -> bytes:
    """Connection.Start as RabbitMQ 3.10 sends it (its server-properties cut to the fields
    identification reads, in RabbitMQ's order), framed: type 1, channel 0, frame-end 0xCE."""
    table = (
        _long_string(b"cluster_name", b"rabbit@vm")
        + _long_string(b"platform", b"Erlang/OTP 25.2.3")
        + _long_string(b"product", product)
        + _long_string(b"version", version)
    )
    payload = (
        struct.pack("!HHBB", 10, 10, 0, 9)
        + struct.pack("!I", len(table))
        + table
        + struct.pack("!I", 14)
        + b"AMQPLAIN PLAIN"
        + struct.pack("!I", 5)
        + b"en_US"
    )
    return b"\x01\x00\x00" + struct.pack("!I", len(payload)) + payload + b"\xce"


AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
RABBITMQ = Service(
    "amqp",
    "RabbitMQ",
    "3.10.8",
    replies=((AMQP_HEADER, amqp_connection_start(b"RabbitMQ", b"3.10.8")),),
    default_reply=AMQP_HEADER,
    close_after_reply=True,
)  # as RabbitMQ answers junk
EPMD = Service(
    "epmd",
    "Erlang Port Mapper Daemon",
    None,
    replies=((b"\x00\x01n", b"\x00\x00\x11\x11name rabbit at port 25672\n"),),
    close_after_reply=True,
    extra={"nodes": "rabbit:25672"},
)
ERLANG = Service(
    "erlang-dist",
    "Erlang distribution",
    None,
    replies=((b"\x00\x12n\x00\x05", b"\x00\x03sok"),),
    close_after_reply=True,
)
MOSQUITTO = Service(
    "mqtt",
    "Mosquitto",
    "2.0.11",
    replies=(
        (b"\x10", b"\x20\x02\x00\x00"),  # CONNACK, accepted; then SUBACK and the retained version
        (b"\x82", b"\x90\x03\x00\x01\x001-\x00\x13$SYS/broker/versionmosquitto version 2.0.11"),
    ),
)


@pytest.mark.parametrize(
    "answer, probe, expected",
    [
        (amqp_connection_start(b"RabbitMQ", b"3.10.8"), "amqp", ("amqp", "RabbitMQ", "3.10.8")),
        (AMQP_HEADER, "http", ("amqp", None, None)),
        (
            b"\x00\x00\x11\x11name rabbit at port 25672\n",
            "epmd",
            ("epmd", "Erlang Port Mapper Daemon", None),
        ),
        (b"\x00\x00\x11\x11", "epmd", ("epmd", "Erlang Port Mapper Daemon", None)),
        (b"\x00\x03sok", "erlang", ("erlang-dist", "Erlang distribution", None)),
        (b"\x00\x0csnot_allowed", "erlang", ("erlang-dist", "Erlang distribution", None)),
        (b"\x20\x02\x00\x00", "mqtt", ("mqtt", None, None)),
        (b"\x20\x02\x00\x05", "mqtt", ("mqtt", None, None)),  # not authorised: still MQTT
    ],
)
def test_answers_to_the_new_probes(
    answer: bytes, probe: str, expected: tuple[str, str | None, str | None]
) -> None:
    info = match_answer(5672, answer, probe)
    assert info is not None and (info.name, info.product, info.version) == expected


@pytest.mark.parametrize(
    "answer, probe",
    [
        (b"\x00\x00\x11\x11", "http"),  # an epmd-like answer to another probe proves nothing
        (b"\x20\x02\x00\x00", "redis"),
        (b"\x00\x03sok", "generic"),
        (b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0a", "http"),
    ],
)
def test_new_signatures_only_read_answers_to_their_own_probe(answer: bytes, probe: str) -> None:
    assert match_answer(4369, answer, probe) is None


def test_epmd_lists_the_nodes_it_knows() -> None:
    info = match_answer(
        4369, b"\x00\x00\x11\x11name rabbit at port 25672\nname lewis at port 41000\n", "epmd"
    )
    assert info is not None and info.extra["nodes"] == "rabbit:25672 lewis:41000"


def test_silent_protocols_are_named_on_live_listeners() -> None:
    services = (RABBITMQ, EPMD, ERLANG, MOSQUITTO)
    with running_listeners(4, host=ADDRESS, banner_share=1.0, seed=None, services=services) as four:
        found = identify(ADDRESS, four.ports)
    for port, item in four.listeners.items():
        assert item.service is not None
        info = found[port]
        assert (info.name, info.product, info.version) == (
            item.service.name,
            item.service.product,
            item.service.version,
        ), info
        for key, value in item.service.extra.items():
            assert info.extra.get(key) == value


def test_a_port_that_answers_no_probe_is_named_from_the_table_as_a_guess() -> None:
    ports = [5672, 4369, 1883, 47999]
    assert [guess_name(p) for p in ports] == ["amqp?", "epmd?", "mqtt?", UNKNOWN]
    socks = []
    try:
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.77.0.22", port))
            sock.listen(16)
            socks.append(sock)
        found = identify("127.77.0.22", ports)
    finally:
        for sock in socks:
            sock.close()
    assert {p: (i.name, i.probe) for p, i in found.items()} == {
        5672: ("amqp?", "silent"),
        4369: ("epmd?", "silent"),
        1883: ("mqtt?", "silent"),
        47999: (UNKNOWN, "silent"),
    }  # no table entry: nothing to guess from
    finding = assess("127.77.0.22", found[5672])
    assert finding.severity == "info" and "named from the port number" in finding.title


def test_the_table_is_nmaps_well_known_ports() -> None:
    assert guess_name(22) == "ssh?" and guess_name(6379) == "redis?"
    assert guess_name(5432) == "postgresql?" and guess_name(3306) == "mysql?"


def test_identification_budget_counts_every_probe() -> None:
    from lewis_tasks.domain.scanjob import IDENTIFY_CONNECTS

    assert PROBE_COUNT == 9 and IDENTIFY_CONNECTS == 1 + PROBE_COUNT


def test_ports_epmd_lists_are_named_erlang_distribution() -> None:
    """A modern Erlang node closes on every handshake but a real one (RabbitMQ's 25672 does);
    epmd on the same host says which port is whose."""
    node = socket.socket()
    node.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    node.bind(("127.77.0.23", 25672))
    node.listen(16)
    try:
        with running_listeners(
            1, host="127.77.0.23", banner_share=1.0, seed=None, services=(EPMD,)
        ) as one:
            found = identify("127.77.0.23", [one.ports[0], 25672])
    finally:
        node.close()
    assert found[25672].name == "erlang-dist" and found[25672].extra["node"] == "rabbit"
    assert found[one.ports[0]].name == "epmd"


def test_epmd_naming_leaves_identified_ports_alone() -> None:
    from lewis_tasks.domain.services import name_erlang_nodes

    epmd = ServiceInfo(4369, "epmd", extra={"nodes": "rabbit:25672 web:8080 odd:x"})
    infos = [
        epmd,
        ServiceInfo(25672, UNKNOWN),
        ServiceInfo(8080, "http"),
        ServiceInfo(9, "discard?"),
    ]
    named = {i.port: i.name for i in name_erlang_nodes(infos)}
    assert named == {4369: "epmd", 25672: "erlang-dist", 8080: "http", 9: "discard?"}


def _late_greeter(greeting: bytes, delay: float) -> Any:
    """A connection handler that greets ``delay`` seconds after the connect (a busy host), then
    answers every line with an error, as Dovecot's pop3 does to a probe it does not know."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        writer.write(greeting)
        try:
            while await reader.read(1024):
                writer.write(b"-ERR Unknown command.\r\n")
        except OSError:
            pass
        finally:
            writer.close()

    return serve


@pytest.mark.parametrize(
    ("greeting", "named"),
    [
        (b"+OK Dovecot (Ubuntu) ready.\r\n", ("pop3", "Dovecot pop3d")),
        (b"220 bare greeting\r\n", None),  # ftp or smtp: a bare 220 needs its question
    ],
)
def test_a_greeting_later_than_the_banner_wait_is_named_from_the_probe_answers(
    greeting: bytes, named: tuple[str, str] | None
) -> None:
    from lewis_tasks.domain.services import identify_service

    async def run() -> ServiceInfo:
        server = await asyncio.start_server(_late_greeter(greeting, 0.3), ADDRESS, 0)
        port = server.sockets[0].getsockname()[1]
        try:  # the banner wait (0.1 s) ends before the greeting; the probes' answers start with it
            return await identify_service(ADDRESS, port, banner_timeout=0.1, probe_timeout=1.0)
        finally:
            server.close()
            await server.wait_closed()

    info = asyncio.run(run())
    if named is None:
        assert info.name not in ("ftp", "smtp"), info
    else:
        assert (info.name, info.product) == named, info
        assert info.probe == "banner"
