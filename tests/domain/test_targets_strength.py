"""Targets and ports at their edges: RFC 1123 names, caps exact at the boundary, whole messages.

Written against the survivors of a mutation run (``scripts/mutation targets``): each test
pins a boundary or a message that a one-token change of the code would move. Inputs differ
from what the test expects back, so no test passes by echoing its input.
"""

from __future__ import annotations

import pytest

from lewis_tasks.domain.scope import Scope
from lewis_tasks.domain.targets import (
    ScanChunk,
    ScanHost,
    Target,
    format_ports,
    parse_ports,
    parse_target,
    parse_targets,
    plan_chunks,
    resolve_hosts,
)
from lewis_tasks.errors import InvalidInput

# ---------------------------------------------------------------- hostnames (RFC 1123)

LABEL_63 = "a" * 62 + "z"
NAME_253 = ".".join([LABEL_63, LABEL_63, LABEL_63, "b" * 61])  # 63+1+63+1+63+1+61 = 253


def refused(token: str) -> str:
    with pytest.raises(InvalidInput) as err:
        parse_target(token, max_hosts=10)
    return str(err.value)


@pytest.mark.parametrize(
    "token, name",
    [
        ("A.Example.TEST", "a.example.test"),  # one-character label
        (f"{LABEL_63.upper()}.test", f"{LABEL_63}.test"),  # 63 characters: the longest label
        (NAME_253.upper() + ".", NAME_253),  # 253 characters (and a root dot): the longest name
        ("x-1.example", "x-1.example"),  # an inner hyphen
        ("_srv.example", "_srv.example"),  # underscores occur in real DNS names
        # one label made of every allowed character: the whole alphabet is accepted, not a part
        (
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789_.test",
            "abcdefghijklmnopqrstuvwxyz-0123456789_.test",
        ),
    ],
)
def test_rfc1123_names_at_their_limits_are_accepted(token: str, name: str) -> None:
    target = parse_target(token, max_hosts=1)
    assert target == Target(token, hostname=name)


@pytest.mark.parametrize(
    "token",
    [
        "-lead.example",  # leading hyphen
        "trail-.example",  # trailing hyphen
        "mid.trail-",  # trailing hyphen on the last label
        "a..example",  # empty label
        ".",  # the root alone: no name left
        f"{'c' * 64}.test",  # 64-character label
        NAME_253 + "b",  # 254 characters
        "sp ace.example",
        "bang!.example",
    ],
)
def test_names_breaking_rfc1123_are_refused_naming_the_token(token: str) -> None:
    assert refused(token) == (f"target {token!r}: not an IP address, CIDR block or hostname")


@pytest.mark.parametrize("token", ["10.0.0.0/24/8", "::1%lo/128/8", "fe80::1%eth0/120/64"])
def test_a_block_with_two_slashes_is_no_cidr(token: str) -> None:
    # Split at the first slash: the rest is no prefix, even where the zone index (%lo) would
    # let the part before the last slash pass for an address.
    assert refused(token) == f"target {token!r}: not a CIDR block (expected ADDRESS/PREFIX)"


def test_an_empty_target_says_so() -> None:
    assert refused(" \t ") == "target '': empty"


# ---------------------------------------------------------------- caps at the boundary


@pytest.mark.parametrize(
    "block, hosts",
    [
        ("10.9.8.0/24", 254),  # network and broadcast skipped
        ("10.9.8.6/31", 2),  # a /31 keeps both (RFC 3021)
        ("10.9.8.6/32", 1),
        ("fd00::/120", 255),  # the subnet-router anycast address skipped
        ("fd00::4/127", 2),  # a /127 keeps both (RFC 6164)
        ("fd00::9/128", 1),
    ],
)
def test_the_host_cap_is_exact_at_the_boundary(block: str, hosts: int) -> None:
    target = parse_target(block, max_hosts=hosts)
    assert len(target.addresses) == hosts and target.text == block
    assert refused_at(block, hosts - 1) == (
        f"target {block!r}: {hosts} hosts, over the cap of {hosts - 1} (scan.max_hosts)"
    )


def refused_at(block: str, cap: int) -> str:
    with pytest.raises(InvalidInput) as err:
        parse_target(block, max_hosts=cap)
    return str(err.value)


def test_small_blocks_expand_to_exactly_their_hosts() -> None:
    assert parse_target("10.9.8.6/31", max_hosts=2).addresses == ("10.9.8.6", "10.9.8.7")
    assert parse_target("fd00::4/127", max_hosts=2).addresses == ("fd00::4", "fd00::5")
    assert parse_target("fd00::9/128", max_hosts=1).addresses == ("fd00::9",)
    assert parse_target("fd00::4/126", max_hosts=3).addresses == ("fd00::5", "fd00::6", "fd00::7")


@pytest.mark.parametrize(
    "block, hosts",
    [
        ("fd00::/64", 2**64 - 1),
        ("fd00::/16", 2**112 - 1),
        ("::/0", 2**128 - 1),
        ("10.0.0.0/8", 2**24 - 2),
    ],
)
def test_huge_blocks_are_refused_at_once_without_enumerating(block: str, hosts: int) -> None:
    # Enumerating 2**64 addresses would never finish: reaching the assertion is the proof.
    assert refused_at(block, 65_536) == (
        f"target {block!r}: {hosts} hosts, over the cap of 65536 (scan.max_hosts)"
    )


def test_the_cap_over_all_tokens_is_exact_and_counts_a_name_as_one_host() -> None:
    tokens = ["10.1.0.0/29", "db.example", "10.2.0.0/30"]  # 6 + 1 + 2 hosts
    assert [t.text for t in parse_targets(tokens, max_hosts=9)] == tokens
    with pytest.raises(InvalidInput) as err:
        parse_targets(tokens, max_hosts=8)
    assert str(err.value) == (
        "targets: 9 hosts or more, over the cap of 8 (scan.max_hosts), reached at '10.2.0.0/30'"
    )
    assert len(parse_targets(["a.example", "b.example"], max_hosts=2)) == 2


