"""Which inbound peer makes room for a new one (Bitcoin Core's ``node/eviction.cpp``).

The C++ Dilithion node has no eviction: once its slots are full every new
connection is refused, so 125 connections from one host lock every honest
peer out (``net D-26``).  This module is Core's ``SelectNodeToEvict`` over a
snapshot of the inbound peers, plus the netgroup used for it and for the
per-netgroup inbound limit.  It is pure (no sockets, no threads, no locks):
the network thread builds the candidates and closes the one chosen.

Order (Core's, with the differences in ``docs/CPP-DIVERGENCES.md``):

1. Peers that have not completed the handshake go first: from the netgroup
   with most of them, the one that has had longest to finish it.  A flood of
   connections that never send a byte therefore only ever displaces itself.
2. Otherwise protect the 8 with the lowest ping time (only peers that have
   answered a ping), the 4 that most recently sent us a block, and then the
   older half by connection time.
3. From what is left (only the peers of discouraged hosts, if any is left:
   Core's ``m_prefer_evict``), take the netgroup with the most connections
   (ties: the one with the youngest connection) and evict its youngest peer.

Nothing left after the protections: no eviction (the new connection is refused).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["EvictionCandidate", "netgroup", "select_node_to_evict",
           "PROTECT_BY_PING", "PROTECT_BY_BLOCK"]

PROTECT_BY_PING = 8
PROTECT_BY_BLOCK = 4


def netgroup(host: str) -> str:
    """The group a limit or an eviction counts by: the /16 of a routable IPv4
    address (Core's ``GetGroup``); a loopback, private or non-IPv4 address
    counts on its own (so each 127.x.y.z of a test is its own group)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 4 and ip.is_global:
        a, b = ip.packed[:2]
        return f"{a}.{b}.0.0/16"
    return host


@dataclass(frozen=True)
class EvictionCandidate:
    """One inbound peer as the eviction sees it (Core's ``NodeEvictionCandidate``).

    ``connected`` is monotonic seconds; ``last_block`` wall-clock seconds
    (0: never); ``min_ping`` seconds or None (never answered a ping).
    """

    peer_id: int
    netgroup: str
    connected: float
    handshake_complete: bool
    min_ping: float | None = None
    last_block: float = 0.0
    #: From a discouraged host (Core's ``m_prefer_evict``): evicted first among the unprotected.
    prefer_evict: bool = False


def _protect(cands: list[EvictionCandidate], key, k: int) -> list[EvictionCandidate]:
    """Drop the ``k`` best by ``key`` (smallest first) from the candidates."""
    if k <= 0:
        return cands
    best = set(c.peer_id for c in sorted(cands, key=key)[:k])
    return [c for c in cands if c.peer_id not in best]


def _pick_from_biggest_group(cands: list[EvictionCandidate], youngest: bool) -> int:
    groups: dict[str, list[EvictionCandidate]] = {}
    for c in cands:
        groups.setdefault(c.netgroup, []).append(c)

    def newest(members):
        return max(m.connected for m in members)
    members = max(groups.values(), key=lambda ms: (len(ms), newest(ms)))
    pick = max if youngest else min
    return pick(members, key=lambda m: (m.connected, m.peer_id)).peer_id


def select_node_to_evict(candidates: list[EvictionCandidate]) -> int | None:
    """The id of the inbound peer to disconnect, or None (Core ``SelectNodeToEvict``)."""
    pending = [c for c in candidates if not c.handshake_complete]
    if pending:
        return _pick_from_biggest_group(pending, youngest=False)
    cands = _protect([c for c in candidates if c.min_ping is not None],
                     key=lambda c: c.min_ping, k=PROTECT_BY_PING)
    cands += [c for c in candidates if c.min_ping is None]
    rest = _protect([c for c in cands if c.last_block > 0],
                         key=lambda c: -c.last_block, k=PROTECT_BY_BLOCK)
    cands = rest + [c for c in cands if c.last_block <= 0]
    cands = _protect(cands, key=lambda c: c.connected, k=len(cands) // 2)
    if not cands:
        return None
    preferred = [c for c in cands if c.prefer_evict]
    return _pick_from_biggest_group(preferred or cands, youngest=True)
