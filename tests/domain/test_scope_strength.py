"""The scope policy at its edges: what the mutation run of domain/scope.py showed untested.

Each test pins one behaviour a one-token change to scope.py would alter: how an allowlist entry
is read (single address, CIDR with host bits, mapped CIDR, zoned CIDR, hostname with a
trailing dot or a hyphen, an empty entry between others), the exact refusal messages, which
host vouches for an address, and what the resolvers ask the system resolver (the port, TCP
only) and what they never ask it (literals, localhost aliases).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Any

import pytest

from lewis_tasks.domain.scope import Scope, never_allowed, parse_ip
from lewis_tasks.errors import InvalidInput, OutOfScope

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- reading the allowlist ---------------------------------------------------------------


def test_blank_entries_are_skipped_and_the_entries_after_them_still_read() -> None:
    scope = Scope.from_allow(
        ["", "10.1.1.1", "  ", "192.168.0.0/16", "", "db.lab.test", "\t", "fd00::/64"]
    )
    assert scope.networks == (V4("10.1.1.1/32"), V4("192.168.0.0/16"), V6("fd00::/64"))
    assert scope.hostnames == ("db.lab.test",)


def test_a_single_address_entry_in_any_spelling_is_its_own_host_network() -> None:
    # every form parse_ip reads, not only what ipaddress.ip_network would take
    scope = Scope.from_allow(
        [
            "0x0a.7",
            "3232235777",
            "0300.0250.1.2",
            "[fd00::9]",
            "fe80::1%eth0",
            "::ffff:10.0.0.5",
            "172.16.0.3.",
        ]
    )
    assert scope.networks == (
        V4("10.0.0.7/32"),
        V4("192.168.1.1/32"),
        V4("192.168.1.2/32"),
        V6("fd00::9/128"),
        V6("fe80::1/128"),
        V4("10.0.0.5/32"),
        V4("172.16.0.3/32"),
    )
    assert scope.hostnames == ()
    assert scope.check_address("10.7") == addr("10.0.0.7")
    with pytest.raises(OutOfScope):
        scope.check_address("10.0.0.8")


def test_a_zoned_cidr_entry_is_its_network_not_the_one_address() -> None:
    # "/" present: the entry is a CIDR, whatever parse_ip would make of the text before it
    scope = Scope.from_allow(["fe80::1%eth0/64"])
    assert scope.networks == (V6("fe80::/64"),)
    assert scope.check_address("fe80::abcd") == addr("fe80::abcd")


def test_a_cidr_entry_with_host_bits_is_its_whole_network() -> None:
    scope = Scope.from_allow(["10.20.30.40/8", "fd00::7:1/112"])
    assert scope.networks == (V4("10.0.0.0/8"), V6("fd00::7:0/112"))
    assert scope.check_address("10.255.0.1") == addr("10.255.0.1")
    assert scope.check_address("fd00::7:ffff") == addr("fd00::7:ffff")
    for outside in ("11.0.0.0", "fd00::8:0"):
        with pytest.raises(OutOfScope, match="not in the allowlist"):
            scope.check_address(outside)


@pytest.mark.parametrize(
    ("entry", "network"),
    [
        ("::ffff:0.0.0.0/96", V4("0.0.0.0/0")),  # the whole mapped space: every IPv4 address
        ("::ffff:10.0.0.0/104", V4("10.0.0.0/8")),
        ("::ffff:10.9.8.7/104", V4("10.0.0.0/8")),  # host bits dropped, as for any CIDR
        ("::ffff:192.168.4.0/120", V4("192.168.4.0/24")),
        ("::ffff:10.0.0.5/128", V4("10.0.0.5/32")),
    ],
)
def test_a_mapped_cidr_entry_is_the_ipv4_network_it_maps(entry: str, network: V4) -> None:
    assert Scope.from_allow([entry]).networks == (network,)


def test_a_mapped_prefix_below_96_stays_ipv6_and_allows_no_ipv4() -> None:
    # /95 clears the last bit of ffff: the network is ::fffe:0:0/95, an IPv6 range. A socket
    # to one of its mapped addresses connects as IPv4, which an IPv6 entry never allows.
    scope = Scope.from_allow(["::ffff:0:0/95"])
    assert scope.networks == (V6("::fffe:0:0/95"),)
    assert scope.check_address("::fffe:1:2") == addr("::fffe:1:2")
    for ipv4 in ("10.0.0.1", "::ffff:10.0.0.1"):
        with pytest.raises(
            OutOfScope,
            match=r"^10\.0\.0\.1 is out of scope: not in the allowlist "
            r"::fffe:0:0/95$",
        ):
            scope.check_address(ipv4)


def test_hostname_entries_lose_case_and_trailing_dots() -> None:
    scope = Scope.from_allow(["DB.Lab.Test.", "*.Apps.Test", "my-lab.test", "a-b-c.x-y."])
    assert scope.hostnames == ("db.lab.test", "*.apps.test", "my-lab.test", "a-b-c.x-y")
    assert scope.allows_name("db.lab.test..") and scope.allows_name("WEB.apps.test.")
    assert not scope.allows_name("db.lab.test.x") and not scope.allows_name("apps.test")


@pytest.mark.parametrize(
    "entry",
    [
        "lab_1.test.",
        "lab.test-.",
        "-lab.test.",
        "a..",
        "x.y_.",
        "*.lab_1.test",
        "*.-lab.test",
        "*.lab.test-",
        "*..test",
    ],
)
def test_a_bad_name_is_refused_with_a_trailing_dot_or_after_a_wildcard(entry: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Scope.from_allow(["127.0.0.0/8", entry])
    assert str(refused.value) == f"scope entry {entry!r}: not a CIDR, address or hostname"


@pytest.mark.parametrize("entry", ["*", "*.", " * "])
def test_a_bare_wildcard_is_refused_since_dns_would_decide_the_scope(entry: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Scope.from_allow(["10.0.0.0/8", entry])
    assert str(refused.value) == (
        f"scope entry {entry.strip()!r}: a wildcard needs a domain "
        "(*.lab.example); list CIDRs to widen the scope"
    )


def test_a_wildcard_name_vouches_for_its_names_only_never_for_no_name() -> None:
    scope = Scope.from_allow(["*.lab.test"])
    assert scope.check_peer("10.3.3.3", "any.lab.test") == addr("10.3.3.3")
    for host in (None, "10.3.3.3", "[fd00::3]", "lab.test", "any.lab.test.evil"):
        with pytest.raises(
            OutOfScope,
            match=r"^10\.3\.3\.3 .*is out of scope: not in the "
            r"allowlist \(empty\)$",
        ):
            scope.check_peer("10.3.3.3", host)


# --- never-allowed classes and the refusal messages -------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("239.1.2.3", "multicast address"),
        ("ff05::2", "multicast address"),
        ("255.255.255.255", "broadcast address"),
    ],
)
def test_each_never_allowed_class_is_named(address: str, reason: str) -> None:
    assert never_allowed(addr(address)) == reason
    scope = Scope.from_allow(["0.0.0.0/0", "::/0"])
    with pytest.raises(
        OutOfScope,
        match=rf"^{re.escape(address)} is out of scope: {reason}es are never "
        r"allowed$",
    ):
        scope.check_address(address)
    with pytest.raises(
        OutOfScope,
        match=rf"^{re.escape(address)} is out of scope: {reason}es are never "
        r"allowed$",
    ):
        scope.check_peer(address, "db.lab.test")


@pytest.mark.parametrize("address", ["10.0.0.1", "255.255.255.254", "223.255.255.255", "fd00::1"])
def test_ordinary_addresses_have_no_never_allowed_reason(address: str) -> None:
    assert never_allowed(addr(address)) is None


def test_the_refusal_lists_the_allowlist_or_says_it_is_empty() -> None:
    with pytest.raises(OutOfScope) as empty:
        Scope.from_allow([]).check_address("127.0.0.1")
    assert str(empty.value) == "127.0.0.1 is out of scope: not in the allowlist (empty)"
    with pytest.raises(OutOfScope) as listed:
        Scope.from_allow(["10.0.0.0/8", "fd00::/64", "lab.test"]).check_address("192.0.2.1")
    assert str(listed.value) == (
        "192.0.2.1 is out of scope: not in the allowlist 10.0.0.0/8, fd00::/64"
    )


def test_the_name_is_shown_only_when_it_is_not_the_address_itself() -> None:
    scope = Scope.from_allow(["10.0.0.0/8"])
    with pytest.raises(OutOfScope) as same:
        scope.check_address("192.0.2.7", via="192.0.2.7")
    assert str(same.value) == "192.0.2.7 is out of scope: not in the allowlist 10.0.0.0/8"
    with pytest.raises(OutOfScope) as named:
        scope.check_address("192.0.2.7", via="printer.lan")
    assert str(named.value) == (
        "192.0.2.7 (printer.lan resolves there) is out of scope: not in the allowlist 10.0.0.0/8"
    )


# --- parse_ip's brackets and zones --------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["[fd00::1", "fd00::1]", "[10.0.0.1", "10.0.0.1]", "[::1", "[[::1]]"]
)
def test_an_unbalanced_bracket_is_no_address(text: str) -> None:
    assert parse_ip(text) is None


def test_only_the_first_percent_starts_the_zone() -> None:
    parsed = parse_ip("fe80::7%eth0%1")
    assert parsed == ipaddress.IPv6Address("fe80::7")
    assert isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is None


# --- check_peer with address objects, and who vouches -------------------------------------


def test_check_peer_takes_address_objects_and_unmaps_them() -> None:
    scope = Scope.from_allow(["10.0.0.0/8"])
    assert scope.check_peer(addr("10.1.2.3"), None) == addr("10.1.2.3")
    unmapped = scope.check_peer(ipaddress.IPv6Address("::ffff:10.1.2.3"), "db.test")
    assert unmapped == addr("10.1.2.3") and isinstance(unmapped, ipaddress.IPv4Address)
    with pytest.raises(OutOfScope, match=r"^192\.0\.2\.1 \(db\.test resolves there\)"):
        scope.check_peer(ipaddress.IPv6Address("::ffff:192.0.2.1"), "db.test")


def test_a_localhost_alias_vouches_and_is_reported_as_localhost() -> None:
    vouched = Scope.from_allow(["localhost"])
    assert vouched.check_peer("127.0.0.1", "api.LOCALHOST.") == addr("127.0.0.1")
    narrow = Scope.from_allow(["127.0.0.2/32"])
    with pytest.raises(OutOfScope) as refused:
        narrow.check_peer("127.0.0.1", "api.localhost")
    assert str(refused.value) == (
        "127.0.0.1 (localhost resolves there) is out of scope: not in the allowlist 127.0.0.2/32"
    )


# --- the resolvers: what they ask the system, and what they never ask ---------------------


class Recorder:
    """A system resolver, sync and async: answers every name with ``answer`` (or fails) and
    records host, port and socket type of each question, however they were passed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *answer: str, error: bool = False) -> None:
        self.asked: list[tuple[str, Any, Any]] = []
        self.answer, self.error = answer, error
        recorder = self

        def getaddrinfo(
            host: Any,
            port: Any,
            family: Any = 0,
            type: Any = 0,  # noqa: A002
            proto: Any = 0,
            flags: Any = 0,
        ) -> list[Any]:
            recorder.asked.append((host, port, type))
            if recorder.error:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port or 0),
                )
                for a in recorder.answer
            ]

        async def loop_getaddrinfo(
            self: Any,
            host: Any,
            port: Any,
            *,
            family: Any = 0,
            type: Any = 0,
            proto: Any = 0,  # noqa: A002
            flags: Any = 0,
        ) -> list[Any]:
            return getaddrinfo(host, port, family, type, proto, flags)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", loop_getaddrinfo)