def test_no_tokens_at_all_is_refused_with_its_message() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_targets([",", "  "], max_hosts=5)
    assert str(err.value) == "targets: none given"


def test_targets_and_hosts_travel_as_plain_dicts() -> None:
    assert parse_target("10.4.4.4/31", max_hosts=2).to_dict() == {
        "text": "10.4.4.4/31",
        "addresses": ["10.4.4.4", "10.4.4.5"],
        "hostname": None,
    }
    assert parse_target("Web.Example", max_hosts=1).to_dict() == {
        "text": "Web.Example",
        "addresses": [],
        "hostname": "web.example",
    }
    assert ScanHost("10.4.4.9", "web.example").to_dict() == {
        "address": "10.4.4.9",
        "hostname": "web.example",
    }


def test_hosts_from_a_name_carry_that_name() -> None:
    hosts = resolve_hosts(parse_targets(["LocalHost"], max_hosts=1), Scope.from_allow())
    assert {h.address for h in hosts} == {"127.0.0.1", "::1"}
    assert {h.hostname for h in hosts} == {"localhost"}


# ---------------------------------------------------------------- ports: whole messages


def port_error(spec: str) -> str:
    with pytest.raises(InvalidInput) as err:
        parse_ports(spec)
    return str(err.value)


@pytest.mark.parametrize(
    "spec, token",
    [
        ("22,x-5", "x-5"),  # bad low end
        ("22,5-y", "5-y"),  # bad high end
        ("22,http", "http"),  # a lone token
        ("443,1-2-3", "1-2-3"),
        ("22,XX-XX", "XX-XX"),  # letters around a dash are no range, nor "every port"
    ],
)
def test_a_bad_token_is_named_apart_from_its_spec(spec: str, token: str) -> None:
    assert port_error(spec) == (
        f"port spec {spec!r}: bad token {token!r} (expected N, N-M, N-, -M, - or topN)"
    )


def test_out_of_range_and_backwards_tokens_say_why() -> None:
    assert port_error("22,0-5") == "port spec '22,0-5': bad token '0-5' (ports run from 1 to 65535)"
    assert port_error("22,0-1-2") == (
        "port spec '22,0-1-2': bad token '0-1-2' (ports run from 1 to 65535)"
    )  # read left to right
    assert port_error("22,9-7") == "port spec '22,9-7': bad token '9-7' (range runs backwards)"
    assert port_error("80,top0") == (
        "port spec '80,top0': bad token 'top0' (topN takes N from 1 to 1000)"
    )


@pytest.mark.parametrize("spec", ["   ", "\t"])
def test_a_blank_spec_is_empty_not_a_stray_comma(spec: str) -> None:
    assert port_error(spec) == "port spec '': empty (try 22,80,443 or 1-1024 or - or top100)"


def test_one_port_ranges_and_top_one() -> None:
    assert parse_ports("5-5") == [5]
    assert parse_ports("top1") == [80]
    assert (
        parse_ports("TOP-3") == parse_ports("top3") == [23, 80, 443]
    )  # nmap's --top-ports spelling


# ---------------------------------------------------------------- chunks


def test_a_chunk_of_one_port_is_allowed() -> None:
    chunks = plan_chunks([ScanHost("10.3.3.3")], [443, 22], chunk_ports=1, max_ports_total=2)
    assert [(c.ports, c.port_count) for c in chunks] == [("22", 1), ("443", 1)]


def test_the_probe_cap_is_exact_and_chunk_size_is_checked() -> None:
    hosts = [ScanHost("10.3.3.3"), ScanHost("10.3.3.4")]
    assert len(plan_chunks(hosts, range(1, 6), chunk_ports=5, max_ports_total=10)) == 2
    with pytest.raises(InvalidInput) as err:
        plan_chunks(hosts, range(1, 6), chunk_ports=5, max_ports_total=9)
    assert str(err.value) == (
        "scan of 2 hosts × 5 ports = 10 probes is over the cap of 9 (scan.max_ports_total)"
    )
    with pytest.raises(InvalidInput) as err:
        plan_chunks(hosts, [1], chunk_ports=0, max_ports_total=10)
    assert str(err.value) == "chunk size 0: must be at least 1"


def test_chunks_keep_the_hostname_and_travel_as_dicts() -> None:
    [chunk] = plan_chunks(
        [ScanHost("10.3.3.3", "db.example")], [5432, 5433], chunk_ports=4, max_ports_total=2
    )
    assert chunk == ScanChunk("10.3.3.3", "db.example", "5432-5433", 2)
    assert chunk.to_dict() == {
        "address": "10.3.3.3",
        "hostname": "db.example",
        "ports": "5432-5433",
        "port_count": 2,
    }


def test_a_chunk_from_the_wire_keeps_its_count_and_its_missing_hostname() -> None:
    sent = ScanChunk.from_dict({"address": "10.3.3.3", "ports": "1-4", "port_count": 9})
    assert sent == ScanChunk("10.3.3.3", None, "1-4", 9)  # the sender's count, not recomputed
    assert ScanChunk.from_dict(
        {"address": "10.3.3.3", "hostname": None, "ports": "1-4,9"}
    ) == ScanChunk("10.3.3.3", None, "1-4,9", 5)


def test_format_ports_joins_runs_and_singles() -> None:
    assert format_ports([9, 1, 2, 3, 7, 8, 12]) == "1-3,7-9,12"
    assert format_ports([65535]) == "65535"
    assert format_ports([]) == ""
