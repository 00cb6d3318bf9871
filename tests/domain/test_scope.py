"""The scope policy: loopback by default, every spelling normalised, never-allowed classes."""

from __future__ import annotations

import pytest

from lewis_tasks.domain.scope import DEFAULT_ALLOW, Scope, parse_ip
from lewis_tasks.errors import InvalidInput, OutOfScope


@pytest.mark.parametrize("spelling", ["127.0.0.1", "2130706433", "0x7f000001", "0x7f.1", "127.1",
                                      "0177.0.0.1", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "127.0.0.1."])
def test_every_spelling_of_loopback_is_the_same_address(spelling: str) -> None:
    assert str(parse_ip(spelling)) == "127.0.0.1"


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"])
def test_never_allowed_classes_are_refused_even_if_listed(address: str) -> None:
    scope = Scope.from_allow(["0.0.0.0/0", "::/0"])
    with pytest.raises(OutOfScope, match="never allowed"):
        scope.check_address(address)


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "8.8.8.8", "::ffff:10.0.0.1",
                                     "167772161", "2001:db8::1"])
def test_default_scope_is_loopback_only(address: str) -> None:
    with pytest.raises(OutOfScope, match="out of scope"):
        Scope.from_allow(DEFAULT_ALLOW).check_address(address)


def test_allowed_addresses_pass_normalised() -> None:
    scope = Scope.from_allow(DEFAULT_ALLOW)
    assert str(scope.check_address("::1")) == "::1"
    assert str(scope.check_address("127.1")) == "127.0.0.1"
    assert [str(a) for a in scope.resolve("localhost")] in (["127.0.0.1"], ["::1", "127.0.0.1"],
                                                             ["127.0.0.1", "::1"])


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
