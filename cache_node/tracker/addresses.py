"""Peer addresses: who is announcing, how near two peers are, and BEP 23 compact form.

A tracker that believes the client about its own address lets anyone point a
swarm at a victim (announce amplification) or poison peer lists. So the address
recorded for a peer is the socket's source address; ``X-Forwarded-For`` is read
only when the socket belongs to a configured trusted proxy, and then the
rightmost address that is not itself a trusted proxy is taken (everything to
its left was written by the client and proves nothing). The ``ip=`` announce
parameter is never used.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressError(ValueError):
    """A source address could not be determined."""


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs, naming the bad one in the error (config is checked at start-up)."""
    out: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            raise ValueError(f"{cidr!r} is not a CIDR network: {exc}") from None
    return tuple(out)


def canonical(addr: IPAddress) -> IPAddress:
    """Map IPv4-mapped IPv6 (``::ffff:a.b.c.d``, dual-stack sockets) to plain IPv4."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in_any(addr: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)


@functools.lru_cache(maxsize=65536)
def _socket_address(peer_host: str) -> IPAddress:
    """Parsed socket address; cached, since a client announces from one address many times."""
    return canonical(ipaddress.ip_address(peer_host.split("%", 1)[0]))


def client_address(
    peer_host: str | None,
    forwarded_for: Sequence[str],
    trusted_proxies: Sequence[IPNetwork],
) -> IPAddress:
    """The announcing client's address from the socket and, if trusted, X-Forwarded-For.

    ``forwarded_for`` holds every X-Forwarded-For header value in order. The walk
    goes right to left from the socket address: while the hop we are looking at
    is a trusted proxy, step to the address it reports; the first untrusted hop
    is the client. A malformed entry stops the walk at the last trusted hop's
    word we could not parse: the request is refused rather than guessed.
    """
    if not peer_host:
        raise AddressError("the connection has no peer address")
    try:
        current = _socket_address(peer_host)
    except ValueError:
        raise AddressError(f"unparseable socket address {peer_host!r}") from None
    if not trusted_proxies or not _in_any(current, trusted_proxies):
        return current
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    while hops and _in_any(current, trusted_proxies):
        raw = hops.pop()
        try:
            current = canonical(ipaddress.ip_address(raw.strip("[]")))
        except ValueError:
            raise AddressError(f"X-Forwarded-For entry {raw!r} is not an IP address") from None
    return current


def same_prefix(a: IPAddress, b: IPAddress) -> bool:
    """Same /24 (IPv4) or /48 (IPv6): most likely the same access network."""
    if a.version != b.version:
        return False
    shift = 8 if a.version == 4 else 80
    return (int(a) >> shift) == (int(b) >> shift)


@dataclass(frozen=True, slots=True)
class Locality:
    """Ranks peers by nearness to a requester, given the site's client networks."""

    client_networks: tuple[IPNetwork, ...]

    def network_of(self, addr: IPAddress) -> int:
        """Index of the narrowest configured client network holding ``addr``, or -1."""
        best = -1
        best_len = -1
        for i, net in enumerate(self.client_networks):
            if addr.version == net.version and addr in net and net.prefixlen > best_len:
                best, best_len = i, net.prefixlen
        return best

    def tier(self, requester: IPAddress, requester_net: int, peer: IPAddress) -> int:
        """0: same /24 or /48; 1: same client network; 2: another client network; 3: other."""
        if same_prefix(requester, peer):
            return 0
        peer_net = self.network_of(peer)
        if peer_net >= 0 and peer_net == requester_net:
            return 1
        if peer_net >= 0:
            return 2
        return 3


def compact_peers(peers: Iterable[tuple[bytes, int]]) -> tuple[bytes, bytes]:
    """BEP 23 ``peers`` (4+2 bytes each) and BEP 7 ``peers6`` (16+2 bytes each).

    Input is ``(packed address, port)``; the packed address length says the family.
    """
    v4: list[bytes] = []
    v6: list[bytes] = []
    for packed, port in peers:
        entry = packed + port.to_bytes(2, "big")
        (v4 if len(packed) == 4 else v6).append(entry)
    return b"".join(v4), b"".join(v6)


def parse_compact(blob: bytes, width: int) -> list[tuple[IPAddress, int]]:
    """Inverse of :func:`compact_peers` for one family (``width`` 4 or 16); used by clients."""
    step = width + 2
    if len(blob) % step:
        raise ValueError(f"compact peer list length {len(blob)} is not a multiple of {step}")
    out: list[tuple[IPAddress, int]] = []
    for off in range(0, len(blob), step):
        addr = ipaddress.ip_address(blob[off : off + width])
        out.append((addr, int.from_bytes(blob[off + width : off + step], "big")))
    return out
