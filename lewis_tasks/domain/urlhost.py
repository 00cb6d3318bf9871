"""How a browser reads the host of an http(s) URL: the WHATWG URL Standard's host rules.

The session connects with yarl's reading of a URL (RFC 3986); browsers, proxies and the
servers LEWIS talks to often use the WHATWG one. Where the two disagree — ``\\`` ending the
authority, percent-escapes in a host, ``1.2.3.4.5`` — a URL means one peer to one reader and
another to the next, the classic way past a URL-text check. :func:`url_host` gives the WHATWG
reading so the caller can refuse any URL whose host the two read differently.

Only what deciding the host needs is implemented: control and whitespace stripping, the
special-scheme slash rules, userinfo, the IPv6 literal, percent-decoding, IDNA (UTS #46,
non-transitional), forbidden code points and the IPv4 number parser (``0x7f.1``, ``0177.1``,
``2130706433``). Pure functions; failures are InvalidInput.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

import idna

from ..errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Host = IPAddress | str  # an address, or an ASCII domain (lowercase, IDNA-encoded)

SCHEMES = frozenset({"http", "https"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
_SLASHES = "/\\"
_AUTHORITY_END = re.compile(r"[/\\?#]")
# forbidden domain code points: the forbidden host code points, C0 controls, % and DEL
_FORBIDDEN_DOMAIN = frozenset(" #/:<>?@[\\]^|%\x7f" + "".join(map(chr, range(0x20))))
_DIGITS = {
    10: frozenset("0123456789"),
    8: frozenset("01234567"),
    16: frozenset("0123456789abcdefABCDEF"),
}


class Base(NamedTuple):
    """The URL a relative reference is resolved against: its scheme and host."""

    scheme: str
    host: Host


def url_host(text: str, base: Base | None = None) -> Host:
    """The host a browser reads in ``text`` (resolved against ``base`` when relative).

    InvalidInput when the URL Standard finds no valid host: a parse failure, a scheme other
    than http/https, or a relative reference without a base.
    """
    s = text.strip(_C0_OR_SPACE).translate(_TAB_OR_NEWLINE)
    match = _SCHEME.match(s)
    if match:
        scheme, rest = match.group()[:-1].lower(), s[match.end() :]
        if scheme not in SCHEMES:
            raise InvalidInput(f"{text!r}: not an http(s) URL")
        # the same scheme as the base: "http:path" is relative to it unless two slashes follow
        if base is not None and base.scheme == scheme and not _two_slashes(rest):
            return base.host
    elif base is None:
        raise InvalidInput(f"{text!r}: a relative URL with nothing to resolve it against")
    elif _two_slashes(s):
        rest = s
    else:
        return base.host
    rest = rest.lstrip(_SLASHES)  # a special scheme's authority ignores any run of slashes
    end = _AUTHORITY_END.search(rest)
    authority = rest[: end.start()] if end else rest
    host_and_port = authority.rpartition("@")[2]  # the last @ ends the userinfo
    try:
        return parse_host(_host_part(host_and_port, text))
    except InvalidInput as exc:
        if str(exc).startswith(repr(text)):
            raise
        raise InvalidInput(f"{text!r}: {exc}") from None


def _two_slashes(text: str) -> bool:
    return len(text) >= 2 and text[0] in _SLASHES and text[1] in _SLASHES


def _host_part(host_and_port: str, text: str) -> str:
    """The host of ``host[:port]``: up to the first ``:`` outside brackets."""
    if "[" not in host_and_port:  # the common case: no IPv6 literal, no brackets to track
        host, colon, port = host_and_port.partition(":")
        if colon and port and (not port.isascii() or not port.isdigit() or int(port) > 65535):
            raise InvalidInput(f"{text!r}: port {port!r} is not a port number")
        return host
    inside = False
    for i, c in enumerate(host_and_port):
        if c == "[":
            inside = True
        elif c == "]":
            inside = False
        elif c == ":" and not inside:
            host, port = host_and_port[:i], host_and_port[i + 1 :]
            if port and (not port.isascii() or not port.isdigit() or int(port) > 65535):
                raise InvalidInput(f"{text!r}: port {port!r} is not a port number")
            return host
    return host_and_port


def parse_host(text: str) -> Host:
    """The URL Standard's host parser for a special scheme: an address, or an ASCII domain."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise InvalidInput(f"host {text!r}: an IPv6 literal must end with ']'")
        inner = text[1:-1]
        if "%" in inner or not inner.isascii():  # the standard has no zone ids
            raise InvalidInput(f"host {text!r}: not an IPv6 address")
        try:
            return ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidInput(f"host {text!r}: not an IPv6 address") from None
    if not text:
        raise InvalidInput("empty host")
    try:
        domain = unquote_to_bytes(text).decode("utf-8")
    except UnicodeError:  # escapes that are not UTF-8, or a lone surrogate in the text
        raise InvalidInput(f"host {text!r}: not UTF-8 text") from None
    ascii_domain = domain_to_ascii(domain)
    bad = sorted({c for c in ascii_domain if c in _FORBIDDEN_DOMAIN})
    if bad:
        raise InvalidInput(f"host {text!r}: forbidden character(s) {''.join(bad)!r}")
    if ends_in_number(ascii_domain):
        try:
            return ipaddress.IPv4Address(ascii_domain)  # plain dotted decimal, the usual case
        except ValueError:
            pass
        address = parse_ipv4(ascii_domain)
        if address is None:
            raise InvalidInput(f"host {text!r}: ends in a number but is not an IPv4 address")
        return address
    return ascii_domain


def domain_to_ascii(domain: str) -> str:
    """UTS #46 ToASCII with the URL Standard's options (non-transitional, no STD3 rules)."""
    labels = domain.split(".")
    if domain.isascii() and not any(label[:4].lower() == "xn--" for label in labels):
        result = domain.lower()  # the standard's fast path: ASCII lowercasing is all it does
    else:
        try:
            mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
            result = ".".join(_label_to_ascii(label) for label in mapped.split("."))
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidInput(f"host {domain!r}: not a valid international name ({exc})") from None
    if not result:
        raise InvalidInput("empty host")
    return result


def _label_to_ascii(label: str) -> str:
    if label.isascii():
        if label[:4].lower() == "xn--":
            idna.decode(label)  # a Punycode label must decode to a valid one
        return label
    return idna.alabel(label).decode("ascii")


def ends_in_number(domain: str) -> bool:
    """Whether the URL Standard reads ``domain`` as an IPv4 address (and fails if it is not)."""
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return _ipv4_number(last) is not None


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The URL Standard's IPv4 parser: ``127.1``, ``0x7f.0.0.1``, ``0177.0.0.1``,
    ``2130706433``, one trailing dot allowed; None if ``text`` is not such an address."""
    parts = text.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n * 256 ** (3 - i)
    return ipaddress.IPv4Address(value)


def _ipv4_number(text: str) -> int | None:
    if not text:
        return None
    radix = 10
    if text[:2] in ("0x", "0X"):
        text, radix = text[2:], 16
    elif len(text) >= 2 and text[0] == "0":
        text, radix = text[1:], 8
    if not text:
        return 0
    if not all(c in _DIGITS[radix] for c in text):  # int() would take "1_0", " 1", "١"
        return None
    return int(text, radix)


__all__ = [
    "url_host",
    "parse_host",
    "parse_ipv4",
    "domain_to_ascii",
    "ends_in_number",
    "Base",
    "Host",
]
