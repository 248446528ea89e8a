"""Minimal IPv4 name resolution for ``--connect``/``--addnode`` host names.

The C++ node aborts on a host name in ``--connect`` (``net D-27``) and never
queries its DNS seeds (``net D-28``); the Python node resolves a host name the
operator typed, and nothing else: no seeds, never called implicitly.
"""
from __future__ import annotations

import socket as _socket

__all__ = ["resolve", "parse_peer_entry"]


def resolve(host: str) -> list[str]:
    """IPv4 addresses of ``host`` (``getaddrinfo`` with ``AF_INET``), sorted and unique.

    A dotted-quad literal is returned as is without a lookup; an unknown name
    gives an empty list (the caller reports it), never an exception.
    C++: ``CDNSResolver::ResolveAll``; ``ResolveHostname`` is its first element.
    """
    if not host:
        return []
    try:
        _socket.inet_pton(_socket.AF_INET, host)
        return [host]
    except (OSError, ValueError):
        pass
    try:
        infos = _socket.getaddrinfo(host, None, _socket.AF_INET, _socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({info[4][0] for info in infos}, key=lambda a: tuple(int(x) for x in a.split(".")))


def parse_peer_entry(entry: str) -> tuple[str, int]:
    """``host:port`` -> (IPv4 address, port); host names are resolved (``cli 6.1.4``).

    Raises ``ValueError`` with the C++ ``[FAIL]`` wording.  C++: the node's
    ``parseIPv4`` lambda.
    """
    if ":" not in entry:
        raise ValueError(f"    [FAIL] Invalid address format: {entry} (expected ip:port)")
    host, _, port_text = entry.rpartition(":")
    if not port_text.isdigit():
        raise ValueError(f"    [FAIL] Invalid port format in address: {entry} (expected ip:port)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"    [FAIL] Invalid port number in address: {entry} (must be 1-65535)")
    looks_numeric = all(part.isdigit() for part in host.split("."))
    # A malformed dotted quad is refused without asking a resolver.
    addresses = resolve(host) if host and (not looks_numeric or _is_ipv4(host)) else []
    if not addresses or addresses[0] == "0.0.0.0":
        raise ValueError(f"    [FAIL] Invalid IP address: {host}")
    return addresses[0], port


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)
