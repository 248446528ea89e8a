"""Many live, well-behaved peers at once: ``dilithion-lab``'s load scenario.

The load scenario needs 50+ concurrent peers without 50 node processes on two
cores.  A :class:`PeerSwarm` owns that many harness peers
(:class:`~dilithion.testing.wire_peer.WirePeer`) in reader-thread mode, spread
round-robin over the nodes: each does the version/verack handshake, answers
pings and counts (and otherwise ignores) what it receives, so to the node it is
a live peer that receives every block ``inv``.  One reader thread per peer,
blocked in ``recv`` while nothing arrives: measured with 50 peers on two
in-process nodes, 0.1-0.15 s CPU to connect and handshake all, +1.6 MiB RSS,
0.01-0.02 s CPU (nodes included) over 5 idle seconds.  All peers come from
127.0.0.1, so one node takes at most its per-host inbound limit of them: spread
them over enough nodes.
"""
from __future__ import annotations

from .wire_peer import WirePeer

__all__ = ["PeerSwarm", "SWARM_USER_AGENT"]

SWARM_USER_AGENT = b"/dilithion-lab:light/"


class PeerSwarm:
    """``count`` harness peers spread round-robin over ``targets`` (host, port).

    The peer list is written by ``start``/``stop`` on the caller's thread; the
    counters are read from the peers' own counters (each owned by its reader)."""

    def __init__(self, magic: int, targets: list[tuple[str, int]], count: int) -> None:
        self.magic = magic
        self.targets = targets
        self.count = count
        self.peers: list[WirePeer] = []

    def start(self) -> "PeerSwarm":
        """Connect every peer and send its version; the handshakes finish on the readers."""
        for i in range(self.count):
            host, port = self.targets[i % len(self.targets)]
            peer = WirePeer(self.magic, user_agent=SWARM_USER_AGENT)
            peer.connect(port, host, reader=True)
            self.peers.append(peer)
            peer.begin_handshake()
        return self

    @property
    def handshaken(self) -> int:
        """Peers whose handshake with their node is complete."""
        return sum(p.handshake_complete for p in self.peers)

    @property
    def invs_received(self) -> int:
        """``inv`` messages received by all peers together."""
        return sum(p.message_count["inv"] for p in self.peers)

    def connected(self) -> int:
        return sum(p.is_connected for p in self.peers)

    def stop(self) -> None:
        for peer in self.peers:
            peer.close()
        self.peers = []
