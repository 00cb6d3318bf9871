"""Service identification: the signature table on real banners, and probes on live listeners."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from lewis_tasks.domain.scope import Scope
from lewis_tasks.domain.services import (
    UNKNOWN,
    ServiceInfo,
    excerpt,
    guess_name,
    identify_services,
    match_answer,
)
from lewis_tasks.errors import OutOfScope
from tests.support.listeners import CATALOGUE, ListenerSet, Service, running_listeners

ADDRESS = "127.77.0.3"
SCOPE = Scope.from_allow()


def identify(address: str, ports: list[int]) -> list[ServiceInfo]:
    """Short timeouts: loopback answers in microseconds; silent ports cost the timeout."""
    return asyncio.run(
        # 1 s: at 0.3 s a loaded CI machine once missed connects and late greetings
        identify_services(address, ports, scope=SCOPE, banner_timeout=1.0, concurrency=128)
    )


@pytest.mark.parametrize(
    "answer, probe, expected",
    [
        (b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n", "banner", ("ssh", "OpenSSH", "8.9p1")),
        (b"SSH-2.0-dropbear_2022.83\r\n", "banner", ("ssh", "Dropbear sshd", "2022.83")),
        (b"SSH-2.0-libssh_0.9.6\r\n", "banner", ("ssh", "libssh_0.9.6", None)),
        (b"220 (vsFTPd 3.0.5)\r\n", "banner", ("ftp", "vsftpd", "3.0.5")),
        (
            b"220 ProFTPD 1.3.5e Server (Debian) [::ffff:10.0.0.1]\r\n",
            "banner",
            ("ftp", "ProFTPD", "1.3.5e"),
        ),
        (
            b"220---------- Welcome to Pure-FTPd [privsep] ----------\r\n",
            "banner",
            ("ftp", "Pure-FTPd", None),
        ),
        (b"220 files.example.test FTP server ready.\r\n", "banner", ("ftp", None, None)),
        (
            b"220 mail.example.test ESMTP Exim 4.96 Mon, 01 Jan 2024 00:00:00 +0000\r\n",
            "banner",
            ("smtp", "Exim", "4.96"),
        ),
        (
            b"220 mx.example.test ESMTP Postfix (Debian/GNU)\r\n",
            "banner",
            ("smtp", "Postfix smtpd", None),
        ),
        (
            b"220 relay.example.test Microsoft ESMTP MAIL Service ready\r\n",
            "banner",
            ("smtp", None, None),
        ),
        (
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot (Debian) ready.\r\n",
            "banner",
            ("imap", "Dovecot imapd", None),
        ),
        (b"* OK [CAPABILITY IMAP4rev1] Server ready\r\n", "banner", ("imap", None, None)),
        (b"+OK Dovecot ready.\r\n", "banner", ("pop3", "Dovecot pop3d", None)),
        (b"+OK POP3 server ready\r\n", "banner", ("pop3", None, None)),
        (b"\xff\xfd\x18\xff\xfd\x20", "banner", ("telnet", None, None)),
        (b"RFB 003.008\n", "banner", ("vnc", None, "003.008")),
        (
            b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.58 (Ubuntu)\r\n\r\n",
            "http",
            ("http", "Apache httpd", "2.4.58"),
        ),
        (
            b"HTTP/1.1 301 Moved\r\nServer: nginx/1.24.0\r\n\r\n",
            "http",
            ("http", "nginx", "1.24.0"),
        ),
        (b"HTTP/1.0 200 OK\r\nServer: gunicorn\r\n\r\n", "http", ("http", "gunicorn", None)),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "http", ("http", None, None)),
        (b"+PONG\r\n", "redis", ("redis", "Redis", None)),
        (b"-NOAUTH Authentication required.\r\n", "redis", ("redis", "Redis", None)),
        (
            b"-ERR unknown command 'HEAD', with args beginning with: '/' \r\n",
            "http",
            ("redis", "Redis", None),
        ),
        (b"VERSION 1.6.21\r\n", "memcached", ("memcached", "memcached", "1.6.21")),
        (
            b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
            "postgresql",
            ("postgresql", "PostgreSQL", None),
        ),
    ],
)
def test_signatures_name_real_answers(
    answer: bytes, probe: str, expected: tuple[str, str | None, str | None]
) -> None:
    info = match_answer(4242, answer, probe)
    assert info is not None
    assert (info.name, info.product, info.version) == expected
    assert info.port == 4242 and info.probe == probe


def test_mysql_and_mariadb_greetings_give_the_upstream_version() -> None:
    by_product = {s.product: s for s in CATALOGUE if s.name == "mysql"}
    mysql = match_answer(3306, by_product["MySQL"].banner)
    maria = match_answer(3306, by_product["MariaDB"].banner)
    assert mysql is not None and (mysql.product, mysql.version) == ("MySQL", "5.7.33")
    assert maria is not None and (maria.product, maria.version) == ("MariaDB", "10.6.12")


@pytest.mark.parametrize(
    "answer, probe",
    [
        (b"+OK\r\n", "redis"),  # pop3's greeting shape, but as an answer to a probe
        (b"-ERR unknown command\r\n", "banner"),  # a greeting, not redis answering a probe
        (b"VERSION 1.6.21\r\n", "http"),
        (b"hello there\r\n", "banner"),
        (b"", "banner"),
    ],
)
def test_signatures_only_apply_where_they_mean_something(answer: bytes, probe: str) -> None:
    assert match_answer(1, answer, probe) is None


def test_excerpts_are_printable_and_short() -> None:
    text = excerpt(b"\x00\x01ab\r\ncd" + b"x" * 500 + b"\r\n")
    assert text.startswith("\\x00\\x01ab\\x0d\\x0acd") and len(text) == 160
    assert text.isprintable()


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    with running_listeners(90, host=ADDRESS, seed=21) as running:
        yield running


@pytest.fixture(scope="module")
def identified(listeners: ListenerSet) -> dict[int, ServiceInfo]:
    found = identify(ADDRESS, listeners.ports)
    return {info.port: info for info in found}


def test_every_service_listener_is_identified(
    listeners: ListenerSet, identified: dict[int, ServiceInfo]
) -> None:
    assert len(listeners.service_ports) == 30  # every catalogue entry at least once
    for port in listeners.service_ports:
        service = listeners.listeners[port].service
        assert service is not None
        info = identified[port]
        assert (info.name, info.product, info.version) == (
            service.name,
            service.product,
            service.version,
        ), (port, info)
        for key, value in service.extra.items():
            assert info.extra.get(key) == value, (port, info)


def test_silent_listeners_are_a_guess_from_the_port_number(
    listeners: ListenerSet, identified: dict[int, ServiceInfo]
) -> None:
    for port in listeners.silent_ports:
        assert (identified[port].name, identified[port].probe) == (guess_name(port), "silent")
        assert identified[port].name == UNKNOWN or identified[port].name.endswith("?")


def test_a_bare_220_is_ftp_unless_it_speaks_smtp() -> None:
    smtp = Service(
        "smtp",
        banner=b"220 \r\n",
        replies=((b"EHLO", b"250-relay\r\n250 PIPELINING\r\n"),),
        default_reply=b"500 what\r\n",
    )
    ftp = Service("ftp", banner=b"220 \r\n", default_reply=b"530 Please login.\r\n")
    with running_listeners(
        2, host="127.77.0.4", banner_share=1.0, seed=1, services=(smtp, ftp)
    ) as two:
        found = identify("127.77.0.4", two.ports)
    names = {info.port: info.name for info in found}
    expected = {p: item.service.name for p, item in two.listeners.items() if item.service}
    assert names == expected and sorted(names.values()) == ["ftp", "smtp"]


def test_a_closed_port_is_unknown_without_answers() -> None:
    found = identify("127.77.0.5", [9])
    assert (found[0].name, found[0].probe) == (UNKNOWN, "none")


def test_identification_respects_the_scope() -> None:
    with pytest.raises(OutOfScope):
        asyncio.run(identify_services("127.0.0.1", [22], scope=Scope.from_allow(["::1"])))


def test_service_info_round_trips_as_json(identified: dict[int, ServiceInfo]) -> None:
    for info in identified.values():
        assert ServiceInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
