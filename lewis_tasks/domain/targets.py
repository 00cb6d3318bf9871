"""Scan targets and port specs: parse them, cap them, split them into chunks.

Targets are IPv4/IPv6 addresses (any legal spelling :func:`~.scope.parse_ip` accepts), CIDR
blocks and hostnames. Hostnames stay names here: they are resolved at scan time and every
address they resolve to is checked by the :class:`~.scope.Scope` (:func:`resolve_hosts`).
Port specs follow nmap: ``22,80,443``, ``1-1024``, ``-`` (1-65535), ``8000-`` / ``-1024``
(open ends), ``top100`` / ``topN`` (the ranked list in ``data/top-ports.txt``). Every error
is an :class:`InvalidInput` that names the bad token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from ..errors import InvalidInput
from .scope import Scope, parse_ip

MAX_PORT = 65535
_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit()`` also takes '١٢٣' (which int() reads as 123) and
    '²' (which int() refuses)."""
    return text.isascii() and text.isdigit()


def _bounded_int(text: str, ceiling: int) -> int:
    """``int(text)`` of a decimal, or ``ceiling + 1`` when it is longer than any number up to
    ``ceiling`` (int() refuses past 4300 digits, and a long one says no more)."""
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(ceiling)) else ceiling + 1


@dataclass(frozen=True)
class Target:
    """One parsed target token: its addresses, or a hostname to resolve at scan time."""

    text: str
    addresses: tuple[str, ...] = ()
    hostname: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "addresses": list(self.addresses), "hostname": self.hostname}


@dataclass(frozen=True)
class ScanHost:
    """An address cleared by the scope, with the name it came from (if any)."""

    address: str
    hostname: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"address": self.address, "hostname": self.hostname}


@dataclass(frozen=True)
class ScanChunk:
    """One unit of fan-out: a host and at most ``chunk_ports`` ports, as a compact port spec."""

    address: str
    hostname: str | None
    ports: str
    port_count: int

    def port_list(self) -> list[int]:
        return parse_ports(self.ports)

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "hostname": self.hostname,
            "ports": self.ports,
            "port_count": self.port_count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ScanChunk:
        ports = str(data["ports"])
        hostname = data.get("hostname")
        return cls(
            str(data["address"]),
            None if hostname is None else str(hostname),
            ports,
            int(data.get("port_count") or len(parse_ports(ports))),  # type: ignore[call-overload]
        )


def parse_targets(tokens: Iterable[str], *, max_hosts: int) -> list[Target]:
    """Parse target tokens (commas or whitespace also split); CIDRs over ``max_hosts`` are refused."""
    targets: list[Target] = []
    total = 0
    for token in _split_tokens(tokens):
        target = parse_target(token, max_hosts=max_hosts)
        total += len(target.addresses) or 1
        if total > max_hosts:
            raise InvalidInput(
                f"targets: {total} hosts or more, over the cap of {max_hosts} "
                f"(scan.max_hosts), reached at {token!r}"
            )
        targets.append(target)
    if not targets:
        raise InvalidInput("targets: none given")
    return targets


def parse_target(token: str, *, max_hosts: int) -> Target:
    """One target token → a :class:`Target`; InvalidInput naming the token if malformed."""
    text = token.strip()
    if not text:
        raise InvalidInput("target '': empty")
    if "/" in text:
        return Target(text, _expand_network(text, max_hosts))
    addr = parse_ip(text)
    if addr is not None:
        return Target(text, (str(addr),))
    # ASCII first: lower() would turn the Kelvin sign into 'k' and pass a name never typed
    name = text.lower().rstrip(".") if text.isascii() else ""
    if not _is_hostname(name):
        raise InvalidInput(f"target {text!r}: not an IP address, CIDR block or hostname")
    return Target(text, hostname=name)


def _expand_network(text: str, max_hosts: int) -> tuple[str, ...]:
    base, _, prefix = text.partition("/")
    addr = parse_ip(base)
    if addr is None or not _is_decimal(prefix):
        raise InvalidInput(f"target {text!r}: not a CIDR block (expected ADDRESS/PREFIX)")
    try:
        net = ipaddress.ip_network(f"{addr}/{_bounded_int(prefix, 128)}", strict=False)
    except ValueError:
        raise InvalidInput(
            f"target {text!r}: prefix /{prefix} is too long for IPv{addr.version}"
        ) from None
    # Network and broadcast addresses of an IPv4 block take no TCP connection: skip them,
    # as ipaddress.hosts() does (a /31 or /32 keeps every address).
    count = net.num_addresses
    if net.version == 4 and net.prefixlen < 31:
        count -= 2
    elif net.version == 6 and net.prefixlen < 127:
        count -= 1  # the subnet-router anycast address
    if count > max_hosts:
        raise InvalidInput(
            f"target {text!r}: {count} hosts, over the cap of {max_hosts} (scan.max_hosts)"
        )
    return tuple(str(h) for h in net.hosts())  # only after the cap: never enumerate a /64


def _is_hostname(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(_is_decimal(label) for label in labels):
        return False  # 300.1.1.1 and friends are broken addresses, not names
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and set(label) <= _HOSTNAME_CHARS
        for label in labels
    )


def _split_tokens(tokens: Iterable[str]) -> list[str]:
    out: list[str] = []
    for token in tokens:
        out.extend(part for part in token.replace(",", " ").split() if part)
    return out


