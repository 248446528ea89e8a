"""Who may talk to the RPC server at all: loopback, plus ``--rpcallowip`` entries.

As in Bitcoin Core, binding the RPC server to anything but loopback requires an
explicit allow-list; a connection from an address outside loopback and the
list is refused with 403 before its credentials are looked at.
"""
from __future__ import annotations

import ipaddress

__all__ = ["AllowList", "is_loopback_host", "parse_allow_entry"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback literals (127/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_allow_entry(text: str) -> _Network:
    """``1.2.3.4``, ``10.0.0.0/8``, ``10.0.0.0/255.0.0.0`` or an IPv6 form; ValueError if not."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"Invalid -rpcallowip subnet specification: {text}") from None


class AllowList:
    """Loopback plus the configured networks; read-only after construction (no lock)."""

    def __init__(self, entries: list[str] | tuple[str, ...] = ()) -> None:
        self.networks: tuple[_Network, ...] = tuple(parse_allow_entry(e) for e in entries)

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or any(ip in net for net in self.networks
                                     if net.version == ip.version)

    def __bool__(self) -> bool:
        return bool(self.networks)
