"""Addresses: HOST:PORT as every listener takes it, and the group a peer address counts in."""

from __future__ import annotations

import ipaddress

IPV6_GROUP_PREFIX = 64


def split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:8443' -> ('127.0.0.1', 8443); '[::1]:0' -> ('::1', 0)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def peer_group(peer: str) -> str:
    """The address a limit counts against: IPv4 as is, IPv6 by its /64.

    One host is usually given a whole /64, so counting IPv6 addresses one by one
    would give it millions of buckets. An IPv4-mapped IPv6 address (a dual-stack
    socket) counts as the IPv4 address it carries; anything else (a Unix socket)
    counts whole.
    """
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_GROUP_PREFIX), strict=False)
        return str(network)
    return str(address)
