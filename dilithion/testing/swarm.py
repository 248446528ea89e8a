"""Many live, well-behaved peers at once: ``dilithion-lab``'s load scenario.

The load scenario needs 50+ concurrent peers without 50 node processes on two
cores.  A :class:`PeerSwarm` owns that many harness peers
(:class:`~dilithion.testing.wire_peer.WirePeer`) in reader-thread mode, spread
round-robin over the nodes: each does the version/verack handshake, answers
pings and counts (and otherwise ignores) what it receives, so to the node it is
a live peer that receives every block ``inv``.  One reader thread per peer,
blocked in ``recv`` while nothing arrives: measured with 50 peers on two
in-process nodes, 0.1-0.15 s CPU to connect and handshake all, +1.6 MiB RSS,
0.01-0.02 s CPU (nodes included) over 5 idle seconds.  Without ``hosts`` all
peers come from 127.0.0.1, so one node takes at most its per-host inbound limit
of them; with ``hosts`` each peer dials from its own loopback address
(:func:`swarm_host`), so 50+ peers per node fit.

With ``fetch`` the peers are :class:`FetchingPeer` objects: each answers a block
``inv`` with ``getdata`` and counts the ``block`` messages it receives, like a
node that downloads every block (the checklist's "50+ peers that fetch blocks").
"""
from __future__ import annotations

import threading

from dilithion.net.protocol import InvType, MsgGetdata, MsgInv

from .wire_peer import WirePeer

__all__ = ["PeerSwarm", "FetchingPeer", "SWARM_USER_AGENT", "swarm_host"]

SWARM_USER_AGENT = b"/dilithion-lab:light/"


def swarm_host(i: int) -> str:
    """Peer ``i``'s own loopback source address (127.0.1.1, 127.0.1.2, ... 127.0.2.1 ...)."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


class FetchingPeer(WirePeer):
    """A peer that asks for every block it is told about and counts what arrives.

    ``requested`` (hashes asked for) and ``blocks`` (``block`` messages received)
    are written by the reader thread under ``self._fetch_lock``."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._fetch_lock = threading.Lock()
        self.requested: set[bytes] = set()
        self.blocks = 0

    def on_inv(self, msg: MsgInv) -> None:
        wanted = [item for item in msg.inv if item.type == InvType.MSG_BLOCK_INV]
        with self._fetch_lock:
            wanted = [item for item in wanted if bytes(item.hash) not in self.requested]
            self.requested.update(bytes(item.hash) for item in wanted)
        if wanted:
            self.send(MsgGetdata(wanted))

    def on_block(self, _msg) -> None:
        with self._fetch_lock:
            self.blocks += 1

    def missing(self, hashes: set[bytes]) -> bool:
        """True unless every hash of ``hashes`` was asked for and as many blocks arrived
        as were asked for."""
        with self._fetch_lock:
            return not hashes <= self.requested or self.blocks < len(self.requested)


class PeerSwarm:
    """``count`` harness peers spread round-robin over ``targets`` (host, port).

    The peer list is written by ``start``/``stop`` on the caller's thread; the
    counters are read from the peers' own counters (each owned by its reader)."""

    def __init__(self, magic: int, targets: list[tuple[str, int]], count: int, *,
                 fetch: bool = False, hosts: bool = False) -> None:
        self.magic = magic
        self.targets = targets
        self.count = count
        self.fetch = fetch
        self.hosts = hosts
        self.peers: list[WirePeer] = []

    def start(self) -> "PeerSwarm":
        """Connect every peer and send its version; the handshakes finish on the readers."""
        for i in range(self.count):
            host, port = self.targets[i % len(self.targets)]
            kind = FetchingPeer if self.fetch else WirePeer
            peer = kind(self.magic, bind_host=swarm_host(i) if self.hosts else None,
                        user_agent=SWARM_USER_AGENT)
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

    @property
    def blocks_received(self) -> int:
        """``block`` messages received by all fetching peers together."""
        return sum(getattr(p, "blocks", 0) for p in self.peers)

    def peers_missing(self, hashes: list[str]) -> int:
        """Fetching peers that did not ask for and receive every block of ``hashes``
        (display hex)."""
        wanted = {bytes.fromhex(h)[::-1] for h in hashes}
        return sum(1 for p in self.peers if not isinstance(p, FetchingPeer) or p.missing(wanted))

    def connected(self) -> int:
        return sum(p.is_connected for p in self.peers)

    def stop(self) -> None:
        for peer in self.peers:
            peer.close()
        self.peers = []
