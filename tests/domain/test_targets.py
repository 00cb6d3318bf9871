"""Targets and port specs: every form nmap users type, every error path, caps and chunking."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from lewis_tasks.domain.scope import Scope
from lewis_tasks.domain.targets import (
    ScanChunk,
    ScanHost,
    format_ports,
    parse_ports,
    parse_target,
    parse_targets,
    plan_chunks,
    ranked_top_ports,
    resolve_hosts,
    resolve_hosts_async,
)
from lewis_tasks.errors import InvalidInput, OutOfScope

# ---------------------------------------------------------------- targets


@pytest.mark.parametrize(
    "token, addresses",
    [
        ("127.0.0.1", ("127.0.0.1",)),
        ("2130706433", ("127.0.0.1",)),  # libc's decimal form
        ("0x7f.1", ("127.0.0.1",)),
        ("::1", ("::1",)),
        ("[::1]", ("::1",)),
        ("::ffff:127.0.0.5", ("127.0.0.5",)),  # mapped IPv6 is the IPv4 it carries
        ("10.0.0.0/30", ("10.0.0.1", "10.0.0.2")),  # network and broadcast skipped
        ("10.0.0.0/31", ("10.0.0.0", "10.0.0.1")),
        ("10.0.0.7/32", ("10.0.0.7",)),
        ("10.0.0.5/30", ("10.0.0.5", "10.0.0.6")),  # host bits ignored
        ("fd00::/126", ("fd00::1", "fd00::2", "fd00::3")),
        ("::1/128", ("::1",)),
    ],
)
def test_addresses_and_blocks_expand(token: str, addresses: tuple[str, ...]) -> None:
    target = parse_target(token, max_hosts=16)
    assert target.addresses == addresses and target.hostname is None


def test_hostnames_stay_names_until_scan_time() -> None:
    target = parse_target("Scanme.Example.TEST.", max_hosts=1)
    assert target.hostname == "scanme.example.test" and target.addresses == ()


@pytest.mark.parametrize(
    "token, fragment",
    [
        ("300.1.1.1", "'300.1.1.1'"),
        ("-bad.example", "'-bad.example'"),
        ("a..b", "'a..b'"),
        ("bad host!", "'bad host!'"),
        ("10.0.0.0/33", "/33"),
        ("::1/129", "/129"),
        ("10.0.0.0/x", "'10.0.0.0/x'"),
        ("nothere/24", "'nothere/24'"),
        ("   ", "empty"),
    ],
)
def test_malformed_targets_name_the_token(token: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_target(token, max_hosts=1000)
    assert fragment in str(err.value)


def test_cidr_over_the_cap_is_refused_naming_the_cap() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_target("10.0.0.0/24", max_hosts=100)
    assert "254 hosts" in str(err.value) and "100" in str(err.value)
    assert "'10.0.0.0/24'" in str(err.value)


def test_the_cap_counts_all_tokens_together() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_targets(["10.0.0.0/29", "10.0.1.0/29"], max_hosts=10)
    assert "10" in str(err.value) and "'10.0.1.0/29'" in str(err.value)
    assert len(parse_targets(["10.0.0.0/29"], max_hosts=10)) == 1


def test_tokens_split_on_commas_and_spaces() -> None:
    targets = parse_targets(["127.0.0.1,::1", "localhost 127.0.0.2"], max_hosts=10)
    assert [t.text for t in targets] == ["127.0.0.1", "::1", "localhost", "127.0.0.2"]
    with pytest.raises(InvalidInput, match="none given"):
        parse_targets([" , "], max_hosts=10)


def test_resolution_checks_every_address_against_the_scope() -> None:
    scope = Scope.from_allow()
    targets = parse_targets(["127.0.0.1", "localhost", "::1", "127.0.0.1"], max_hosts=10)
    hosts = resolve_hosts(targets, scope)
    assert {h.address for h in hosts} == {
        "127.0.0.1",
        "::1",
    }  # localhost is loopback, both families
    assert len({h.address for h in hosts}) == len(hosts)  # each address once
    assert ScanHost("127.0.0.1") in hosts  # named first as a literal, so no hostname
    assert asyncio.run(resolve_hosts_async(targets, scope)) == hosts


@pytest.mark.parametrize("token", ["10.0.0.1", "0.0.0.0", "192.168.0.0/30"])
def test_addresses_outside_the_scope_are_refused(token: str) -> None:
    targets = parse_targets([token], max_hosts=10)
    with pytest.raises(OutOfScope):
        resolve_hosts(targets, Scope.from_allow())
    with pytest.raises(OutOfScope):
        asyncio.run(resolve_hosts_async(targets, Scope.from_allow()))


def test_a_narrow_scope_refuses_the_rest_of_loopback() -> None:
    scope = Scope.from_allow(["127.0.0.2/32"])
    assert resolve_hosts(parse_targets(["127.0.0.2"], max_hosts=1), scope)
    with pytest.raises(OutOfScope):
        resolve_hosts(parse_targets(["127.0.0.1"], max_hosts=1), scope)


# ---------------------------------------------------------------- ports


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("22,80,443", [22, 80, 443]),
        ("443, 22 ,80,22", [22, 80, 443]),
        ("1-5", [1, 2, 3, 4, 5]),
        ("65530-", list(range(65530, 65536))),
        ("-3", [1, 2, 3]),
        ("1-3,2-4", [1, 2, 3, 4]),
        ("top3", [23, 80, 443]),
    ],
)
def test_port_specs(spec: str, expected: list[int]) -> None:
    assert parse_ports(spec) == expected


def test_dash_is_every_port() -> None:
    assert parse_ports("-") == list(range(1, 65536))


def test_top_ports_follow_nmaps_ranking() -> None:
    ranked = ranked_top_ports()
    assert len(ranked) == 1000 and len(set(ranked)) == 1000
    assert ranked[:5] == (80, 23, 443, 21, 22)
    top100 = parse_ports("top100")
    assert len(top100) == 100 and {22, 80, 443, 3306, 5432, 8080} <= set(top100)
    assert parse_ports("TOP1000") == sorted(ranked)


@pytest.mark.parametrize(
    "spec, token",
    [
        ("22,,80", "empty token"),
        ("22,", "empty token"),
        ("0", "'0'"),
        ("65536", "'65536'"),
        ("80-22", "'80-22'"),
        ("1-2-3", "'1-2-3'"),
        ("ssh", "'ssh'"),
        ("8o", "'8o'"),
        ("top0", "'top0'"),
        ("top1001", "'top1001'"),
        ("topx", "'topx'"),
        ("", "empty"),
    ],
)
def test_malformed_port_specs_name_the_token(spec: str, token: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_ports(spec)
    assert token in str(err.value)


def test_format_ports_is_the_inverse_of_parse_ports() -> None:
    rng = random.Random(4)
    for _ in range(50):
        ports = sorted(set(rng.sample(range(1, 65536), rng.randint(1, 400))))
        assert parse_ports(format_ports(ports)) == ports
    assert format_ports([5, 1, 2, 3, 80]) == "1-3,5,80"
    assert format_ports(range(65535, 0, -1)) == "1-65535" and format_ports([7, 7]) == "7"


# ---------------------------------------------------------------- chunks


def test_chunks_cover_hosts_times_ports_exactly_once() -> None:
    hosts = [ScanHost("127.0.0.1"), ScanHost("::1", "localhost")]
    chunks = plan_chunks(hosts, range(1, 65536), chunk_ports=8192, max_ports_total=200_000)
    assert len(chunks) == 2 * 8
    assert all(c.port_count <= 8192 for c in chunks)
    for host in hosts:
        covered = [p for c in chunks if c.address == host.address for p in c.port_list()]
        assert sorted(covered) == list(range(1, 65536))


def test_chunks_travel_as_json() -> None:
    chunks = plan_chunks(
        [ScanHost("127.0.0.1", "localhost")],
        [22, 80, 81, 82, 443],
        chunk_ports=3,
        max_ports_total=10,
    )
    wire = json.loads(json.dumps([c.to_dict() for c in chunks]))
    assert [ScanChunk.from_dict(d) for d in wire] == chunks
    assert [c.ports for c in chunks] == ["22,80-81", "82,443"]


def test_over_cap_scans_are_refused_naming_the_cap() -> None:
    hosts = [ScanHost(f"127.0.0.{i}") for i in range(1, 5)]
    with pytest.raises(InvalidInput) as err:
        plan_chunks(hosts, range(1, 1001), chunk_ports=100, max_ports_total=3999)
    assert "4000" in str(err.value) and "3999" in str(err.value)
    with pytest.raises(InvalidInput):
        plan_chunks(hosts, [1], chunk_ports=0, max_ports_total=10)


# ---------------------------------------------------------------- non-ASCII digits and long numbers


@pytest.mark.parametrize(
    "spec, token",
    [
        ("١٢٣", "'١٢٣'"),  # Arabic-Indic digits: str.isdigit() is true and int() reads 123
        ("²", "'²'"),  # superscript two: isdigit() is true and int() raises ValueError
        ("22-٨٠", "'22-٨٠'"),
        ("top١٠٠", "'top١٠٠'"),
        ("top²", "'top²'"),
        ("9" * 5000, "ports run from 1 to 65535"),  # int() refuses past 4300 digits
        ("top" + "9" * 5000, "topN takes N"),
        ("0" * 40 + "80-" + "0" * 40 + "81", None),  # leading zeros are still the number
    ],
)
def test_port_specs_take_ascii_digits_only(spec: str, token: str | None) -> None:
    if token is None:
        assert parse_ports(spec) == [80, 81]
        return
    with pytest.raises(InvalidInput) as err:
        parse_ports(spec)
    assert token in str(err.value)


@pytest.mark.parametrize("token", ["10.0.0.0/٢٤", "10.0.0.0/²", "::1/١٢٨"])
def test_cidr_prefixes_take_ascii_digits_only(token: str) -> None:
    with pytest.raises(InvalidInput, match="not a CIDR block"):
        parse_target(token, max_hosts=1000)


def test_a_prefix_of_thousands_of_digits_is_too_long_not_a_crash() -> None:
    with pytest.raises(InvalidInput, match="too long for IPv4"):
        parse_target("10.0.0.0/" + "9" * 5000, max_hosts=1000)
    assert parse_target("10.0.0.0/" + "0" * 50 + "32", max_hosts=1).addresses == ("10.0.0.0",)


def test_a_hostname_is_ascii_as_typed() -> None:
    # 'K' (Kelvin sign) lowercases to 'k': the name scanned must be the name given
    with pytest.raises(InvalidInput, match="not an IP address, CIDR block or hostname"):
        parse_target("\u212aali.example", max_hosts=1)
