"""Property tests of the scope checks and URL handling (Hypothesis).

Over arbitrary text and over generated spellings of addresses and URLs: only LEWIS's own
error types escape, every spelling of an address means that address, and nothing outside
the scope is ever accepted — by the checks alone or through URL parsing. Each property runs
10,000 examples by default and 500,000 under ``-m slow``; all are pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lewis_tasks.domain.httprequest import HttpRequest, normalise_url, resolve_location
from lewis_tasks.domain.redact import redact_url
from lewis_tasks.domain.scope import Scope, parse_ip
from lewis_tasks.domain.urlhost import Base, url_host
from lewis_tasks.errors import InvalidInput, OutOfScope

T = TypeVar("T")
IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


def properties(*strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., None]], Any]:
    """A property test at five times the run's Hypothesis profile (tests/conftest.py: 10,000
    examples by default, 500,000 under ``-m slow``): the scope guard is what LEWIS may touch,
    and these are cheap. No example database (the corpus is the code)."""

    def wrap(check: Callable[..., None]) -> Any:
        return settings(
            max_examples=5 * settings.default.max_examples,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(*strategies)(check))

    return wrap


# --- strategies ---------------------------------------------------------------------------

MAPPED = int(IPv6("::ffff:0:0"))
NAMES = ["localhost", "LocalHost.", "db.lab.test", "a.localhost", "xn--bcher-kva.test", "h-1.test"]
NOISE = (
    "0123456789abcdefxX.:%[]@\\/?#-_ \t。．０１２７①\u00e4\udc80"
    + string.ascii_letters
    + "!$&'()*+,;=~\x00\x7f"
)


class Bytes:
    """Choices read off one byte string. Drawing one ``st.binary`` and reading it costs a
    quarter of a composite strategy's many draws, which is what lets each property run
    10,000 examples in seconds; shrinking the bytes towards zeros still shrinks towards the
    first (simplest) options."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1] if self.at <= len(self.data) else 0

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def number(self, size: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(size)), "big")

    def noise(self) -> str:
        return "".join(self.pick(NOISE) for _ in range(self.byte() % 24))

    def spelled(self) -> tuple[str, IPv4 | IPv6]:
        """(text, the address it means): legacy IPv4 forms, mapped, embedding and plain IPv6."""
        kind = self.byte() % 4
        if kind == 3:  # IPv4-compatible, NAT64, 6to4: IPv6 addresses, whatever they embed
            v4 = IPv4(self.number(4))
            text = self.pick(
                [f"::{v4}", f"64:ff9b::{v4}", f"2002:{int(v4) >> 16:x}:{int(v4) & 0xFFFF:x}::"]
            )
            return text, IPv6(text)
        if kind == 2:
            v6 = IPv6(self.number(16))
            return (str(v6) if self.byte() % 2 else v6.exploded), plain(v6)
        address = IPv4(self.number(4))
        if kind == 1:
            return self.pick([f"::ffff:{address}", str(IPv6(MAPPED + int(address)))]), address
        return self.ipv4_spelling(address), address

    def ipv4_spelling(self, address: IPv4) -> str:
        n = int(address)
        numbers = self.pick(
            [
                list(address.packed),
                [n >> 24, (n >> 16) & 0xFF, n & 0xFFFF],
                [n >> 24, n & 0xFFFFFF],
                [n],
            ]
        )
        spelled = []
        for number in numbers:
            radix = self.byte() % 4
            if radix == 0:
                spelled.append(str(number))
            elif radix == 1:
                spelled.append("0" * (1 + self.byte() % 3) + format(number, "o"))
            else:
                prefix = "0x" if radix == 2 else "0X"
                digits = format(number, "x" if radix == 2 else "X")
                spelled.append(prefix + "0" * (self.byte() % 3) + digits)
        return ".".join(spelled) + self.pick(["", "."])

    def url(self) -> str:
        """URL-shaped text: the parts every parser bypass plays with, in any combination."""
        scheme = self.pick(["http", "https", "HTTP", "ftp", "", "http:"])
        slashes = self.pick(["://", ":/", ":\\\\", ":", ":///", "://\\", "//"])
        userinfo = self.pick(["", "user@", "u:p@", "127.0.0.2@", "a@b@", "127.0.0.2\\@", "%40@"])
        kind = self.byte() % 4
        if kind == 0:
            host = self.spelled()[0]
            host = f"[{host}]" if ":" in host else host
        elif kind == 1:
            host = f"[{IPv6(self.number(16))}" + self.pick(["]", "%25lo]", "%1]", ""])
        elif kind == 2:
            host = self.pick(NAMES)
        else:
            host = self.noise()
        port = self.pick(["", ":80", ":0", ":65536", ":8x", ":", ":080"])
        tail = self.pick(["", "/", "/a?b#c", "#@127.0.0.1", "?@127.0.0.1", "\\@127.0.0.1/"])
        return f"{scheme}{slashes}{userinfo}{host}{port}{tail}"

    def text(self) -> str:
        """Any of: a URL shape, noise, or the raw bytes as text (lone surrogates and all)."""
        kind = self.byte() % 3
        if kind == 0:
            return self.url()
        if kind == 1:
            return self.noise()
        return self.data[self.at :].decode("utf-8", "surrogateescape")


