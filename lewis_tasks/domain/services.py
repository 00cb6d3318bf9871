"""Service identification on open ports: banner grab, light probes, a signature table.

Per port: connect and wait up to ``banner_timeout`` for the server to speak first (ssh, ftp,
smtp, imap, pop3, mysql, telnet, nats do). A silent port gets the light probes at once, each on
its own connection, in parallel — an HTTP ``HEAD``, a Redis ``PING``, a memcached ``version``,
a PostgreSQL ``SSLRequest`` then startup packet, an AMQP 0-9-1 protocol header (RabbitMQ
answers with ``Connection.Start``: product and version), an epmd ``NAMES_REQ`` (the Erlang
nodes it knows), an Erlang distribution ``send_name``, an MQTT 3.1.1 ``CONNECT``, and an empty
line — and the first answer that a signature recognises names the service. A port that answers
no probe is named from nmap's services table (``data/nmap-services-tcp.txt``) with a ``?``:
``amqp?`` is a guess from the port number, as nmap -sV marks it, never a bare ``unknown``
unless the table has no name for the port either. Follow-ups on the same connection fill in what the
first answer leaves open: ``INFO server`` for a Redis that answered ``PING`` without AUTH (its
version), ``EHLO`` for a bare ``220`` greeting (smtp answers 250; otherwise it is ftp — a case
``nmap -sV`` leaves unnamed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from .scope import IPAddress, Scope

UNKNOWN = "unknown"
_BANNER_CHARS = 160
_READ_BYTES = 4096
_PG_SSL_REQUEST = struct.pack("!II", 8, 80877103)
_PG_STARTUP = (lambda body: struct.pack("!I", len(body) + 4) + body)(
    struct.pack("!I", 196608) + b"user\x00lewis\x00database\x00lewis\x00\x00"
)
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"  # AMQP 0-9-1: the server answers Connection.Start
_EPMD_NAMES = b"\x00\x01n"  # NAMES_REQ: epmd answers its port and "name N at port P" lines
# Erlang distribution send_name (protocol version 5): a node answers "s" + a status, or closes
_ERLANG_SEND_NAME = (lambda body: struct.pack("!H", len(body)) + body)(
    b"n" + struct.pack("!HI", 5, 0x7FFFD) + b"lewis@probe"
)
_MQTT_CONNECT = (lambda body: b"\x10" + bytes([len(body)]) + body)(  # MQTT 3.1.1, clean session
    b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", 5) + b"lewis"
)
# After CONNACK 0: SUBSCRIBE (packet id 1, QoS 0) to the topic where Mosquitto keeps its version
_MQTT_SUBSCRIBE_VERSION = (lambda body: b"\x82" + bytes([len(body)]) + body)(
    struct.pack("!HH", 1, 19) + b"$SYS/broker/version" + b"\x00"
)
_MOSQUITTO_VERSION = re.compile(rb"mosquitto version (?P<version>[\d.]+)")


@dataclass(frozen=True)
class ServiceInfo:
    """What runs on one port, as far as its answers tell."""

    port: int
    name: str
    product: str | None = None
    version: str | None = None
    banner: str = ""  # printable excerpt of the first answer
    probe: str = ""  # what drew that answer: banner, http, redis, memcached, postgresql, ...
    extra: Mapping[str, str | bool | int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "port": self.port,
            "name": self.name,
            "product": self.product,
            "version": self.version,
            "banner": self.banner,
            "probe": self.probe,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ServiceInfo:
        return cls(
            int(data["port"]),  # type: ignore[call-overload]
            str(data["name"]),
            data.get("product"),  # type: ignore[arg-type]
            data.get("version"),  # type: ignore[arg-type]
            str(data.get("banner") or ""),
            str(data.get("probe") or ""),
            dict(data.get("extra") or {}),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class Signature:
    """A regex over a server's answer. Named groups ``product``/``version`` fill those fields;
    ``revision`` (the distribution's package revision, ``Debian-2+deb12u10``) goes to
    ``extra["revision"]``: a backported fix leaves the upstream version as it was, so a CVE
    matched on that version alone is shown beside it."""

    name: str
    pattern: re.Pattern[bytes]
    product: str | None = None
    probes: frozenset[str] | None = None  # answers to which probes it applies; None: any
    extra: Mapping[str, str | bool | int] = field(default_factory=dict)


def _sig(
    name: str,
    regex: bytes,
    product: str | None = None,
    probes: str | None = None,
    **extra: str | bool | int,
) -> Signature:
    return Signature(
        name,
        re.compile(regex, re.DOTALL),
        product,
        frozenset(probes.split()) if probes else None,
        extra,
    )


_HTTP = rb"^HTTP/1\.[01] \d{3}.*?\r\nServer: "
# First match wins: specific before generic within each service.
SIGNATURES: tuple[Signature, ...] = (
    _sig(
        "ssh", rb"^SSH-[\d.]+-OpenSSH_(?P<version>[\w.]+)(?: (?P<revision>[^\s\r\n]+))?", "OpenSSH"
    ),
    _sig("ssh", rb"^SSH-[\d.]+-dropbear_(?P<version>[\w.]+)", "Dropbear sshd"),
    _sig("ssh", rb"^SSH-[\d.]+-(?P<product>[^\s\r\n]+)"),
    _sig("smtp", rb"^220[ -]\S+ ESMTP Exim (?P<version>[\w.]+)", "Exim"),
    _sig("smtp", rb"^220[ -]\S+ ESMTP Postfix", "Postfix smtpd"),
    _sig("smtp", rb"^220[ -]\S+ ESMTP Sendmail (?P<version>[\w.]+)", "Sendmail"),
    _sig("smtp", rb"^220[ -][^\r\n]*\bE?SMTP\b"),
    _sig("ftp", rb"^220[ -][^\r\n]*\(vsFTPd (?P<version>[\d.]+)\)", "vsftpd"),
    _sig("ftp", rb"^220[ -]ProFTPD (?P<version>[\d.]+[a-z]?\d*)", "ProFTPD"),
    _sig("ftp", rb"^220[ -][^\r\n]*Pure-FTPd", "Pure-FTPd"),
    _sig(
        "ftp",
        rb"^220[ -][^\r\n]*FileZilla Server(?: version)? (?P<version>[\d.]+\w*)",
        "FileZilla ftpd",
    ),
    _sig("ftp", rb"^220[ -][^\r\n]*\bftp\b|^220[ -][^\r\n]*\bFTP\b"),
    _sig("ftp", rb"^220[ -]?", probes="banner", confirm="ehlo"),  # bare greeting: ask EHLO
    _sig("mysql", rb"^.\x00\x00\x00\x0a5\.5\.5-(?P<version>[\d.]+)-MariaDB", "MariaDB"),
    _sig("mysql", rb"^.\x00\x00\x00\x0a(?P<version>[\d.]+)[^\x00]*-MariaDB", "MariaDB"),
    _sig("mysql", rb"^.\x00\x00\x00\x0a(?P<version>\d+\.\d+\.\d+)[^\x00]*\x00", "MySQL"),
    _sig(
        "mysql",
        rb"^.\x00\x00\x00\xff..Host .{0,80} is not allowed to connect to this "
        rb"(?P<product>MySQL|MariaDB) server",
    ),
    _sig("imap", rb"^\* OK [^\r\n]*Dovecot", "Dovecot imapd"),
    _sig("imap", rb"^\* OK [^\r\n]*Courier-IMAP", "Courier Imapd"),
    _sig("imap", rb"^\* OK [^\r\n]*IMAP4"),
    _sig("pop3", rb"^\+OK [^\r\n]*Dovecot", "Dovecot pop3d", probes="banner"),
    _sig("pop3", rb"^\+OK", probes="banner"),
    _sig("telnet", rb"^\xff[\xfa-\xfe]"),
    _sig("vnc", rb"^RFB (?P<version>\d{3}\.\d{3})"),
    _sig("nats", rb'^INFO \{[^\r\n]*"server_id"[^\r\n]*"version":"(?P<version>[\d.]+)"', "NATS"),
    _sig(
        "http",
        _HTTP + rb"Apache/(?P<version>[\d.]+)(?: \((?P<revision>[^)\r\n]+)\))?",
        "Apache httpd",
    ),
    _sig("http", _HTTP + rb"nginx/(?P<version>[\d.]+)", "nginx"),
    _sig("http", _HTTP + rb"Microsoft-IIS/(?P<version>[\d.]+)", "Microsoft IIS httpd"),
    _sig("http", _HTTP + rb"lighttpd/(?P<version>[\d.]+)", "lighttpd"),
    _sig("http", _HTTP + rb"(?P<product>[^\r\n/ ]+)(?:/(?P<version>[\w.\-]+))?"),
    _sig("http", rb"^HTTP/1\.[01] \d{3}"),
    _sig("redis", rb"^\+PONG", "Redis", probes="redis", auth_required=False),
    _sig("redis", rb"^-NOAUTH", "Redis", probes="redis http generic memcached", auth_required=True),
    _sig("redis", rb"^-DENIED Redis", "Redis", auth_required=True, protected_mode=True),
    _sig("redis", rb"^-ERR operation not permitted", "Redis", probes="redis", auth_required=True),
    _sig(
        "redis",
        rb"^-ERR (?:unknown command|wrong number of arguments)",
        "Redis",
        probes="http generic memcached",
    ),
    _sig("memcached", rb"^VERSION (?P<version>[\d.]+)", "memcached", probes="memcached"),
    _sig(
        "postgresql",
        rb"^(?:R\x00\x00\x00[\x08-\x30]\x00\x00\x00[\x00-\x0c]|E\x00\x00..S"
        rb"(?:FATAL|ERROR))",
        "PostgreSQL",
        probes="postgresql",
    ),
    # Connection.Start (frame type 1, channel 0, class 10 method 10); its server-properties
    # table carries product and version as long strings ("S", 4-byte length, text).
    _sig(
        "amqp",
        rb"^\x01\x00\x00.{4}\x00\x0a\x00\x0a"
        rb"(?:.*?\x07productS.{4}(?P<product>[\x20-\x7e]+))?"
        rb"(?:.*?\x07versionS.{4}(?P<version>[\d.]+))?",
        probes="amqp",
    ),
    _sig("amqp", rb"^AMQP[\x00-\x03]\x00?[\x00-\x0a]"),  # the header back: "not that version"
    _sig(
        "epmd",
        rb"^\x00\x00[\x00-\xff]{2}(?:name [^\n]{1,255} at port \d{1,5}\n)*$",
        "Erlang Port Mapper Daemon",
        probes="epmd",
    ),
    _sig(
        "erlang-dist",
        rb"^\x00[\x02-\x40]s(?:ok|nok|not_allowed|alive|named:)",
        "Erlang distribution",
        probes="erlang",
    ),
    _sig("mqtt", rb"^\x20\x02[\x00\x01][\x00-\x05]$", probes="mqtt"),
)
_REDIS_VERSION = re.compile(rb"redis_version:(?P<version>[\d.]+)")
_PROBES: tuple[tuple[str, bytes], ...] = (
    ("http", b"HEAD / HTTP/1.0\r\n\r\n"),
    ("redis", b"PING\r\n"),
    ("memcached", b"version\r\n"),
    ("postgresql", _PG_SSL_REQUEST),
    ("amqp", _AMQP_HEADER),
    ("epmd", _EPMD_NAMES),
    ("erlang", _ERLANG_SEND_NAME),
    ("mqtt", _MQTT_CONNECT),
    ("generic", b"\r\n\r\n"),
)
_PAYLOADS = dict(_PROBES)
# Probes of protocols that never answer the common ones, and the ports they live on: sent with
# the first wave there, in a second wave elsewhere (see _waves).
_HINTS: Mapping[str, frozenset[int]] = {
    "amqp": frozenset({5672}),
    "epmd": frozenset({4369}),
    "erlang": frozenset({25672}),
    "mqtt": frozenset({1883}),
}
PROBE_COUNT = len(_PROBES)  # connections one silent port may cost beyond its banner wait
_EPMD_NODE = re.compile(rb"name ([^\n]{1,255}) at port (\d{1,5})\n")


@cache
def _port_names() -> dict[int, str]:
    text = resources.files(__package__).joinpath("data/nmap-services-tcp.txt").read_text()
    names: dict[int, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            port, name = line.split()
            names.setdefault(int(port), name)
    return names


def guess_name(port: int) -> str:
    """The name nmap's services table gives ``port``, with ``?``: a guess from the number
    alone (``amqp?``); ``unknown`` if the table has none."""
    name = _port_names().get(port)
    return f"{name}?" if name else UNKNOWN


def match_answer(port: int, data: bytes, probe: str = "banner") -> ServiceInfo | None:
    """The service ``data`` (an answer to ``probe``) reveals, from the table; None if none does."""
    found = _match(data, probe)
    return None if found is None else _named(port, data, probe, *found)


def _named(port: int, data: bytes, probe: str, sig: Signature, m: re.Match[bytes]) -> ServiceInfo:
    """The ServiceInfo signature ``sig`` (matched as ``m``) gives ``data``."""
    groups = m.groupdict()
    extra: dict[str, str | bool | int] = {k: v for k, v in sig.extra.items() if k != "confirm"}
    revision = _text(groups.get("revision"))
    if revision:
        extra["revision"] = revision
    if sig.name == "epmd":
        nodes = [f"{n.decode('latin-1')}:{p.decode()}" for n, p in _EPMD_NODE.findall(data)]
        if nodes:
            extra["nodes"] = " ".join(nodes)
    return ServiceInfo(
        port,
        sig.name,
        _text(groups.get("product")) or sig.product,
        _text(groups.get("version")),
        excerpt(data),
        probe,
        extra,
    )


def _match(data: bytes, probe: str) -> tuple[Signature, re.Match[bytes]] | None:
    for sig in SIGNATURES:
        if sig.probes is not None and probe not in sig.probes:
            continue
        m = sig.pattern.search(data)
        if m is not None:
            return sig, m
    return None


def excerpt(data: bytes) -> str:
    """The first line-ish of an answer, printable, for people to read in a report."""
    text = data[: _BANNER_CHARS * 2].decode("latin-1")
    printable = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text.rstrip("\r\n"))
    return printable[:_BANNER_CHARS]


async def identify_services(
    address: str | IPAddress,
    ports: Iterable[int],
    *,
    scope: Scope,
    concurrency: int = 64,
    banner_timeout: float = 2.0,
    probe_timeout: float | None = None,
) -> list[ServiceInfo]:
    """Identify the service on each of ``ports`` (open ones), at most ``concurrency`` at once."""
    host = str(scope.check_address(address))
    limit = asyncio.Semaphore(max(1, concurrency))
    wait = banner_timeout if probe_timeout is None else probe_timeout

    async def one(port: int) -> ServiceInfo:
        async with limit:
            return await identify_service(
                host, port, banner_timeout=banner_timeout, probe_timeout=wait
            )

    return name_erlang_nodes(await asyncio.gather(*(one(p) for p in sorted(set(ports)))))


def name_erlang_nodes(services: Iterable[ServiceInfo]) -> list[ServiceInfo]:
    """Ports that epmd (on the same host, among ``services``) lists as an Erlang node's, named
    ``erlang-dist`` where nothing else named them: a modern node closes on any handshake but
    a real one (RabbitMQ's 25672 does), so the port mapper is the one that can tell."""
    found = list(services)
    nodes: dict[int, str] = {}
    for info in found:
        if info.name == "epmd":
            for entry in str(info.extra.get("nodes", "")).split():
                node, _, port = entry.rpartition(":")
                if port.isdigit():
                    nodes[int(port)] = node
    return [
        ServiceInfo(
            i.port,
            "erlang-dist",
            "Erlang distribution",
            None,
            i.banner,
            "epmd",
            {**i.extra, "node": nodes[i.port]},
        )
        if i.port in nodes and (i.name == UNKNOWN or i.name.endswith("?"))
        else i
        for i in found
    ]


async def identify_service(
    host: str, port: int, *, banner_timeout: float, probe_timeout: float
) -> ServiceInfo:
    """One port: banner first, then the probes in parallel. ``host`` must be scope-checked."""
    data = b""
    conn = await _connect(host, port, banner_timeout)
    if conn is not None:
        reader, writer = conn
        try:
            data = await _read(reader, banner_timeout)
            if data:
                return await _from_banner(port, data, reader, writer, probe_timeout)
        finally:
            _close(writer)
    answers: list[tuple[str, bytes]] = []
    first, second = _waves(port)
    for wave in (first, second):
        info = await _probe_wave(host, port, wave, probe_timeout, answers)
        if info is not None:
            return info
    if answers:
        name, answer = answers[0]
        return ServiceInfo(port, guess_name(port), banner=excerpt(answer), probe=name)
    if conn is None:
        return ServiceInfo(port, UNKNOWN, probe="none")  # nothing to name: not even open
    return ServiceInfo(port, guess_name(port), probe="silent")


def _waves(port: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The probes to send at once, then those for a port that answered none of them: the
    common ones and any whose protocol lives on this port first (as nmap's port hints), the
    other silent-protocol probes after — so a silent port opens at most as many connections
    at once as before them, and an AMQP broker on a port of its own is still found."""
    first = tuple(name for name, _ in _PROBES if name not in _HINTS or port in _HINTS[name])
    return first, tuple(name for name, _ in _PROBES if name not in first)


async def _probe_wave(
    host: str, port: int, names: tuple[str, ...], timeout: float, answers: list[tuple[str, bytes]]
) -> ServiceInfo | None:
    """Send ``names`` at once; the first recognised answer, or None (answers kept)."""
    if not names:
        return None
    tasks = {
        name: asyncio.ensure_future(_probe(host, port, name, _PAYLOADS[name], timeout))
        for name in names
    }
    try:
        for finished in asyncio.as_completed(list(tasks.values())):
            info, name, answer = await finished
            if info is not None:
                # A redis (or an AMQP broker) answering another probe names itself but says
                # less than its own probe will (AUTH, version): ask that one, it is as quick.
                if info.probe != info.name and info.name in _PAYLOADS:
                    own = tasks.get(info.name) or asyncio.ensure_future(
                        _probe(host, port, info.name, _PAYLOADS[info.name], timeout)
                    )
                    tasks[info.name] = own
                    better = (await own)[0]
                    if better is not None and better.name == info.name:
                        return better
                return info
            if answer:
                answers.append((name, answer))
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return None


async def _from_banner(
    port: int,
    data: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout: float,
) -> ServiceInfo:
    found = _match(data, "banner")
    if found is None:
        return ServiceInfo(port, guess_name(port), banner=excerpt(data), probe="banner")
    info = match_answer(port, data, "banner")
    assert info is not None
    if found[0].extra.get("confirm") == "ehlo":  # a bare "220": smtp answers EHLO with 250
        answer = await _ask(reader, writer, b"EHLO lewis.invalid\r\n", timeout)
        if answer.startswith(b"250"):
            return ServiceInfo(port, "smtp", banner=info.banner, probe="banner+ehlo")
        return ServiceInfo(
            port, "ftp", banner=info.banner, probe="banner+ehlo", extra={"bare_greeting": True}
        )
    return info


async def _probe(
    host: str, port: int, name: str, payload: bytes, timeout: float
) -> tuple[ServiceInfo | None, str, bytes]:
    conn = await _connect(host, port, timeout)
    if conn is None:
        return None, name, b""
    reader, writer = conn
    try:
        answer = await _ask(reader, writer, payload, timeout)
        if name == "postgresql" and answer == b"S":
            return (
                ServiceInfo(port, "postgresql", "PostgreSQL", None, "S", name, {"ssl": True}),
                name,
                answer,
            )
        if name == "postgresql" and answer == b"N":  # no TLS: a startup packet confirms it
            answer = await _ask(reader, writer, _PG_STARTUP, timeout)
        info = (
            (match_answer(port, answer, name) or _late_greeting(port, answer)) if answer else None
        )
        if info is not None and info.name == "redis" and info.extra.get("auth_required") is False:
            found = _REDIS_VERSION.search(await _ask(reader, writer, b"INFO server\r\n", timeout))
            if found:
                info = ServiceInfo(
                    port,
                    info.name,
                    info.product,
                    found.group("version").decode(),
                    info.banner,
                    info.probe,
                    info.extra,
                )
        if info is not None and info.name == "mqtt" and answer == b"\x20\x02\x00\x00":
            writer.write(_MQTT_SUBSCRIBE_VERSION)
            found = await _read_until(reader, _MOSQUITTO_VERSION, timeout)
            if found:
                info = ServiceInfo(
                    port,
                    info.name,
                    "Mosquitto",
                    found.group("version").decode(),
                    info.banner,
                    info.probe,
                    info.extra,
                )
        return info, name, answer
    finally:
        _close(writer)


def _late_greeting(port: int, answer: bytes) -> ServiceInfo | None:
    """A server that speaks first but greeted after the banner wait (a busy host): its
    greeting then opens every probe's answer, ahead of its reply to the probe. Named from the
    greeting, as the banner would have been; a greeting that needs a confirming question
    (a bare "220": ftp or smtp) is left to the probes."""
    found = _match(answer, "banner")
    if found is None or found[0].probes is None or "confirm" in found[0].extra:
        return None  # only signatures of greetings (probes="banner"), not any-answer ones
    return _named(port, answer, "banner", *found)


async def _connect(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except OSError:  # TimeoutError included
        return None


async def _ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes, timeout: float
) -> bytes:
    try:
        writer.write(payload)
        await asyncio.wait_for(writer.drain(), timeout)
    except OSError:  # TimeoutError included
        return b""
    return await _read(reader, timeout)


async def _read_until(
    reader: asyncio.StreamReader, pattern: re.Pattern[bytes], timeout: float, reads: int = 4
) -> re.Match[bytes] | None:
    """Read (a few times at most) until ``pattern`` shows in what came; None if it does not."""
    data = b""
    for _ in range(reads):
        chunk = await _read(reader, timeout)
        if not chunk:
            return None
        data += chunk
        found = pattern.search(data)
        if found:
            return found
    return None


async def _read(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(_READ_BYTES), timeout)
    except OSError:  # TimeoutError included
        return b""


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


def _text(raw: bytes | None) -> str | None:
    return raw.decode("latin-1") if raw else None


__all__ = [
    "ServiceInfo",
    "Signature",
    "SIGNATURES",
    "UNKNOWN",
    "PROBE_COUNT",
    "match_answer",
    "excerpt",
    "guess_name",
    "name_erlang_nodes",
    "identify_services",
    "identify_service",
]