def resolve_hosts(targets: Sequence[Target], scope: Scope) -> list[ScanHost]:
    """Every address of ``targets``, each checked by ``scope``; OutOfScope names the first refused."""
    return _unique_hosts(
        [(str(a), t.hostname) for a in scope.resolve(t.hostname)]
        if t.hostname is not None
        else [(str(scope.check_address(a)), None) for a in t.addresses]
        for t in targets
    )


async def resolve_hosts_async(targets: Sequence[Target], scope: Scope) -> list[ScanHost]:
    """:func:`resolve_hosts` on the running loop's resolver (no blocking getaddrinfo)."""
    groups: list[list[tuple[str, str | None]]] = []
    for t in targets:
        if t.hostname is not None:
            groups.append([(str(a), t.hostname) for a in await scope.resolve_async(t.hostname)])
        else:
            groups.append([(str(scope.check_address(a)), None) for a in t.addresses])
    return _unique_hosts(groups)


def _unique_hosts(groups: Iterable[Sequence[tuple[str, str | None]]]) -> list[ScanHost]:
    """Each address once, in order, tagged with the first name it came from."""
    hosts: list[ScanHost] = []
    seen: set[str] = set()
    for pairs in groups:
        for address, name in pairs:
            if address not in seen:
                seen.add(address)
                hosts.append(ScanHost(address, name))
    return hosts


# ---------------------------------------------------------------- ports


@cache
def ranked_top_ports() -> tuple[int, ...]:
    """The shipped ranked list (most often open first), from nmap's nmap-services."""
    from importlib import resources  # only a scan of topN ports reads it

    text = resources.files(__package__).joinpath("data/top-ports.txt").read_text()
    return tuple(int(line) for line in text.splitlines() if line and not line.startswith("#"))


def parse_ports(spec: str) -> list[int]:
    """An nmap-style port spec → sorted unique ports; InvalidInput naming the bad token."""
    if not spec or not spec.strip():
        raise InvalidInput("port spec '': empty (try 22,80,443 or 1-1024 or - or top100)")
    ports: set[int] = set()
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            raise InvalidInput(f"port spec {spec!r}: empty token (a stray comma?)")
        ports.update(_parse_port_token(token, spec))
    return sorted(ports)


def _parse_port_token(token: str, spec: str) -> Iterable[int]:
    lowered = token.lower()
    if lowered.startswith("top"):
        count = lowered[3:].lstrip("-")
        ranked = ranked_top_ports()
        if not _is_decimal(count) or not 1 <= _bounded_int(count, len(ranked)) <= len(ranked):
            raise InvalidInput(
                f"port spec {spec!r}: bad token {token!r} (topN takes N from 1 to {len(ranked)})"
            )
        return ranked[: int(count)]
    if token == "-":
        return range(1, MAX_PORT + 1)
    if "-" in token:
        lo_text, _, hi_text = token.partition("-")
        lo = _port_number(lo_text, token, spec) if lo_text else 1
        hi = _port_number(hi_text, token, spec) if hi_text else MAX_PORT
        if lo > hi:
            raise InvalidInput(f"port spec {spec!r}: bad token {token!r} (range runs backwards)")
        return range(lo, hi + 1)
    return (_port_number(token, token, spec),)


def _port_number(text: str, token: str, spec: str) -> int:
    text = text.strip()
    if not _is_decimal(text):
        raise InvalidInput(
            f"port spec {spec!r}: bad token {token!r} (expected N, N-M, N-, -M, - or topN)"
        )
    port = _bounded_int(text, MAX_PORT)
    if not 1 <= port <= MAX_PORT:
        raise InvalidInput(
            f"port spec {spec!r}: bad token {token!r} (ports run from 1 to {MAX_PORT})"
        )
    return port


def format_ports(ports: Iterable[int]) -> str:
    """Sorted ports → the shortest spec of ranges ("1-3,80"); the inverse of :func:`parse_ports`."""
    ordered = sorted(set(ports))
    if ordered and ordered[-1] - ordered[0] + 1 == len(ordered):  # one range: `-p -`'s chunks
        return str(ordered[0]) if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def plan_chunks(
    hosts: Sequence[ScanHost], ports: Sequence[int], *, chunk_ports: int, max_ports_total: int
) -> list[ScanChunk]:
    """hosts × ports as chunks of at most ``chunk_ports`` ports; refused over ``max_ports_total``."""
    if chunk_ports < 1:
        raise InvalidInput(f"chunk size {chunk_ports}: must be at least 1")
    ordered = sorted(set(ports))
    total = len(hosts) * len(ordered)
    if total > max_ports_total:
        raise InvalidInput(
            f"scan of {len(hosts)} hosts × {len(ordered)} ports = {total} probes "
            f"is over the cap of {max_ports_total} (scan.max_ports_total)"
        )
    chunks: list[ScanChunk] = []
    for host in hosts:
        for start in range(0, len(ordered), chunk_ports):
            part = ordered[start : start + chunk_ports]
            chunks.append(ScanChunk(host.address, host.hostname, format_ports(part), len(part)))
    return chunks


__all__ = [
    "Target",
    "ScanHost",
    "ScanChunk",
    "parse_targets",
    "parse_target",
    "resolve_hosts",
    "resolve_hosts_async",
    "ranked_top_ports",
    "parse_ports",
    "format_ports",
    "plan_chunks",
    "MAX_PORT",
]
