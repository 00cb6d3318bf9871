"""Properties of target and port-spec parsing, over any text: only InvalidInput escapes,
nothing out of range is accepted, and specs and chunks survive their round trips.

Examples per test come from the Hypothesis profile (tests/conftest.py: 2,000 by default,
100,000 under ``-m slow``).
"""

from __future__ import annotations

import ipaddress
import random

from hypothesis import assume, example, given
from hypothesis import strategies as st

from lewis_tasks.domain.targets import (
    MAX_PORT,
    ScanChunk,
    ScanHost,
    format_ports,
    parse_ports,
    parse_target,
    parse_targets,
    plan_chunks,
    ranked_top_ports,
)
from lewis_tasks.errors import InvalidInput

# ---------------------------------------------------------------- strategies

# the characters port specs are made of, Unicode digits and look-alikes among them
_SPEC_CHARS = st.sampled_from(
    list("0123456789--,, topTOP")
    + ["١", "٢", "²", "߀", "８", "\u2003", "\u00a0", "\t", "+", "_", "."]
)
SPEC_LIKE = st.text(_SPEC_CHARS, max_size=24)
ANY_TEXT = st.text(max_size=40)
PORT = st.integers(1, MAX_PORT)
NUMBER_TEXT = st.integers(-(10**6), 10**30).map(str)


def _sample_ports(seed: int, count: int) -> set[int]:
    return set(random.Random(seed).sample(range(1, MAX_PORT + 1), count))


# small sets drawn port by port (Hypothesis shrinks those well), large ones from a seed (a
# draw per port made a 10,000-example run take a minute)
PORT_SETS = st.one_of(
    st.sets(PORT, min_size=1, max_size=4),
    st.builds(_sample_ports, st.integers(0, 2**32), st.integers(1, 150)),
)


@st.composite
def spec_tokens(draw: st.DrawFn) -> tuple[str, set[int]]:
    """A valid spec token and the ports it means (the model)."""
    kind = draw(st.sampled_from(["n", "range", "open_hi", "open_lo", "top"]))
    if kind == "n":
        port = draw(PORT)
        return f"{port}", {port}
    if kind == "range":  # narrow, and the sets stay cheap (whole-range specs: examples above)
        lo = draw(PORT)
        hi = min(MAX_PORT, lo + draw(st.integers(0, 100)))
        return f"{lo}-{hi}", set(range(lo, hi + 1))
    if kind == "open_hi":
        lo = draw(st.integers(MAX_PORT - 100, MAX_PORT))  # small sets keep the model cheap
        return f"{lo}-", set(range(lo, MAX_PORT + 1))
    if kind == "open_lo":
        hi = draw(st.integers(1, 100))
        return f"-{hi}", set(range(1, hi + 1))
    count = draw(st.integers(1, 40))  # (top1000: the explicit examples)
    return draw(st.sampled_from([f"top{count}", f"TOP{count}", f"top-{count}"])), set(
        ranked_top_ports()[:count]
    )


# ---------------------------------------------------------------- port specs


@given(st.one_of(ANY_TEXT, SPEC_LIKE))
@example("١٢٣")
@example("²")
@example("9" * 5000)
@example("top" + "9" * 5000)
def test_any_text_is_a_sorted_in_range_port_list_or_invalid_input(spec: str) -> None:
    try:
        ports = parse_ports(spec)
    except InvalidInput:
        return
    assert ports and ports == sorted(set(ports))
    assert ports[0] >= 1 and ports[-1] <= MAX_PORT
    assert all(type(p) is int for p in ports)


@given(st.lists(spec_tokens(), min_size=1, max_size=5), st.sampled_from([",", ", ", " ,"]))
@example([("top1000", set(ranked_top_ports())), ("-", set(range(1, MAX_PORT + 1)))], ",")
def test_valid_specs_mean_exactly_the_union_of_their_tokens(
    tokens: list[tuple[str, set[int]]], sep: str
) -> None:
    spec = sep.join(text for text, _ in tokens)
    expected = set().union(*(ports for _, ports in tokens))
    assert parse_ports(spec) == sorted(expected)


@given(NUMBER_TEXT)
def test_a_single_number_is_accepted_exactly_when_it_is_a_port(text: str) -> None:
    number = int(text)
    # "-M" is the open range 1..M (nmap)
    accepted = -number <= MAX_PORT if number < 0 else 1 <= number <= MAX_PORT
    try:
        ports = parse_ports(text)
    except InvalidInput:
        assert not accepted, text
        return
    assert accepted, f"{text!r} accepted as {ports[:3]}…"
    assert ports == ([number] if number > 0 else list(range(1, -number + 1)))


@given(PORT_SETS)
@example(set(range(1, MAX_PORT + 1)))
def test_format_then_parse_is_the_identity_on_port_sets(ports: set[int]) -> None:
    spec = format_ports(ports)
    assert parse_ports(spec) == sorted(ports)
    assert len(spec) <= len(",".join(map(str, sorted(ports))))  # ranges never make it longer


