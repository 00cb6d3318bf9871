"""Scope policy: which addresses LEWIS may ever connect to.

The operator's allowlist holds CIDRs, single addresses and hostnames (``*.example.test``
wildcards allowed); the default is loopback only. Checks happen on *resolved* addresses, at
connect time, by the scanner's and the HTTP client's resolvers — never on the text of a URL.

Rules, in order:

1. The address text is normalised first: IPv4-mapped and IPv4-compatible IPv6
   (``::ffff:10.0.0.1``), decimal (``2130706433``), hex (``0x7f.1``), octal and short
   (``127.1``) IPv4 forms all become the plain address they mean.
2. Unspecified (``0.0.0.0``, ``::``), multicast and broadcast addresses are always refused.
3. An address inside an allowed CIDR is allowed.
4. A hostname on the allowlist by name allows the addresses it resolves to (the operator
   vouched for that name); any other name's addresses must pass rule 3 on their own.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidInput, OutOfScope

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
    name = host.lower().rstrip(".")
    return name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` spells in any of its legal forms, normalised; None if not an address."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:  # zone index (fe80::1%eth0): the scope id never widens the address
        text = text.split("%", 1)[0]
    try:
        addr: IPAddress = ipaddress.ip_address(text)
    except ValueError:
        addr = None  # type: ignore[assignment]
        if text and all(c in "0123456789abcdefxABCDEFX." for c in text) and text[0].isdigit():
            try:  # the libc forms: 2130706433, 0x7f000001, 0177.0.0.1, 127.1
                addr = ipaddress.IPv4Address(socket.inet_aton(text))
            except OSError:
                return None
        if addr is None:
            return None
    return unmap(addr)


def unmap(addr: IPAddress) -> IPAddress:
    """IPv4 carried inside IPv6 (mapped ``::ffff:a.b.c.d`` or compatible ``::a.b.c.d``) → IPv4."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        packed = addr.packed
        if packed[:12] == bytes(12) and int(addr) > 1:  # ::a.b.c.d, but not :: or ::1
            return ipaddress.IPv4Address(packed[12:])
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
                if not _is_hostname_pattern(entry):
                    raise InvalidInput(f"scope entry {entry!r}: not a CIDR, address or hostname") from None
                hostnames.append(entry.lower().rstrip("."))
                continue
            if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
                base = unmap(net.network_address)
                net = ipaddress.ip_network(f"{base}/{max(0, net.prefixlen - 96)}", strict=False)
            networks.append(net)
        return cls(tuple(networks), tuple(hostnames))

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hostnames)

    def allows_address(self, addr: IPAddress) -> bool:
        addr = unmap(addr)
        if never_allowed(addr):
            return False
        return any(addr in net for net in self.networks if net.version == addr.version)

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
            raise OutOfScope(f"{addr}{named} is out of scope: not in the allowlist "
                             f"{', '.join(map(str, self.networks)) or '(empty)'}")
        return addr

    def resolve(self, host: str, port: int = 0) -> list[IPAddress]:
        """Every address ``host`` resolves to, each checked; OutOfScope if any is outside."""
        name = "localhost" if is_localhost_alias(host) else host
        return self._checked(name, _getaddrinfo_sync(host, port))

    async def resolve_async(self, host: str, port: int = 0) -> list[IPAddress]:
        """:meth:`resolve` on the running event loop's resolver."""
        addr = parse_ip(host)
        if addr is not None:
            return [self.check_address(addr)]
        if is_localhost_alias(host):
            return self._checked("localhost", LOCALHOST_ADDRESSES)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise InvalidInput(f"cannot resolve {host!r}: {exc.strerror}") from None
        return self._checked(host, [str(info[4][0]) for info in infos])

    def _checked(self, host: str, addresses: Sequence[str]) -> list[IPAddress]:
        seen: list[IPAddress] = []
        for text in addresses:
            addr = self.check_address(text, via=host)
            if addr not in seen:
                seen.append(addr)
        if not seen:
            raise InvalidInput(f"{host!r} resolves to no address")
        return seen


def _getaddrinfo_sync(host: str, port: int) -> list[str]:
    addr = parse_ip(host)
    if addr is not None:
        return [str(addr)]
    if is_localhost_alias(host):
        return list(LOCALHOST_ADDRESSES)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot resolve {host!r}: {exc.strerror}") from None
    return [str(info[4][0]) for info in infos]


def _is_hostname_pattern(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c.isalnum() or c == "-" for c in label):
            return False
    return True


__all__ = ["Scope", "DEFAULT_ALLOW", "LOCALHOST_ADDRESSES", "IPAddress", "IPNetwork", "parse_ip",
           "unmap", "never_allowed", "is_localhost_alias"]