SCOPE = Scope.from_allow(["10.0.0.0/8", "fd00::/64", "localhost"])


def test_resolve_asks_for_the_port_given_and_tcp_only(monkeypatch: pytest.MonkeyPatch) -> None:
    system = Recorder(monkeypatch, "10.0.0.4", "fd00::4", "10.0.0.4")
    assert SCOPE.resolve("app.test", 8443) == [addr("10.0.0.4"), addr("fd00::4")]
    assert SCOPE.resolve("app.test") == [addr("10.0.0.4"), addr("fd00::4")]
    assert system.asked == [
        ("app.test", 8443, socket.SOCK_STREAM),
        ("app.test", 0, socket.SOCK_STREAM),
    ]


def test_resolve_async_asks_for_the_port_given_and_tcp_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system = Recorder(monkeypatch, "fd00::4", "10.0.0.4", "fd00::4")
    assert asyncio.run(SCOPE.resolve_async("app.test", 8443)) == [addr("fd00::4"), addr("10.0.0.4")]
    assert asyncio.run(SCOPE.resolve_async("app.test")) == [addr("fd00::4"), addr("10.0.0.4")]
    assert system.asked == [
        ("app.test", 8443, socket.SOCK_STREAM),
        ("app.test", 0, socket.SOCK_STREAM),
    ]