choices = st.binary(max_size=48).map(Bytes)


SCOPES = [
    Scope.from_allow(entries)
    for entries in (
        ["127.0.0.2/32"],
        ["127.0.0.0/8", "::1", "localhost"],
        ["10.0.0.0/8", "fd00::/8"],
        ["0.0.0.0/0", "::/0"],
        ["::ffff:192.168.0.0/112", "*.lab.test"],
        [],
    )
]
scopes = st.sampled_from(SCOPES)


# The oracles below are written apart from the code under test (no unmap, no never_allowed).


def plain(address: IPv4 | IPv6) -> IPv4 | IPv6:
    """The address a socket connects to: IPv4-mapped IPv6 is IPv4, nothing else is."""
    if isinstance(address, IPv6) and int(address) >> 32 == 0xFFFF:
        return IPv4(int(address) & 0xFFFFFFFF)
    return address


def forbidden(address: IPv4 | IPv6) -> bool:
    if isinstance(address, IPv4):
        return int(address) == 0 or int(address) >> 28 == 0xE or int(address) == 2**32 - 1
    return int(address) == 0 or int(address) >> 120 == 0xFF


def inside(scope: Scope, address: IPv4 | IPv6) -> bool:
    """In one of the scope's networks, and of no never-allowed class."""
    address = plain(address)
    return not forbidden(address) and any(
        address in net for net in scope.networks if net.version == address.version
    )


def same_host(ours: Any, standard: Any) -> bool:
    if isinstance(ours, str) or isinstance(standard, str):
        return bool(ours == standard)
    return plain(ours) == plain(standard)


# --- addresses ----------------------------------------------------------------------------

NO_MEANING = None


def address_input(b: Bytes) -> tuple[Any, tuple[str, Any], str | None]:
    """(scope, (text, the address it spells or NO_MEANING), the request's host or None)."""
    scope = b.pick(SCOPES)
    spelled = b.spelled() if b.byte() % 2 else (b.text(), NO_MEANING)
    host = b.pick([None, *NAMES, "127.0.0.1", "2130706433", "noise"])
    return scope, spelled, (b.noise() if host == "noise" else host)


@properties(choices.map(address_input))
def _address_checks(drawn: tuple[Scope, tuple[str, Any], str | None]) -> None:
    scope, (text, meant), host = drawn
    # every spelling means its address; any text is an address or None, never an error
    address = parse_ip(text)
    assert address is None or isinstance(address, IPv4 | IPv6)
    assert not (isinstance(address, IPv6) and address.ipv4_mapped is not None)
    if meant is not NO_MEANING:
        assert address == meant
    if "%" in text and ":" not in text:  # a zone id belongs to IPv6 text only
        assert address is None
    # the check by address alone: only our errors, and only addresses inside the scope
    try:
        accepted = scope.check_address(text)
    except InvalidInput:  # OutOfScope included
        assert address is None or not inside(scope, address)
    else:
        assert accepted == address and inside(scope, accepted)
    # the check for a request's host: a name vouches for itself only, never-allowed never passes
    try:
        accepted = scope.check_peer(text, host)
    except OutOfScope:
        assert address is None or not inside(scope, address)
    else:
        assert accepted == address and not forbidden(accepted)
        name = (host or "").lower().rstrip(".")
        alias = name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")
        vouched = (
            host is not None
            and parse_ip(host) is None
            and scope.allows_name("localhost" if alias else host)
        )
        assert inside(scope, accepted) or vouched


test_address_checks = _address_checks


def allowlist(b: Bytes) -> list[str]:
    entries = []
    for _ in range(b.byte() % 4):
        kind = b.byte() % 3
        if kind == 0:
            entries.append(b.text())
        elif kind == 1:
            entries.append(b.spelled()[0])
        else:
            entries.append(f"{b.spelled()[0]}/{b.byte() % 141}")
    return entries


