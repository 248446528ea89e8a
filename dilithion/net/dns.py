"""Minimal IPv4 name resolution for ``--connect``/``--addnode`` host names.

The C++ node aborts on a host name in ``--connect`` (``net D-27``) and never
queries its DNS seeds (``net D-28``); the Python node resolves a host name the
operator typed, and nothing else: no seeds, never called implicitly.
"""
from __future__ import annotations

import socket as _socket

__all__ = ["resolve"]


def resolve(host: str) -> list[str]:
    """IPv4 addresses of ``host`` (``getaddrinfo`` with ``AF_INET``), sorted and unique.

    A dotted-quad literal is returned as is without a lookup; an unknown name
    gives an empty list (the caller reports it), never an exception.
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