@given(st.lists(spec_tokens(), min_size=1, max_size=4).map(lambda ts: ",".join(t for t, _ in ts)))
@example("-")
@example("top1000,1-1024")
def test_the_formatted_spec_is_canonical(spec: str) -> None:
    ports = parse_ports(spec)
    canonical = format_ports(ports)
    assert parse_ports(canonical) == ports and format_ports(parse_ports(canonical)) == canonical


# ---------------------------------------------------------------- targets


@given(
    st.one_of(ANY_TEXT, st.text("0123456789abcdefx.:/[]%-١²", max_size=30)), st.integers(1, 4096)
)
@example("10.0.0.0/٢٤", 4096)
@example("\u212aali.example", 1)
@example("1.2.3.4/" + "9" * 5000, 10)
def test_any_text_is_a_target_within_the_cap_or_invalid_input(token: str, max_hosts: int) -> None:
    try:
        target = parse_target(token, max_hosts=max_hosts)
    except InvalidInput:
        return
    assert (target.hostname is None) != (not target.addresses)  # one or the other
    # nothing but ASCII is read as a digit or a letter ('١٠/٢٤', 'K' for 'k'); an IPv6 zone
    # id after '%' is the scope's business
    assert token.strip().split("%", 1)[0].isascii()
    if target.hostname is not None:
        name = target.hostname
        assert name == token.strip().lower().rstrip(".")  # the name typed, not a look-alike
        assert 0 < len(name) <= 253
        assert all(0 < len(label) <= 63 for label in name.split("."))
        assert not all(label.isdigit() for label in name.split("."))
    else:
        assert len(target.addresses) <= max_hosts
        assert len(set(target.addresses)) == len(target.addresses)
        for address in target.addresses:
            assert str(ipaddress.ip_address(address)) == address  # canonical spelling


@given(st.ip_addresses())
def test_every_address_parses_to_itself(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    # (IPv4 embedded in IPv6 is the scope's business: how it is read is tested there)
    assume(
        not (
            addr.version == 6
            and (addr in ipaddress.ip_network("::/96") or addr.ipv4_mapped is not None)
        )
    )
    for spelling in (addr.exploded, f"[{addr}]" if addr.version == 6 else str(addr)):
        assert parse_target(spelling, max_hosts=1).addresses == (str(addr),)


@given(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda n: (ipaddress.IPv4Address(n), 32)),
        st.integers(2**96, 2**128 - 1).map(lambda n: (ipaddress.IPv6Address(n), 128)),
    ),
    st.integers(0, 8),
    st.integers(1, 256),
)
def test_a_block_expands_to_its_hosts_or_is_refused_over_the_cap(
    base: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], host_bits: int, max_hosts: int
) -> None:
    addr, width = base  # (no IPv6 below 2**96: IPv4 embedded in IPv6 is the scope's business)
    prefix = width - host_bits
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    # hosts: IPv4 blocks skip network and broadcast, IPv6 ones the subnet-router anycast
    count = net.num_addresses - (
        2 if width == 32 and prefix < 31 else 1 if width == 128 and prefix < 127 else 0
    )
    try:
        target = parse_target(f"{addr}/{prefix}", max_hosts=max_hosts)
    except InvalidInput as exc:
        assert "over the cap" in str(exc) and count > max_hosts
        return
    hosts = [ipaddress.ip_address(a) for a in target.addresses]
    assert len(hosts) == count <= max_hosts and all(h in net for h in hosts)
    assert hosts == sorted(set(hosts))
    if net.version == 4 and prefix < 31:  # network and broadcast are not hosts
        assert net.network_address not in hosts and net.broadcast_address not in hosts


@given(
    st.lists(
        st.one_of(
            st.text(max_size=12),
            st.ip_addresses().map(str),
            st.builds("{}/{}".format, st.ip_addresses(v=4), st.integers(26, 32)),
        ),
        max_size=3,
    ),
    st.integers(1, 600),
)
def test_many_tokens_together_never_pass_the_cap(tokens: list[str], max_hosts: int) -> None:
    try:
        targets = parse_targets(tokens, max_hosts=max_hosts)
    except InvalidInput:
        return
    assert targets and sum(len(t.addresses) or 1 for t in targets) <= max_hosts


# ---------------------------------------------------------------- chunks


@given(st.integers(1, 3), PORT_SETS, st.integers(1, 64), st.integers(1, 400))
def test_chunks_cover_hosts_times_ports_exactly_once_and_travel_as_dicts(
    host_count: int, ports: set[int], chunk_ports: int, max_total: int
) -> None:
    hosts = [
        ScanHost(a, n)
        for a, n in [("127.0.0.1", None), ("::1", "localhost"), ("10.1.2.3", "x.example")][
            :host_count
        ]
    ]
    try:
        chunks = plan_chunks(hosts, list(ports), chunk_ports=chunk_ports, max_ports_total=max_total)
    except InvalidInput as exc:
        assert len(hosts) * len(ports) > max_total and "over the cap" in str(exc)
        return
    assert len(hosts) * len(ports) <= max_total
    seen = [(c.address, p) for c in chunks for p in c.port_list()]
    assert sorted(seen) == sorted((h.address, p) for h in hosts for p in ports)
    for chunk in chunks:
        assert 1 <= chunk.port_count == len(chunk.port_list()) <= chunk_ports
        assert ScanChunk.from_dict(chunk.to_dict()) == chunk
