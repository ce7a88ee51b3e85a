"""Addresses as both ends name them (host:port, hosts by name or number)."""

from __future__ import annotations

import ipaddress


def host_of(address: str) -> str:
    """The host of "host:port" (an IPv6 host without its brackets)."""
    host = address.rpartition(":")[0] if ":" in address else address
    return host.strip("[]") or address


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
