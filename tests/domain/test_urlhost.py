"""One reading of a URL's host: the URL Standard's rules, and refusing URLs two parsers split."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from lewis_tasks.domain.httprequest import normalise_url, resolve_location
from lewis_tasks.domain.redact import redact_url
from lewis_tasks.domain.urlhost import Base, parse_host, parse_ipv4, url_host
from lewis_tasks.errors import InvalidInput

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://Example.TEST./x", "example.test."),
        ("HTTP://0x7f.1:80/", V4("127.0.0.1")),
        ("http://%31%32%37.0.0.1/", V4("127.0.0.1")),  # percent-decoded before the IPv4 parser
        ("http://127.0.0.2\\@127.0.0.1/", V4("127.0.0.2")),  # \ ends the authority
        ("http://a:b@c:d@127.0.0.3:8/", V4("127.0.0.3")),  # the last @ ends the userinfo
        ("http:/\\127.0.0.4/", V4("127.0.0.4")),  # any run of slashes either way
        ("  http://127.0.0.5\t/ ", V4("127.0.0.5")),  # outer spaces and tabs dropped
        ("http://[::ffff:127.0.0.6]:1/", V6("::ffff:7f00:6")),
        ("https://xn--bcher-kva.test/", "xn--bcher-kva.test"),
        ("https://BÜCHER.test/", "xn--bcher-kva.test"),
        ("http://127。0。0。7/", V4("127.0.0.7")),  # ideographic full stops
    ],
)
def test_the_url_standard_reading(url: str, host: object) -> None:
    assert url_host(url) == host


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127%1/", "forbidden character(s) '%'"),
        ("http://1.2.3.4.5/", "ends in a number but is not an IPv4 address"),
        ("http://foo.0x/", "ends in a number"),
        ("http://[fe80::1%25eth0]/", "not an IPv6 address"),
        ("http://[::1/", "must end with ']'"),
        ("http://user@/", "empty host"),
        ("http://h:65536/", "is not a port number"),
        ("http://%ff.test/", "not UTF-8 text"),
        ("http://\udc80.test/", "not UTF-8 text"),
        ("ftp://127.0.0.1/", "not an http(s) URL"),
        ("/relative", "nothing to resolve it against"),
    ],
)
def test_hosts_the_url_standard_refuses(url: str, why: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        url_host(url)
    assert why in str(refused.value)


BASE = Base("http", V4("127.0.0.2"))


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("/x", V4("127.0.0.2")),
        ("?q", V4("127.0.0.2")),
        ("http:path", V4("127.0.0.2")),
        ("//127.0.0.9/", V4("127.0.0.9")),
        ("\\\\127.0.0.9", V4("127.0.0.9")),
        ("/\\127.0.0.9/", V4("127.0.0.9")),
        ("http:\\\\127.0.0.9/", V4("127.0.0.9")),
        ("https:127.0.0.9", V4("127.0.0.9")),  # another scheme: an authority follows
    ],
)
def test_relative_references_against_a_base(location: str, host: object) -> None:
    assert url_host(location, BASE) == host


def test_ipv4_numbers_follow_the_standard_not_int() -> None:
    assert parse_ipv4("0x7f.0.0.1") == V4("127.0.0.1")
    assert parse_ipv4("0377.0377.0377.0377") == V4("255.255.255.255")
    assert parse_ipv4("1.2.65535") == V4("1.2.255.255")
    for text in ("1.2.65536", "256.1", " 1", "1_0", "٣.1", "0x1g", "1..2", "1.2.3.4.5"):
        assert parse_ipv4(text) is None, text


def test_parse_host_lowercases_and_refuses_forbidden_points() -> None:
    assert parse_host("ExAmPle.Test") == "example.test"
    for bad in ("a b", "a<b", "a^b", "a|b", "a\x7fb"):
        with pytest.raises(InvalidInput, match="forbidden character"):
            parse_host(bad)


# --- normalise_url: the session's reading must equal the standard's ------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127%1:8/", "'127%1' is not a valid host name"),
        ("http://127.0.0.1%2e.evil.test/", "is not a valid host name"),
        ("http://1.2.3.4.5/", "ends in a number but is not an IPv4 address"),
        ("http://0x100000000/", "ends in a number but is not an IPv4 address"),
        ("http://127.0.0.2\\@127.0.0.1/", "is not a URL"),
        ("http://[fe80::1%25eth0]:80/", "not an IPv6 address"),
    ],
)
def test_urls_two_parsers_split_are_refused(url: str, shown: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        normalise_url(url)
    assert shown in str(refused.value)
    assert type(refused.value) is InvalidInput


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://2130706433:8/", "http://127.0.0.1:8/"),
        ("http://0x7f.1/a?b#c", "http://127.0.0.1/a?b#c"),
        ("http://[::ffff:7f00:1]/", "http://127.0.0.1/"),
        ("http://127.0.0.1./", "http://127.0.0.1/"),
        ("http://①②⑦.0.0.1/", "http://127.0.0.1/"),
        ("http://[::127.0.0.1]/", "http://[::7f00:1]/"),  # compatible: stays IPv6
        ("http://LocalHost./", "http://localhost./"),
    ],
)
def test_urls_both_parsers_agree_on_are_normalised(url: str, normal: str) -> None:
    assert str(normalise_url(url)) == normal


def test_a_redirect_location_is_read_both_ways() -> None:
    base = URL("http://127.0.0.2:8/a/b")
    assert str(resolve_location(base, "../c")) == "http://127.0.0.2:8/c"
    assert str(resolve_location(base, "//0x7f.2:9/")) == "http://127.0.0.2:9/"
    with pytest.raises(
        InvalidInput,
        match="reads as 127.0.0.2 to this client but 127.0.0.1 under the URL Standard; refused",
    ):
        resolve_location(base, "/\\127.0.0.1/")


def test_redact_url_masks_every_userinfo() -> None:
    assert redact_url("http://u:pw@h/") == "http://u:***@h/"
    assert (
        redact_url("see 'https://tok@h:1/x' and http://a:b@c@d/")
        == "see 'https://***@h:1/x' and http://a:***@d/"
    )
    assert redact_url("http://h/p@q?x=@y") == "http://h/p@q?x=@y"  # no userinfo: untouched


@pytest.mark.parametrize(
    "url",
    [
        "http://eve:tops3cret@exa mple.test/",
        "ftp://eve:tops3cret@h/",
        "http://eve:tops3cret@1.2.3.4.5/",
        "http://eve:tops3cret@h:99999/",
    ],
)
def test_refusals_quote_the_url_with_its_password_masked(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        normalise_url(url)
    assert "tops3cret" not in str(refused.value) and "eve:***@" in str(refused.value)
    with pytest.raises(InvalidInput) as refused:
        resolve_location(URL("http://127.0.0.2/"), url)
    assert "tops3cret" not in str(refused.value) and "eve:***@" in str(refused.value)
