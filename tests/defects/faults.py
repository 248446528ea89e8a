"""Defects the checklist's faults exist to catch (``scenarios_checklist``,
``scenarios_faults``): a broadcaster that blocks on a stuck peer, a dead-peer
check switched off, a node that serves a block to only a few of its peers."""
from __future__ import annotations

import threading
import time

from defects import defect

#: How long the synchronous broadcaster waits for one peer at most (a liveness guard:
#: the stuck peer's send timeout closes it well before).
SYNC_WAIT_S = 60.0
#: Peers one block is served to by the node that serves only a few.
FEW_PEERS = 8


@defect("sync-broadcast", "the broadcaster sends each block inv on the caller's (mining) thread,"
        " peer after peer, and waits until it is written: a peer that stops reading holds the"
        " miner (the C++ node's behaviour, net 6.1)")
def sync_broadcast() -> None:
    from dilithion.net.async_broadcaster import AsyncBroadcaster, BroadcastTask
    from dilithion.net.protocol import InvType
    from dilithion.primitives.block import Uint256

    def broadcast_block(self, block_hash, exclude_peer=None, parent=None) -> None:
        task = BroadcastTask(int(InvType.MSG_BLOCK_INV), Uint256(bytes(block_hash)),
                             exclude_peer, self._clock(), parent)
        pm = self.connman.peer_manager
        for peer in self._eligible_peers(task):
            written = threading.Event()
            deadline = time.monotonic() + SYNC_WAIT_S
            queued = False
            while time.monotonic() < deadline and pm.get_peer(peer.id) is not None:
                if not queued:
                    queued = bool(self.connman.send_message(peer.id, task.message,
                                                            on_written=written.set))
                    if queued and self.propagation is not None:
                        self.propagation.note(bytes(task.hash), peer.id, "inv_queued")
                if queued and written.wait(0.05):
                    break
                if not queued:
                    time.sleep(0.05)
    AsyncBroadcaster.broadcast_block = broadcast_block


@defect("no-dead-peer-check", "the ping and inactivity timeouts never close a connection: a"
        " silently dead link stays open")
def no_dead_peer_check() -> None:
    from dilithion.net import timers
    real = timers.check_timers

    def check_timers(*args, **kw):
        action = real(*args, **kw)
        if action is not None and action.kind == "close" and (
                action.reason.startswith("ping timeout")
                or action.reason.startswith("inactivity timeout")):
            return None
        return action
    timers.check_timers = check_timers






@defect("serve-few", f"a node serves each block to its first {FEW_PEERS} requesters only")
def serve_few() -> None:
    from dilithion.net.block_serve import BlockServer
    real = BlockServer._serve_block
    served: dict[bytes, int] = {}
    lock = threading.Lock()

    def _serve_block(self, peer, h: bytes) -> bool:
        with lock:
            served[h] = served.get(h, 0) + 1
            if served[h] > FEW_PEERS:
                return False
        return real(self, peer, h)
    BlockServer._serve_block = _serve_block
