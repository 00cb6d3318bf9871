"""Scope policy: which addresses LEWIS may ever connect to.

The operator's allowlist holds CIDRs, single addresses and hostnames (``*.example.test``
wildcards allowed); the default is loopback only. Checks happen on *resolved* addresses, at
connect time, by the scanner's and the HTTP client's resolvers — never on the text of a URL.

Rules, in order:

1. The address text is normalised first: IPv4-mapped IPv6 (``::ffff:10.0.0.1``, which the
   kernel connects as IPv4), decimal (``2130706433``), hex (``0x7f.1``), octal and short
   (``127.1``) IPv4 forms all become the plain address they mean. The numeric forms are read
   by the URL Standard's IPv4 parser (:mod:`.urlhost`), the one reading every check shares.
   Every other IPv6 form that embeds IPv4 — compatible ``::a.b.c.d``, 6to4 ``2002::/16``,
   NAT64 ``64:ff9b::/96``, Teredo ``2001::/32`` — is the IPv6 address it is: the socket
   connects there, so that is what is checked. ``%`` is a zone id only in IPv6 text.
2. Unspecified (``0.0.0.0``, ``::``), multicast and broadcast addresses are always refused.
3. An address inside an allowed CIDR is allowed.
4. A hostname on the allowlist by name allows the addresses it resolves to (the operator
   vouched for that name) — for the request that asked for that name only
   (:meth:`Scope.check_peer`); any other name's addresses must pass rule 3 on their own.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidInput, OutOfScope
from .urlhost import ends_in_number, parse_ipv4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW: tuple[str, ...] = ("127.0.0.0/8", "::1", "localhost")
LOCALHOST_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "::1")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def is_localhost_alias(host: str) -> bool:
    """True for the names that always mean this machine: localhost, LOCALHOST., *.localhost…

    They resolve to loopback without asking the system resolver (RFC 6761): a hosts file or a
    DNS search domain must not be able to point "localhost" anywhere else.
    """
    name = _name(host)
    return name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")


def _name(host: str) -> str:
    """A host name as compared: case folded, without the trailing dot(s) of a rooted name."""
    return host.lower().rstrip(".")


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` spells in any of its legal forms, normalised; None if not an address."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:  # IPv6; a zone index (fe80::1%eth0) never widens the address
        try:
            return unmap(ipaddress.IPv6Address(text.partition("%")[0]))
        except ValueError:
            return None
    if not ends_in_number(text):  # a name (and no exception raised to find that out)
        return None
    # the dotted quad and the legacy forms 2130706433, 0x7f000001, 0177.0.0.1, 127.1, read
    # as a browser reads them; "%" is no zone id here: "127%1" and "127.0.0.1%2e.evil.com"
    # are not addresses
    return parse_ipv4(text)


def unmap(addr: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (``::ffff:a.b.c.d``) → the IPv4 address the kernel connects to.

    Only the mapped form: a socket connects IPv4-compatible (``::a.b.c.d``), 6to4, NAT64 and
    Teredo addresses as IPv6, to wherever IPv6 routes them.
    """
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def never_allowed(addr: IPAddress) -> str | None:
    """Why ``addr`` is refused whatever the allowlist says, or None."""
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_multicast:
        return "multicast address"
    if addr == _BROADCAST:
        return "broadcast address"
    return None