@properties(choices.map(allowlist))
def _allowlists_parse_or_say_why(entries: list[str]) -> None:
    try:
        scope = Scope.from_allow(entries)
    except InvalidInput as exc:
        assert str(exc).startswith("scope entry ")
        return
    assert all(
        isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) for net in scope.networks
    )
    assert all(
        name == name.lower() and not name.endswith(".") and len(name) <= 253
        for name in scope.hostnames
    )


test_allowlists_parse_or_say_why = _allowlists_parse_or_say_why


# --- URLs ---------------------------------------------------------------------------------

NARROW = Scope.from_allow(["127.0.0.2/32"])
BASES = [normalise_url(u) for u in ("http://127.0.0.2:8/a/b", "https://[::1]/", "http://h.test/")]


@properties(choices.map(lambda b: (b.pick(BASES), b.text())))
def _urls_normalise_or_say_why_and_agree(drawn: tuple[Any, str]) -> None:
    base, text = drawn
    try:
        url = normalise_url(text)
    except InvalidInput:
        pass
    else:
        assert url.scheme in ("http", "https") and url.raw_host
        ours = parse_ip(url.raw_host) or url.raw_host
        assert same_host(ours, url_host(text))  # both readers took it: the same host
        assert str(normalise_url(str(url))) == str(url)  # the normal form is a fixed point
        address = parse_ip(url.raw_host)
        if address is not None:  # the peer passes the narrowed scope iff it is 127.0.0.2
            try:
                NARROW.check_peer(url.raw_host, url.raw_host)
            except OutOfScope:
                assert address != IPv4("127.0.0.2")
            else:
                assert address == IPv4("127.0.0.2")
    # the same text as a redirect's Location: resolved, or refused as ours
    try:
        target = resolve_location(base, text)
    except InvalidInput:
        return
    base_host = parse_ip(base.raw_host or "") or base.raw_host or ""
    standard = url_host(text, Base(base.scheme, base_host))
    assert same_host(parse_ip(target.raw_host or "") or target.raw_host, standard)


test_urls_normalise_or_say_why_and_agree = _urls_normalise_or_say_why_and_agree


def request_item(b: Bytes) -> Any:
    """A batch item: text, or a mapping of known and unknown fields with values of any type."""
    if b.byte() % 3 == 0:
        return b.text()
    item = {}
    for _ in range(b.byte() % 5):
        key = b.pick(["url", "method", "headers", "body", "extra", "url", "body"])
        item[key] = b.pick(
            [
                None,
                7,
                "text",
                "noise",
                b"\xff\xfe",
                ["x"],
                "headers",
                "GET",
                "post",
                "HEAD",
                "PUT",
                "url",
            ]
        )
        if item[key] == "text":
            item[key] = b.text()
        elif item[key] == "noise":
            item[key] = b.noise()
        elif item[key] == "headers":
            item[key] = {b.noise(): b.text() for _ in range(b.byte() % 3)}
        elif item[key] == "url":
            item[key] = b.url()
    return item


@properties(choices.map(request_item))
def _requests_parse_or_say_why(item: Any) -> None:
    try:
        request = HttpRequest.parse(item)
    except InvalidInput:
        return
    assert request.method in ("GET", "HEAD", "POST")
    assert normalise_url(request.url) == normalise_url(str(normalise_url(request.url)))
    assert request.body is None or isinstance(request.body, bytes)


test_requests_parse_or_say_why = _requests_parse_or_say_why


SECRET_CHARS = "".join(c for c in NOISE if c not in "/?#@\\ \t") + ":é€\udc80😀"


def credentials(b: Bytes) -> tuple[str, str, str, str]:
    """(user, secret, host, tail): a user without ':', a secret of any URL-safe characters."""
    user = "".join(b.pick(SECRET_CHARS.replace(":", "")) for _ in range(b.byte() % 12))
    secret = "".join(b.pick(SECRET_CHARS) for _ in range(1 + b.byte() % 16))
    return (
        user,
        secret,
        b.pick(["127.0.0.2:8", "h.test", "[::1]"]),
        b.pick(["", "/", "/p?q=1#f@x"]),
    )


@properties(choices.map(credentials))
def _credentials_never_survive_redaction(drawn: tuple[str, str, str, str]) -> None:
    user, secret, host, tail = drawn
    assert redact_url(f"http://{user}:{secret}@{host}{tail}") == f"http://{user}:***@{host}{tail}"
    if ":" not in secret:  # a bare token
        assert redact_url(f"https://{secret}@{host}{tail}") == f"https://***@{host}{tail}"


test_credentials_never_survive_redaction = _credentials_never_survive_redaction
