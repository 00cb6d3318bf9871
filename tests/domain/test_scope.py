"""The scope policy: loopback by default, every spelling normalised, never-allowed classes."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from lewis_tasks.domain.scope import DEFAULT_ALLOW, Scope, parse_ip
from lewis_tasks.errors import InvalidInput, OutOfScope


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "::ffff:127.0.0.1",
        "[::ffff:7f00:1]",
        "127.0.0.1.",
    ],
)
def test_every_spelling_of_loopback_is_the_same_address(spelling: str) -> None:
    assert str(parse_ip(spelling)) == "127.0.0.1"


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"])
def test_never_allowed_classes_are_refused_even_if_listed(address: str) -> None:
    scope = Scope.from_allow(["0.0.0.0/0", "::/0"])
    with pytest.raises(OutOfScope, match="never allowed"):
        scope.check_address(address)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "192.168.1.1", "8.8.8.8", "::ffff:10.0.0.1", "167772161", "2001:db8::1"]
)
def test_default_scope_is_loopback_only(address: str) -> None:
    with pytest.raises(OutOfScope, match="out of scope"):
        Scope.from_allow(DEFAULT_ALLOW).check_address(address)


def test_allowed_addresses_pass_normalised() -> None:
    scope = Scope.from_allow(DEFAULT_ALLOW)
    assert str(scope.check_address("::1")) == "::1"
    assert str(scope.check_address("127.1")) == "127.0.0.1"
    assert [str(a) for a in scope.resolve("localhost")] in (
        ["127.0.0.1"],
        ["::1", "127.0.0.1"],
        ["127.0.0.1", "::1"],
    )


def test_a_narrowed_scope_refuses_the_rest_of_loopback() -> None:
    scope = Scope.from_allow(["127.0.0.2/32"])
    assert str(scope.check_address("127.0.0.2")) == "127.0.0.2"
    with pytest.raises(OutOfScope):
        scope.check_address("127.0.0.1")
    with pytest.raises(OutOfScope):
        scope.resolve("localhost")  # the name is not listed, and its address is outside


def test_hostname_entries_and_bad_entries() -> None:
    scope = Scope.from_allow(["*.lab.test", "127.0.0.0/8"])
    assert scope.allows_name("a.lab.test") and not scope.allows_name("lab.test.evil")
    with pytest.raises(InvalidInput, match="not a CIDR"):
        Scope.from_allow(["not a host!"])


# --- embedded IPv4: only the mapped form is IPv4 (issue 12, item 2) ------------------------


def test_only_the_ipv4_mapped_form_is_read_as_ipv4() -> None:
    assert parse_ip("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")
    assert parse_ip("::10.1.2.3") == ipaddress.IPv6Address("::a01:203")  # compatible: IPv6


@pytest.mark.parametrize(
    ("spelling", "connected_as"),
    [
        ("::127.0.0.1", "::7f00:1"),  # IPv4-compatible
        ("2002:7f00:1::1", "2002:7f00:1::1"),  # 6to4 of 127.0.0.1
        ("64:ff9b::127.0.0.1", "64:ff9b::7f00:1"),  # NAT64 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:0:4136:e378:8000:63bf:80ff:fffe"),  # Teredo
    ],
)
def test_other_embedded_ipv4_forms_are_checked_as_the_ipv6_they_are(
    spelling: str, connected_as: str
) -> None:
    # Given the default scope, which allows 127.0.0.0/8 and ::1
    # When an IPv6 address that embeds IPv4 is checked, Then it is refused as that IPv6 address
    with pytest.raises(OutOfScope, match="not in the allowlist") as refused:
        Scope.from_allow(DEFAULT_ALLOW).check_address(spelling)
    assert str(refused.value).startswith(f"{connected_as} is out of scope")
    # and a scope that names the IPv6 range lets it through, still as IPv6
    named = Scope.from_allow(["::7f00:0/104", "2002::/16", "64:ff9b::/96", "2001::/32"])
    assert named.check_address(spelling) == ipaddress.IPv6Address(connected_as)


# --- one reading of a host (item 3) -------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "127%1",
        "127.0.0.1%2e.evil.test",
        "0x7f.1%eth0",
        "2130706433%1",
        "1.2.3.4.5",
        "0x100000000",
        "1.2.3.256",
        "08.0.0.1",
        "1_0.0.0.1",
        "١٢٧.0.0.1",
        "127.0.0.1 x",
        "",
        "[]",
        "0x7g.1",
    ],
)
def test_texts_that_are_no_address(text: str) -> None:
    assert parse_ip(text) is None


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("4294967295", "255.255.255.255"),
        ("1.256", "1.0.1.0"),
        ("0x7F.0X1", "127.0.0.1"),
        ("0.0x10.010", "0.16.0.8"),
        ("1.2.3.4.", "1.2.3.4"),
        ("0x", "0.0.0.0"),
        ("fe80::1%eth0", "fe80::1"),
        ("[::ffff:a00:1]", "10.0.0.1"),
    ],
)
def test_legacy_and_zoned_spellings(text: str, address: str) -> None:
    assert str(parse_ip(text)) == address


def test_a_percent_outside_ipv6_is_no_zone_id() -> None:
    scope = Scope.from_allow(["0.0.0.0/1"])  # 0.0.0.127 would be inside, if "127%1" meant it
    with pytest.raises(InvalidInput, match="is not an IP address") as refused:
        scope.check_address("127%1")
    assert type(refused.value) is InvalidInput
    with pytest.raises(OutOfScope, match="is not an IP address; refused"):
        scope.check_peer("127.0.0.1%2e.evil.test", None)


# --- the allowlist's own entries (issue 19) -----------------------------------------------


def test_an_ipv4_mapped_cidr_entry_allows_the_ipv4_range() -> None:
    scope = Scope.from_allow(["::ffff:10.0.0.0/104"])
    assert scope.networks == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert scope.check_address("10.200.3.4") == ipaddress.IPv4Address("10.200.3.4")
    assert scope.check_address("::ffff:10.9.9.9") == ipaddress.IPv4Address("10.9.9.9")
    for outside in ("11.0.0.1", "9.255.255.255", "::a00:1"):
        with pytest.raises(OutOfScope, match="not in the allowlist 10.0.0.0/8"):
            scope.check_address(outside)


def test_an_entry_with_a_host_part_means_its_network() -> None:
    scope = Scope.from_allow(["127.0.0.1/8", "fd00::5/126"])
    assert scope.networks == (
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv6Network("fd00::4/126"),
    )
    assert str(scope.check_address("127.200.0.9")) == "127.200.0.9"
    assert str(scope.check_address("fd00::7")) == "fd00::7"
    with pytest.raises(OutOfScope):
        scope.check_address("fd00::8")


LONG_LABEL = "a" * 63
NAME_253 = ".".join([LONG_LABEL] * 3 + ["b" * 61])  # 63*3 + 61 + 3 dots = 253


@pytest.mark.parametrize(
    "entry",
    [
        "-lab.test",
        "lab-.test",
        "a..test",
        ".test",
        "a" * 64 + ".test",
        NAME_253 + "c",
        "x" + NAME_253,
        "lab_1.test",
        "ex ample.test",
        "exämple.test",
        "1.2.3.4.5",
        "*.1",
        "a.*.test",
        "**",
    ],
)
def test_hostname_entries_follow_rfc_1123(entry: str) -> None:
    with pytest.raises(InvalidInput, match="not a CIDR, address or hostname"):
        Scope.from_allow([entry])


def test_hostname_entries_at_the_limits_are_taken() -> None:
    assert len(NAME_253) == 253
    scope = Scope.from_allow([LONG_LABEL + ".test", NAME_253, NAME_253 + ".", "*.lab.test"])
    assert scope.hostnames == (LONG_LABEL + ".test", NAME_253, NAME_253, "*.lab.test")
    assert scope.allows_name(NAME_253.upper() + ".") and not scope.allows_name("lab.test")


# --- never-allowed classes fail every check (issue 19) ------------------------------------

NEVER = [
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "255.255.255.255",
    "::ffff:0.0.0.0",
    "::ffff:224.0.0.1",
]


@pytest.mark.parametrize("address", NEVER)
def test_never_allowed_classes_fail_every_check_under_a_total_allowlist(address: str) -> None:
    scope = Scope.from_allow(["0.0.0.0/0", "::/0", "*.lab.test", "localhost"])
    assert scope.allows_address(ipaddress.ip_address(address)) is False
    with pytest.raises(OutOfScope, match="never allowed"):
        scope.check_address(address, via="db.lab.test")  # even a vouching name
    with pytest.raises(OutOfScope, match="never allowed"):
        scope.check_peer(address, "db.lab.test")
    with pytest.raises(OutOfScope, match="never allowed"):
        scope.check_peer(address, None)


# --- a name vouches for its own request only (item 1) -------------------------------------


def test_only_a_name_vouches_and_only_as_that_name() -> None:
    scope = Scope.from_allow(["127.0.0.2/32", "localhost"])
    assert str(scope.check_peer("127.0.0.1", "localhost")) == "127.0.0.1"
    assert str(scope.check_peer("::1", "foo.LOCALHOST.")) == "::1"  # an alias of the name
    for host in (None, "127.0.0.1", "2130706433", "::ffff:127.0.0.1", "[::1]", "db.lab.test"):
        with pytest.raises(OutOfScope, match="not in the allowlist 127.0.0.2/32"):
            scope.check_peer("127.0.0.1", host)


# --- resolvers: localhost never asks the system; the async path (issue 19) -----------------

FOREIGN = "10.66.77.88"


@pytest.fixture
def lying_resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The system resolver, sync and async, answering every name with FOREIGN (a hosts file
    pointing localhost elsewhere); the names it was asked for."""
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(str(host))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (FOREIGN, port or 0))]

    async def loop_getaddrinfo(
        self: Any, host: Any, port: Any, *args: Any, **kwargs: Any
    ) -> list[Any]:
        return getaddrinfo(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", loop_getaddrinfo)
    return asked


ALIASES = ["localhost", "LOCALHOST", "localhost.", "localhost.localdomain", "db.localhost"]


@pytest.mark.parametrize("alias", ALIASES)
def test_localhost_is_answered_without_the_system_resolver(
    lying_resolver: list[str], alias: str
) -> None:
    scope = Scope.from_allow(DEFAULT_ALLOW)
    loopback = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert set(scope.resolve(alias, 80)) == loopback
    assert set(asyncio.run(scope.resolve_async(alias, 80))) == loopback
    assert lying_resolver == []


def test_the_lying_resolver_is_consulted_for_other_names(lying_resolver: list[str]) -> None:
    # the control: the patch is live, so the test above would see a consulted resolver
    scope = Scope.from_allow(DEFAULT_ALLOW)
    with pytest.raises(OutOfScope, match=r"10\.66\.77\.88 \(printer\.lan resolves there\)"):
        scope.resolve("printer.lan")
    with pytest.raises(OutOfScope, match=r"10\.66\.77\.88 \(printer\.lan resolves there\)"):
        asyncio.run(scope.resolve_async("printer.lan"))
    assert lying_resolver == ["printer.lan", "printer.lan"]


def answering(monkeypatch: pytest.MonkeyPatch, *addresses: str, error: bool = False) -> None:
    async def loop_getaddrinfo(
        self: Any, host: Any, port: Any, *args: Any, **kwargs: Any
    ) -> list[Any]:
        if error:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", loop_getaddrinfo)


def test_resolve_async_checks_every_address_of_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    answering(monkeypatch, "127.0.0.2", "127.0.0.9", "127.0.0.2")
    assert asyncio.run(NARROW_ASYNC.resolve_async("app.test")) == [
        ipaddress.ip_address("127.0.0.2"),
        ipaddress.ip_address("127.0.0.9"),
    ]
    answering(monkeypatch, "127.0.0.2", "127.0.0.1")
    with pytest.raises(OutOfScope, match=r"^127\.0\.0\.1 \(app\.test resolves there\)"):
        asyncio.run(NARROW_ASYNC.resolve_async("app.test"))


def test_resolve_async_lets_an_allowlisted_name_vouch(monkeypatch: pytest.MonkeyPatch) -> None:
    scope = Scope.from_allow(["127.0.0.2/32", "*.lab.test"])
    answering(monkeypatch, "10.4.4.4", "fd00::4")
    assert [str(a) for a in asyncio.run(scope.resolve_async("db.lab.test"))] == [
        "10.4.4.4",
        "fd00::4",
    ]
    answering(monkeypatch, "10.4.4.4", "0.0.0.0")
    with pytest.raises(OutOfScope, match="0.0.0.0 is out of scope: unspecified addresses"):
        asyncio.run(scope.resolve_async("db.lab.test"))


def test_resolve_async_literals_skip_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    answering(monkeypatch, "127.0.0.2")  # a resolver that would say "in scope" to anything
    assert asyncio.run(NARROW_ASYNC.resolve_async("0x7f000002")) == [
        ipaddress.ip_address("127.0.0.2")
    ]
    for literal in ("2130706433", "127.1", "[::ffff:127.0.0.1]"):
        with pytest.raises(OutOfScope, match=r"^127\.0\.0\.1 is out of scope"):
            asyncio.run(NARROW_ASYNC.resolve_async(literal))


def test_resolve_async_failures_are_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    answering(monkeypatch, error=True)
    with pytest.raises(InvalidInput, match="cannot resolve 'gone.test': Name or service not known"):
        asyncio.run(NARROW_ASYNC.resolve_async("gone.test"))
    answering(monkeypatch)
    with pytest.raises(InvalidInput, match="'void.test' resolves to no address"):
        asyncio.run(NARROW_ASYNC.resolve_async("void.test"))


NARROW_ASYNC = Scope.from_allow(["127.0.0.2/32", "127.0.0.9/32"])
