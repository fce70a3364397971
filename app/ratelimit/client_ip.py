"""Which client a request comes from, for rate limiting.

Behind a proxy the socket peer is the proxy, so every client would share one budget; trusting the
leftmost ``X-Forwarded-For`` instead lets any client pick its own key. The only address worth
believing is the one the nearest *trusted* proxy saw, so forwarding headers are read only when the
peer is a trusted proxy, and walked right to left past trusted hops to the first address outside
the trusted set.

Header rule (``forwarded_headers="auto"``, the default): ``X-Forwarded-For`` when the request has
one, else RFC 7239 ``Forwarded``. A proxy passes the header it does not manage through untouched,
so a deployment whose proxies set only ``Forwarded`` must either strip incoming ``X-Forwarded-For``
at the edge or build the resolver with ``forwarded_headers="forwarded"`` (and vice versa).

Both headers are split on commas without honouring quoted strings: a client that opens a quote
cannot swallow the element its proxy appends after it. Anything that is not an address (``unknown``,
obfuscated ``_hidden`` identifiers, garbage, empty items) stops the walk, and the last address
reached, the one a trusted proxy vouched for, is used.

IPv6 clients are keyed by their /64 (configurable): one subscriber usually owns a whole /64 and
can rotate through it at will.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Literal

from app.core.settings import parse_networks

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN_CLIENT = "unknown"
# Only this many hops (from the right) are ever looked at; an overlong header costs nothing more.
MAX_HOPS = 16
# The longest hop text that can still be an address: "[" + 45-char IPv6 + "%zone" + "]:65535".
MAX_HOP_CHARS = 80

_XFF = b"x-forwarded-for"
_FORWARDED = b"forwarded"


# Every request parses its peer (and behind a proxy its hops): the same few texts over and over,
# and ipaddress parsing them took about 4 µs of a refused sign-in (160). Addresses are immutable; the
# bound keeps a flood of made-up hops from growing the cache, and only texts short enough to be an
# address are ever kept.
PARSED_ADDRESSES_CACHED = 4096


def parse_address(text: str) -> Address | None:
    """One hop or peer as an address; ports, brackets and quotes stripped; ``None`` when it is not one.

    IPv4-mapped IPv6 (``::ffff:1.2.3.4``) is returned as the IPv4 address it carries, so a
    dual-stack listener and an IPv4 one key the same client alike.
    """
    text = text.strip()
    if not text or len(text) > MAX_HOP_CHARS:
        return None
    return parse_short_address(text)


@lru_cache(maxsize=PARSED_ADDRESSES_CACHED)
def parse_short_address(text: str) -> Address | None:
    """:func:`parse_address` of a stripped text of at most ``MAX_HOP_CHARS``, cached."""
    if text[0] == '"':
        if len(text) < 2 or text[-1] != '"':
            return None
        text = text[1:-1]
        if not text:
            return None
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            return None
        port = text[end + 1 :]
        if port and not (port[0] == ":" and port[1:].isdecimal()):
            return None
        host = text[1:end]
    elif text.count(":") == 1:
        # IPv4 with a port; a bare IPv6 address always has at least two colons.
        host, port = text.split(":")
        if not port.isdecimal():
            return None
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6:
        assert isinstance(address, ipaddress.IPv6Address)
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _forwarded_for(element: str) -> str | None:
    """The ``for=`` value of one RFC 7239 element (``for=1.2.3.4;proto=https``), if any."""
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            return value
    return None


class ClientResolver:
    """Resolves the client address of a request and the budget key it is counted under."""

    def __init__(
        self,
        trusted_proxies: list[str],
        ipv6_prefix: int = 64,
        *,
        forwarded_headers: Literal["auto", "x-forwarded-for", "forwarded"] = "auto",
    ) -> None:
        if not 0 < ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 1-128")
        networks = parse_networks(trusted_proxies)
        # (network, mask) integer pairs per IP version: a membership test is one AND and one compare.
        self._trusted4 = tuple((int(net.network_address), int(net.netmask)) for net in networks if net.version == 4)
        self._trusted6 = tuple((int(net.network_address), int(net.netmask)) for net in networks if net.version == 6)
        self._ipv6_prefix = ipv6_prefix
        self._ipv6_mask = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
        self._use_xff = forwarded_headers in ("auto", "x-forwarded-for")
        self._use_forwarded = forwarded_headers in ("auto", "forwarded")

    def is_trusted(self, address: Address) -> bool:
        value = int(address)
        networks = self._trusted4 if address.version == 4 else self._trusted6
        return any(value & mask == network for network, mask in networks)

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> Address | None:
        """The client's address: the socket peer, or what the trusted proxies in front of us saw.

        ``peer`` is the ASGI ``scope["client"][0]``; ``headers`` the raw ASGI header pairs.
        ``None`` when the peer is not an IP address (a Unix socket, a test client's name).
        """
        address = parse_address(peer) if peer else None
        if address is None or not (self._trusted4 or self._trusted6) or not self.is_trusted(address):
            return address
        hops = self._hops(headers)
        if not hops:
            return address
        for hop in reversed(hops):
            hop_address = parse_address(hop)
            if hop_address is None:
                break  # what lies left of a malformed hop cannot be attributed to anyone
            address = hop_address
            if not self.is_trusted(hop_address):
                break
        return address

    def _hops(self, headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
        """The hop texts, left to right, of the header this resolver reads (at most ``MAX_HOPS``)."""
        xff: list[str] = []
        forwarded: list[str] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == _XFF:
                if self._use_xff and value.strip():
                    xff.append(value.decode("latin-1"))
            elif lowered == _FORWARDED and self._use_forwarded and value.strip():
                forwarded.append(value.decode("latin-1"))
        if xff:
            # Several header lines are one list, in order (RFC 9110 section 5.3).
            return ",".join(xff).rsplit(",", MAX_HOPS)[-MAX_HOPS:]
        if forwarded:
            return [_forwarded_for(element) or "" for element in ",".join(forwarded).rsplit(",", MAX_HOPS)[-MAX_HOPS:]]
        return []

    def address_of(self, scope: Mapping[str, Any]) -> Address | None:
        """The client's address of an ASGI ``scope`` (see :meth:`resolve`)."""
        peer = scope.get("client")
        return self.resolve(peer[0] if peer else None, scope["headers"])

    def client_key(self, address: Address | None) -> str:
        """The budget key: an IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits containing it."""
        if address is None:
            return UNKNOWN_CLIENT
        if address.version == 4:
            return str(address)
        network = ipaddress.IPv6Address(int(address) & self._ipv6_mask)
        return f"{network}/{self._ipv6_prefix}"
