from __future__ import annotations

import ipaddress

import pytest

from cache_node.tracker.addresses import (
    AddressError,
    Locality,
    client_address,
    compact_peers,
    parse_compact,
    parse_networks,
    same_prefix,
)

ip = ipaddress.ip_address


def test_compact_ipv4_is_six_bytes_network_order() -> None:
    v4, v6 = compact_peers([(ip("10.1.2.3").packed, 6881), (ip("192.168.0.1").packed, 1)])
    assert v4 == bytes([10, 1, 2, 3, 0x1A, 0xE1, 192, 168, 0, 1, 0, 1])
    assert v6 == b""


def test_compact_ipv6_goes_to_peers6() -> None:
    addr = ip("2001:db8::1")
    v4, v6 = compact_peers([(addr.packed, 443)])
    assert v4 == b""
    assert v6 == addr.packed + b"\x01\xbb"
    assert parse_compact(v6, 16) == [(addr, 443)]


def test_parse_compact_rejects_ragged_lists() -> None:
    with pytest.raises(ValueError):
        parse_compact(b"\x01\x02\x03\x04\x05", 4)


def test_socket_address_wins_without_trusted_proxies() -> None:
    assert client_address("10.0.0.5", ["6.6.6.6"], ()) == ip("10.0.0.5")


def test_untrusted_socket_cannot_forward() -> None:
    trusted = parse_networks(["10.9.0.0/16"])
    assert client_address("10.0.0.5", ["6.6.6.6"], trusted) == ip("10.0.0.5")


def test_rightmost_untrusted_hop_is_the_client() -> None:
    trusted = parse_networks(["10.9.0.0/16"])
    # The client wrote "6.6.6.6" itself; the proxy 10.9.0.2 appended the real client.
    xff = ["6.6.6.6, 203.0.113.7", "10.9.0.2"]
    assert client_address("10.9.0.1", xff, trusted) == ip("203.0.113.7")


def test_all_hops_trusted_ends_at_leftmost() -> None:
    trusted = parse_networks(["10.9.0.0/16"])
    assert client_address("10.9.0.1", ["10.9.0.3"], trusted) == ip("10.9.0.3")


def test_malformed_forwarded_entry_is_refused() -> None:
    trusted = parse_networks(["10.9.0.0/16"])
    with pytest.raises(AddressError):
        client_address("10.9.0.1", ["not-an-ip"], trusted)


def test_ipv4_mapped_socket_address_is_ipv4() -> None:
    assert client_address("::ffff:192.0.2.1", [], ()) == ip("192.0.2.1")


def test_missing_peer_address() -> None:
    with pytest.raises(AddressError):
        client_address(None, [], ())


def test_bad_cidr_is_named() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/33"])


def test_same_prefix_is_24_or_48() -> None:
    assert same_prefix(ip("10.1.2.3"), ip("10.1.2.250"))
    assert not same_prefix(ip("10.1.2.3"), ip("10.1.3.3"))
    assert same_prefix(ip("2001:db8:1::1"), ip("2001:db8:1:ffff::9"))
    assert not same_prefix(ip("2001:db8:1::1"), ip("2001:db8:2::1"))
    assert not same_prefix(ip("10.1.2.3"), ip("::a01:203"))


def test_locality_prefers_narrowest_network() -> None:
    loc = Locality(parse_networks(["10.0.0.0/8", "10.1.0.0/16"]))
    assert loc.network_of(ip("10.1.5.5")) == 1
    assert loc.network_of(ip("10.2.5.5")) == 0
    assert loc.network_of(ip("192.0.2.1")) == -1
    me = ip("10.1.2.3")
    net = loc.network_of(me)
    assert loc.tier(me, net, ip("10.1.2.9")) == 0
    assert loc.tier(me, net, ip("10.1.9.9")) == 1
    assert loc.tier(me, net, ip("10.2.9.9")) == 2
    assert loc.tier(me, net, ip("192.0.2.9")) == 3
