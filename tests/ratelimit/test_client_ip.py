"""Client addresses behind proxies: only what a trusted proxy saw may choose the budget key."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.core.settings import ConfigError
from app.ratelimit.client_ip import ClientResolver, parse_address

PROXIES = ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8"]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode("latin-1")) for value in values]


def forwarded(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"forwarded", value.encode("latin-1")) for value in values]


@pytest.fixture
def resolver() -> ClientResolver:
    return ClientResolver(PROXIES)


def test_no_trusted_proxies_uses_the_socket_peer() -> None:
    resolver = ClientResolver([])
    assert resolver.resolve("203.0.113.7", xff("198.51.100.1")) == ip("203.0.113.7")


def test_spoofed_header_from_an_untrusted_peer_is_ignored(resolver: ClientResolver) -> None:
    headers = xff("1.1.1.1") + forwarded("for=2.2.2.2")
    assert resolver.resolve("203.0.113.7", headers) == ip("203.0.113.7")


def test_walks_right_to_left_past_trusted_proxies(resolver: ClientResolver) -> None:
    # client spoofs 6.6.6.6; the edge proxy saw 198.51.100.9; two internal proxies follow.
    headers = xff("6.6.6.6, 198.51.100.9, 10.1.1.1", "192.168.1.1")
    assert resolver.resolve("10.9.9.9", headers) == ip("198.51.100.9")


def test_header_lines_are_concatenated_in_order(resolver: ClientResolver) -> None:
    assert resolver.resolve("10.0.0.1", xff("198.51.100.1", "198.51.100.2")) == ip("198.51.100.2")


def test_all_trusted_chain_gives_the_leftmost(resolver: ClientResolver) -> None:
    assert resolver.resolve("10.0.0.1", xff("10.0.0.3, 10.0.0.2")) == ip("10.0.0.3")


def test_trusted_peer_without_header_is_the_client(resolver: ClientResolver) -> None:
    assert resolver.resolve("10.0.0.1", []) == ip("10.0.0.1")
    assert resolver.resolve("10.0.0.1", xff("  ")) == ip("10.0.0.1")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("garbage", "10.0.0.1"),
        ("unknown", "10.0.0.1"),
        ("", "10.0.0.1"),
        (",", "10.0.0.1"),
        ("198.51.100.1, , 10.0.0.2", "10.0.0.2"),  # empty item: stop at the last trusted hop
        ("198.51.100.1, unknown", "10.0.0.1"),
        ("198.51.100.1:5678", "198.51.100.1"),
        ("198.51.100.1:port", "10.0.0.1"),
        ("198.51.100.1:", "10.0.0.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1", "10.0.0.1"),
        ("[2001:db8::1]x", "10.0.0.1"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("999.1.1.1", "10.0.0.1"),
        ("1.2.3.4.5", "10.0.0.1"),
        ('"198.51.100.1"', "198.51.100.1"),
        ('"', "10.0.0.1"),
        ("\x00\xff\u00e9", "10.0.0.1"),
        ("1" * 5000, "10.0.0.1"),
        ("10.0.0.2," * 5000 + "10.0.0.3", "10.0.0.2"),  # overlong: only the last hops are read
    ],
)
def test_malformed_hops_never_raise_and_stop_the_walk(resolver: ClientResolver, header: str, expected: str) -> None:
    assert resolver.resolve("10.0.0.1", xff(header)) == ip(expected)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("for=198.51.100.1", "198.51.100.1"),
        ("For=198.51.100.1;proto=https;by=10.0.0.1", "198.51.100.1"),
        ('for="198.51.100.1:4711"', "198.51.100.1"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ("for=198.51.100.1, for=10.0.0.2", "198.51.100.1"),
        ("for=6.6.6.6, for=198.51.100.1;proto=http", "198.51.100.1"),
        ("for=unknown", "10.0.0.1"),
        ("for=_hidden, for=10.0.0.2", "10.0.0.2"),
        ("proto=https", "10.0.0.1"),
        ('for="198.51.100.1', "10.0.0.1"),
        ("for=", "10.0.0.1"),
        (";;;,,,", "10.0.0.1"),
    ],
)
def test_forwarded_header_forms(resolver: ClientResolver, header: str, expected: str) -> None:
    assert resolver.resolve("10.0.0.1", forwarded(header)) == ip(expected)


def test_an_unterminated_quote_cannot_swallow_the_proxy_element(resolver: ClientResolver) -> None:
    # The client sent `for="6.6.6.6`; its proxy appended the address it really saw.
    assert resolver.resolve("10.0.0.1", forwarded('for="6.6.6.6, for=198.51.100.1')) == ip("198.51.100.1")


def test_x_forwarded_for_wins_over_forwarded_by_default(resolver: ClientResolver) -> None:
    headers = forwarded("for=198.51.100.2") + xff("198.51.100.1")
    assert resolver.resolve("10.0.0.1", headers) == ip("198.51.100.1")


def test_forwarded_only_resolver_ignores_x_forwarded_for() -> None:
    resolver = ClientResolver(PROXIES, forwarded_headers="forwarded")
    headers = xff("6.6.6.6") + forwarded("for=198.51.100.2")
    assert resolver.resolve("10.0.0.1", headers) == ip("198.51.100.2")
    assert resolver.resolve("10.0.0.1", xff("6.6.6.6")) == ip("10.0.0.1")


def test_header_names_are_matched_case_insensitively(resolver: ClientResolver) -> None:
    assert resolver.resolve("10.0.0.1", [(b"X-Forwarded-For", b"198.51.100.1")]) == ip("198.51.100.1")


def test_peer_that_is_not_an_address_is_unknown(resolver: ClientResolver) -> None:
    assert resolver.resolve("testclient", xff("198.51.100.1")) is None
    assert resolver.resolve(None, xff("198.51.100.1")) is None
    assert resolver.client_key(None) == "unknown"


def test_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    assert resolver.resolve("::ffff:203.0.113.7", []) == ip("203.0.113.7")
    assert resolver.client_key(resolver.resolve("::ffff:203.0.113.7", [])) == "203.0.113.7"
    # and a mapped proxy address is trusted like the IPv4 one
    assert resolver.resolve("::ffff:10.0.0.1", xff("198.51.100.1")) == ip("198.51.100.1")


def test_ipv6_clients_are_keyed_by_their_64(resolver: ClientResolver) -> None:
    a = resolver.client_key(ip("2001:db8:1:2::1"))
    b = resolver.client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    c = resolver.client_key(ip("2001:db8:1:3::1"))
    assert a == b == "2001:db8:1:2::/64"
    assert c != a
    assert ClientResolver([], ipv6_prefix=48).client_key(ip("2001:db8:1:3::1")) == "2001:db8:1::/48"
    assert resolver.client_key(ip("203.0.113.7")) == "203.0.113.7"


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        ClientResolver(["not-a-network"])
    with pytest.raises(ValueError, match="ipv6_prefix"):
        ClientResolver([], ipv6_prefix=0)


# ---- property: the answer is always the peer or an address the header carried ----------------

_POOL4 = ["10.0.0.1", "10.2.3.4", "192.168.1.1", "198.51.100.1", "203.0.113.9", "8.8.8.8"]
_POOL6 = ["fd00::1", "fd12::5", "2001:db8::1", "2001:db8:0:1::9", "::ffff:10.0.0.7", "::ffff:198.51.100.3"]
_GARBAGE = ["", " ", "unknown", "_hidden", "[", "]", "::::", "1.2.3", "a.b.c.d", "1.2.3.4:x", '"', "[::1", "for="]


@st.composite
def _hop(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    """A hop as text, and the address it carries (None for garbage)."""
    kind = draw(st.sampled_from(["v4", "v4port", "v6", "v6bracket", "garbage", "text"]))
    if kind in ("v4", "v4port"):
        address = draw(st.sampled_from(_POOL4))
        port = draw(st.integers(0, 65535))
        return (address if kind == "v4" else f"{address}:{port}"), parse_address(address)
    if kind in ("v6", "v6bracket"):
        address = draw(st.sampled_from(_POOL6))
        port = draw(st.integers(0, 65535))
        return (address if kind == "v6" else f"[{address}]:{port}"), parse_address(address)
    if kind == "garbage":
        return draw(st.sampled_from(_GARBAGE)), None
    text = draw(st.text(max_size=30).filter(lambda t: "," not in t))
    return text, parse_address(text)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    peer=st.sampled_from(_POOL4 + _POOL6 + ["testclient"]),
    hops=st.lists(_hop(), max_size=8),
    use_forwarded=st.booleans(),
    split_lines=st.booleans(),
)
def test_resolved_address_is_the_peer_or_a_header_address(
    peer: str,
    hops: list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]],
    use_forwarded: bool,
    split_lines: bool,
) -> None:
    resolver = ClientResolver(PROXIES)
    texts = [f'for="{text}"' if use_forwarded else text for text, _ in hops]
    values = texts if split_lines else [", ".join(texts)]
    headers = [(b"forwarded" if use_forwarded else b"x-forwarded-for", v.encode("utf-8")) for v in values]
    result = resolver.resolve(peer, headers)
    peer_address = parse_address(peer)
    if peer_address is None or not resolver.is_trusted(peer_address):
        assert result == peer_address
    else:
        assert result == peer_address or result in {address for _, address in hops}
    resolver.client_key(result)  # never raises
