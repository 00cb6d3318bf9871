"""Loopback TCP listeners for scanner tests and benchmarks: N random ports, a third with services.

About ``banner_share`` of the listeners speak a real service, cycling through the catalogue
below (banners and replies copied from real servers: OpenSSH, vsftpd, ProFTPD, Exim, Postfix,
Apache httpd, nginx, Redis, MySQL, MariaDB, PostgreSQL, Dovecot, memcached, a telnetd); the
rest accept and stay silent. Everything runs on one background thread with its own event
loop, bound to one loopback address only.

Also here: :func:`blackhole_port` (a listener whose accept queue is full, so new SYNs are
dropped — the one way to get an unanswered port on loopback without iptables) and
:func:`listening_ports` (the kernel's own list, the truth a scan is compared with).

Run standalone for a benchmark (prints the truth as JSON, serves until interrupted)::

    python tests/support/listeners.py --count 300 --host 127.0.0.1 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Service:
    """What one listener speaks, and what identification should find on it."""

    name: str  # the service name a scanner should report
    product: str | None = None
    version: str | None = None
    banner: bytes = b""  # sent as soon as a client connects
    replies: tuple[tuple[bytes, bytes], ...] = ()  # (request prefix, reply), first match wins
    default_reply: bytes | None = None  # to any other request
    close_after_reply: bool = False
    extra: dict[str, object] = field(default_factory=dict)  # e.g. {"auth_required": False}


def _mysql_greeting(version: str) -> bytes:
    # Protocol::HandshakeV10, as a 5.7/8.0 server or MariaDB sends it before any client byte.
    salt1, salt2 = (
        b"\x2a\x5f\x41\x3c\x1e\x6b\x33\x7e",
        b"\x4d\x21\x68\x2f\x5a\x3b\x77\x19\x55\x62\x24\x46",
    )
    body = (
        b"\x0a"
        + version.encode()
        + b"\x00"
        + struct.pack("<I", 8)
        + salt1
        + b"\x00"
        + struct.pack("<H", 0xFFFF)
        + b"\x21"
        + struct.pack("<H", 0x0002)
        + struct.pack("<H", 0xC1FF)
        + bytes([21])
        + bytes(10)
        + salt2
        + b"\x00"
        + b"mysql_native_password\x00"
    )
    return struct.pack("<I", len(body))[:3] + b"\x00" + body


def _redis_info(version: str) -> bytes:
    text = (
        f"# Server\r\nredis_version:{version}\r\nredis_git_sha1:00000000\r\n"
        "redis_mode:standalone\r\nos:Linux 5.15.0-91-generic x86_64\r\narch_bits:64\r\n"
        "tcp_port:6379\r\n"
    ).encode()
    return b"$%d\r\n%s\r\n" % (len(text), text)


_HTTP_DATE = b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
_PG_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
_PG_AUTH_MD5 = b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x8f\x1a\x3b\x44"
_PG_ERROR = (
    b"E\x00\x00\x00\x54SFATAL\x00VFATAL\x00C0A000\x00Munsupported frontend protocol"
    b"\x00Fpostmaster.c\x00L2146\x00RProcessStartupPacket\x00\x00"
)

CATALOGUE: tuple[Service, ...] = (
    Service(
        "ssh",
        "OpenSSH",
        "8.9p1",
        b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n",
        default_reply=b"Invalid SSH identification string.\r\n",
        close_after_reply=True,
    ),
    Service(
        "ftp",
        "vsftpd",
        "2.3.4",
        b"220 (vsFTPd 2.3.4)\r\n",
        replies=((b"USER", b"331 Please specify the password.\r\n"),),
        default_reply=b"530 Please login with USER and PASS.\r\n",
    ),
    Service(
        "smtp",
        "Exim",
        "4.90_1",
        b"220 mail.example.test ESMTP Exim 4.90_1 Ubuntu Mon, 01 Jan 2024 00:00:00 +0000\r\n",
        replies=(
            (
                b"EHLO",
                b"250-mail.example.test Hello\r\n250-SIZE 52428800\r\n"
                b"250-PIPELINING\r\n250 HELP\r\n",
            ),
        ),
        default_reply=b"500 unrecognized command\r\n",
    ),
    Service(
        "http",
        "Apache httpd",
        "2.4.49",
        replies=(
            (
                b"",
                b"HTTP/1.1 200 OK\r\n" + _HTTP_DATE + b"Server: Apache/2.4.49 (Unix)\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n",
            ),
        ),
        close_after_reply=True,
    ),
    Service(
        "redis",
        "Redis",
        "6.0.16",
        replies=((b"PING", b"+PONG\r\n"), (b"INFO", _redis_info("6.0.16"))),
        default_reply=b"-ERR unknown command, with args beginning with: \r\n",
        extra={"auth_required": False},
    ),
    Service("mysql", "MySQL", "5.7.33", _mysql_greeting("5.7.33-0ubuntu0.16.04.1")),
    Service(
        "postgresql",
        "PostgreSQL",
        replies=((_PG_SSL_REQUEST, b"N"), (b"\x00\x00\x00", _PG_AUTH_MD5)),
        default_reply=_PG_ERROR,
        close_after_reply=False,
    ),
    Service(
        "imap",
        "Dovecot imapd",
        None,
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
        b"STARTTLS AUTH=PLAIN] Dovecot (Ubuntu) ready.\r\n",
        default_reply=b"* BAD Error in IMAP command received by server.\r\n",
    ),
    Service(
        "pop3",
        "Dovecot pop3d",
        None,
        b"+OK Dovecot (Ubuntu) ready.\r\n",
        default_reply=b"-ERR Unknown command.\r\n",
    ),
    Service(
        "memcached",
        "memcached",
        "1.6.14",
        replies=((b"version", b"VERSION 1.6.14\r\n"), (b"stats", b"STAT pid 1\r\nEND\r\n")),
        default_reply=b"ERROR\r\n",
    ),
    Service(
        "ftp", None, None, b"220 \r\n", default_reply=b"530 Please login with USER and PASS.\r\n"
    ),
    Service(
        "ssh",
        "OpenSSH",
        "9.6p1",
        b"SSH-2.0-OpenSSH_9.6p1\r\n",
        default_reply=b"Invalid SSH identification string.\r\n",
        close_after_reply=True,
    ),
    Service(
        "ftp",
        "ProFTPD",
        "1.3.5",
        b"220 ProFTPD 1.3.5 Server (ProFTPD Default Installation) [127.0.0.1]\r\n",
        default_reply=b"530 Please login with USER and PASS\r\n",
    ),
    Service(
        "smtp",
        "Postfix smtpd",
        None,
        b"220 mx.example.test ESMTP Postfix (Ubuntu)\r\n",
        replies=((b"EHLO", b"250-mx.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),),
        default_reply=b"502 5.5.2 Error: command not recognized\r\n",
    ),
    Service(
        "http",
        "nginx",
        "1.18.0",
        replies=(
            (
                b"",
                b"HTTP/1.1 404 Not Found\r\nServer: nginx/1.18.0 (Ubuntu)\r\n"
                + _HTTP_DATE
                + b"Content-Type: text/html\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
        ),
        close_after_reply=True,
    ),
    Service(
        "redis",
        "Redis",
        None,
        replies=((b"", b"-NOAUTH Authentication required.\r\n"),),
        extra={"auth_required": True},
    ),
    Service(
        "mysql", "MariaDB", "10.6.12", _mysql_greeting("5.5.5-10.6.12-MariaDB-0ubuntu0.22.04.1")
    ),
    Service("telnet", None, None, b"\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27"),
)


@dataclass(frozen=True)
class Listener:
    """One listening port: the service it speaks, or None for a silent one."""

    port: int
    service: Service | None


class ListenerSet:
    """Running listeners on one address; use as a context manager (or call :meth:`close`)."""

    def __init__(
        self,
        address: str,
        listeners: dict[int, Listener],
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        servers: list[asyncio.base_events.Server],
    ) -> None:
        self.address, self.listeners = address, listeners
        self._loop, self._thread, self._servers = loop, thread, servers

    @property
    def ports(self) -> list[int]:
        return sorted(self.listeners)

    @property
    def service_ports(self) -> list[int]:
        return sorted(p for p, item in self.listeners.items() if item.service is not None)

    @property
    def silent_ports(self) -> list[int]:
        return sorted(p for p, item in self.listeners.items() if item.service is None)

    def truth(self) -> dict[str, object]:
        """JSON-ready: each port with the service name, product and version it should get."""
        return {
            "address": self.address,
            "ports": {
                str(p): None
                if item.service is None
                else {
                    "name": item.service.name,
                    "product": item.service.product,
                    "version": item.service.version,
                }
                for p, item in sorted(self.listeners.items())
            },
        }

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def stop() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ListenerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_listeners(
    count: int = 300,
    *,
    host: str = "127.0.0.1",
    banner_share: float = 1 / 3,
    seed: int | None = None,
    low: int = 1025,
    high: int = 65535,
    services: Sequence[Service] = CATALOGUE,
) -> ListenerSet:
    """Bind ``count`` random free ports on ``host`` (loopback only) and serve them on a thread.

    The first ``banner_share`` of them (in random order) speak ``services``, cycling.
    """
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"listeners bind to loopback only, not {host}")
    rng = random.Random(seed)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: dict[int, socket.socket] = {}
    candidates = rng.sample(range(low, high + 1), min(high - low + 1, count * 4))
    for port in candidates:
        if len(socks) == count:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        socks[port] = sock
    if len(socks) < count:
        for sock in socks.values():
            sock.close()
        raise RuntimeError(f"could bind only {len(socks)} of {count} ports on {host}")
    ports = list(socks)
    rng.shuffle(ports)
    with_service = round(count * banner_share)
    listeners = {
        port: Listener(port, services[i % len(services)] if i < with_service else None)
        for i, port in enumerate(ports)
    }

    loop = asyncio.new_event_loop()
    servers: list[asyncio.base_events.Server] = []
    ready = threading.Event()

    async def serve_all() -> None:
        for port, item in listeners.items():
            servers.append(await asyncio.start_server(_handler(item.service), sock=socks[port]))
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve_all())
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name=f"listeners-{host}", daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("listeners did not start within 30 s")
    return ListenerSet(host, listeners, loop, thread, servers)


@contextlib.contextmanager
def running_listeners(count: int = 300, **kwargs: object) -> Iterator[ListenerSet]:
    """:func:`start_listeners` as a context manager."""
    listeners = start_listeners(count, **kwargs)  # type: ignore[arg-type]
    try:
        yield listeners
    finally:
        listeners.close()


def _handler(
    service: Service | None,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if service is not None and service.banner:
                writer.write(service.banner)
                await writer.drain()
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                if service is None:
                    continue  # silent: swallow everything, answer nothing
                reply = _reply_to(service, data)
                if reply is None:
                    continue
                writer.write(reply)
                await writer.drain()
                if service.close_after_reply:
                    break
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    return handle


def _reply_to(service: Service, data: bytes) -> bytes | None:
    for prefix, reply in service.replies:
        if data.upper().startswith(prefix.upper()):
            return reply
    return service.default_reply


@contextlib.contextmanager
def blackhole_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that never answers: a listener that never accepts, its accept queue kept full.

    Linux drops a SYN to a listener whose accept queue is full, so a connect there waits —
    as to a firewalled port. The queue is filled by a few connects of our own first.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((host, 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):  # backlog 0 holds one; the rest sit in SYN_SENT, keeping it busy
            client = socket.socket(family, socket.SOCK_STREAM)
            client.setblocking(False)
            client.connect_ex((host, port))
            fillers.append(client)
        yield port
    finally:
        for client in fillers:
            client.close()
        server.close()


def listening_ports(address: str) -> set[int]:
    """TCP ports listening on ``address`` or on the wildcard, from /proc/net/tcp{,6}."""
    target = ipaddress.ip_address(address)
    ports: set[int] = set()
    for path, version in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            local = _proc_address(hex_addr, version)
            if local == target or (local.is_unspecified and version in (target.version, 6)):
                ports.add(int(hex_port, 16))
    return ports


def _proc_address(hex_addr: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    if version == 4:
        return ipaddress.IPv4Address(raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return addr.ipv4_mapped or addr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--banner-share", type=float, default=1 / 3)
    args = parser.parse_args()
    with running_listeners(
        args.count, host=args.host, seed=args.seed, banner_share=args.banner_share
    ) as listeners:
        print(json.dumps(listeners.truth()), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