@pytest.mark.parametrize(
    ("literal", "address"),
    [
        ("10.0.0.9", "10.0.0.9"),
        ("0x0a.9", "10.0.0.9"),
        ("167772169", "10.0.0.9"),
        ("[fd00::9]", "fd00::9"),
        ("::ffff:10.0.0.9", "10.0.0.9"),
    ],
)
def test_both_resolvers_answer_a_literal_themselves(
    monkeypatch: pytest.MonkeyPatch, literal: str, address: str
) -> None:
    system = Recorder(monkeypatch, "10.0.0.1")  # would answer something else
    assert SCOPE.resolve(literal, 80) == [addr(address)]
    assert asyncio.run(SCOPE.resolve_async(literal, 80)) == [addr(address)]
    assert system.asked == []


def test_both_resolvers_let_a_listed_localhost_vouch_for_its_aliases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system = Recorder(monkeypatch, "10.0.0.1")
    scope = Scope.from_allow(["localhost"])  # no loopback network: only the name allows them
    loopback = [addr("127.0.0.1"), addr("::1")]
    assert scope.resolve("svc.localhost") == loopback
    assert asyncio.run(scope.resolve_async("svc.localhost")) == loopback
    narrow = Scope.from_allow(["::1"])
    for refused in (
        lambda: narrow.resolve("localhost"),
        lambda: asyncio.run(narrow.resolve_async("localhost")),
    ):
        with pytest.raises(OutOfScope, match=r"^127\.0\.0\.1 \(localhost resolves there\)"):
            refused()
    assert system.asked == []


def test_both_resolvers_name_a_failed_or_empty_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    Recorder(monkeypatch, error=True)
    with pytest.raises(InvalidInput) as failed:
        SCOPE.resolve("gone.test")
    assert str(failed.value) == "cannot resolve 'gone.test': Name or service not known"
    with pytest.raises(InvalidInput) as failed_async:
        asyncio.run(SCOPE.resolve_async("gone.test"))
    assert str(failed_async.value) == "cannot resolve 'gone.test': Name or service not known"
    Recorder(monkeypatch)
    for empty in (
        lambda: SCOPE.resolve("void.test"),
        lambda: asyncio.run(SCOPE.resolve_async("void.test")),
    ):
        with pytest.raises(InvalidInput) as nothing:
            empty()
        assert str(nothing.value) == "'void.test' resolves to no address"