@dataclass(frozen=True)
class Scope:
    """The operator's allowlist, parsed once."""

    networks: tuple[IPNetwork, ...]
    hostnames: tuple[str, ...]

    @classmethod
    def from_allow(cls, allow: Iterable[str] = DEFAULT_ALLOW) -> Scope:
        networks: list[IPNetwork] = []
        hostnames: list[str] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            addr = parse_ip(entry) if "/" not in entry else None
            if addr is not None:
                networks.append(ipaddress.ip_network(addr))
                continue
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if _name(entry) == "*":  # every name would vouch: DNS would decide the scope
                    raise InvalidInput(
                        f"scope entry {entry!r}: a wildcard needs a domain "
                        "(*.lab.example); list CIDRs to widen the scope"
                    ) from None
                if not _is_hostname_pattern(entry):
                    raise InvalidInput(
                        f"scope entry {entry!r}: not a CIDR, address or hostname"
                    ) from None
                hostnames.append(_name(entry))
                continue
            # ::ffff:10.0.0.0/104 is 10.0.0.0/8. A network address is mapped only with a
            # prefix of 96 or more (a shorter one clears the last bit of ffff), so ::ffff:0:0/95
            # stays the IPv6 range it is, which holds no address a socket connects as IPv4.
            if isinstance(net, ipaddress.IPv6Network):
                base = net.network_address.ipv4_mapped
                if base is not None:
                    net = ipaddress.IPv4Network((base, net.prefixlen - 96))
            networks.append(net)
        return cls(tuple(networks), tuple(hostnames))

    def allows_name(self, host: str) -> bool:
        host = _name(host)
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hostnames)

    def allows_address(self, addr: IPAddress) -> bool:
        addr = unmap(addr)
        if never_allowed(addr):
            return False
        return any(addr in net for net in self.networks if net.version == addr.version)

    def check_peer(self, address: str | IPAddress, host: str | None) -> IPAddress:
        """The last check before ``connect()``: ``address`` is where the socket goes, ``host``
        the host of the request it is for. Only a *name* vouches for its addresses, and only
        for its own request: an IP literal (or no host) vouches for nothing. Never-allowed
        classes are refused first, whatever the name (by :meth:`check_address`). OutOfScope,
        else the address: text that is no address is refused here, not reported as bad input."""
        if isinstance(address, str):
            addr = parse_ip(address)
            if addr is None:
                raise OutOfScope(f"{address!r} is not an IP address; refused")
            address = addr
        via = None
        if host is not None and parse_ip(host) is None:
            via = "localhost" if is_localhost_alias(host) else host
        return self.check_address(address, via=via)

    def check_address(self, address: str | IPAddress, via: str | None = None) -> IPAddress:
        """The normalised address if LEWIS may connect to it; else OutOfScope naming it."""
        addr = parse_ip(address) if isinstance(address, str) else unmap(address)
        if addr is None:
            raise InvalidInput(f"{address!r} is not an IP address")
        reason = never_allowed(addr)
        if reason:
            raise OutOfScope(f"{addr} is out of scope: {reason}es are never allowed")
        if via is not None and self.allows_name(via):
            return addr
        if not self.allows_address(addr):
            named = f" ({via} resolves there)" if via and via != str(addr) else ""
            raise OutOfScope(
                f"{addr}{named} is out of scope: not in the allowlist "
                f"{', '.join(map(str, self.networks)) or '(empty)'}"
            )
        return addr

    def resolve(self, host: str, port: int = 0) -> list[IPAddress]:
        """Every address ``host`` resolves to, each checked; OutOfScope if any is outside.

        Address literals and localhost aliases are answered here, never by the system
        resolver (a hosts file must not move "localhost")."""
        answer = _local_answer(host)
        if answer is None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise _unresolvable(host, exc) from None
            answer = [str(info[4][0]) for info in infos]
        return self._checked(host, answer)

    async def resolve_async(self, host: str, port: int = 0) -> list[IPAddress]:
        """:meth:`resolve` on the running event loop's resolver."""
        answer = _local_answer(host)
        if answer is None:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise _unresolvable(host, exc) from None
            answer = [str(info[4][0]) for info in infos]
        return self._checked(host, answer)

    def _checked(self, host: str, addresses: Sequence[str]) -> list[IPAddress]:
        seen: list[IPAddress] = []
        for text in addresses:
            addr = self.check_peer(text, host)
            if addr not in seen:
                seen.append(addr)
        if not seen:
            raise InvalidInput(f"{host!r} resolves to no address")
        return seen


def _local_answer(host: str) -> list[str] | None:
    """The addresses of an address literal or a localhost alias, answered here so the system
    resolver is never asked; None for any other name."""
    addr = parse_ip(host)
    if addr is not None:
        return [str(addr)]
    if is_localhost_alias(host):
        return list(LOCALHOST_ADDRESSES)
    return None


def _unresolvable(host: str, exc: socket.gaierror) -> InvalidInput:
    return InvalidInput(f"cannot resolve {host!r}: {exc.strerror}")


def _is_hostname_pattern(text: str) -> bool:
    """RFC 1123 host names (labels of 1–63 letters, digits and inner hyphens, 253 characters
    in all), with ``*`` allowed as the first label."""
    name = text.removesuffix(".")
    if not name or len(name) > 253 or ends_in_number(name):  # 1.2.3.4.5 is no name
        return False
    labels = name.split(".")
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return False
    return True


__all__ = [
    "Scope",
    "DEFAULT_ALLOW",
    "LOCALHOST_ADDRESSES",
    "IPAddress",
    "IPNetwork",
    "parse_ip",
    "unmap",
    "never_allowed",
    "is_localhost_alias",
]
