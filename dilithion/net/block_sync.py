"""Block sync and catch-up: bringing a peer that is behind up to our chain, and
asking a peer for the chain it has (btcd's ``netsync`` sync half; Core's
``hashContinue`` and ``getblocks`` handling).

* **catch-up**: after a handshake we announce our main chain to a peer that is
  behind, ascending, in ``inv`` batches of at most :data:`INV_BATCH` hashes; when
  the peer shows it has the last hash of a batch (``getdata`` for it, or the C++
  echo of it, or an ``inv`` of it) the next batch follows (Bitcoin's
  ``hashContinue``).  C++ peers always advertise height 0, so they get the chain
  from height 1; a C++ peer is never told about a block whose parent it may
  lack, because it would store that block as unconnectable forever (``chain
  D21``): when a new tip finds one in that state, :meth:`BlockSync.catch_up_lagging`
  sends it a catch-up batch instead.
* **getblocks**: a Python peer asks for what follows our locator; we ask a
  Python peer the same way for the chain after an orphan it sent us, or after its
  last catch-up batch (we may never request that batch's last block).

Thread: the message-handler thread only (handlers, handshake listener, calls
posted with ``NetMessageProcessor.post``); per-peer state is the caller's
:class:`~dilithion.net.peer_relay_state.PeerRelayState`.  No lock.
"""
from __future__ import annotations

import time

from loguru import logger

from dilithion.consensus.chain import ChainState
from dilithion.net.block_download import BlockDownload
from dilithion.net.net_transport import ConnectionManager
from dilithion.net.peer_relay_state import Announce, PeerRelayState, announce_decision
from dilithion.net.protocol import Inv, InvType, MsgGetblocks, MsgInv
from dilithion.primitives.block import Uint256

__all__ = ["BlockSync", "INV_BATCH", "GETBLOCKS_INTERVAL_S"]

#: Most hashes in one catch-up ``inv`` (Bitcoin's ``MAX_BLOCKS_IN_TRANSIT``-like batch).
INV_BATCH = 500
#: At most one ``getblocks`` per peer in this many seconds (every orphan from a peer
#: on another fork would otherwise ask again).
GETBLOCKS_INTERVAL_S = 2.0


class BlockSync:
    """Catch-up batches and ``getblocks`` for one node (handler thread; no lock)."""

    def __init__(self, chain: ChainState, transport: ConnectionManager,
                 download: BlockDownload) -> None:
        self.chain = chain
        self.transport = transport
        self.download = download

    # ------------------------------------------------------------ catch-up (we announce)
    def on_handshake(self, peer, state: PeerRelayState) -> None:
        """Start catch-up for a peer that is behind us (C++ peers: always from height 1)."""
        their_height = 0 if state.is_cpp else max(0, int(peer.start_height))
        if self.chain is not None and self.chain.height() > their_height:
            self.send_catchup_batch(peer.id, state, their_height + 1)

    def send_catchup_batch(self, peer_id: int, state: PeerRelayState, from_height: int) -> None:
        """Announce main-chain hashes ``from_height`` upwards (one ``inv``) or finish."""
        hashes = self.chain.main_chain_hashes(from_height, INV_BATCH) if from_height >= 1 else []
        if not hashes:
            state.set_batch(None)
            return
        state.set_batch(bytes(hashes[-1]), time.monotonic(), from_height + len(hashes))
        msg = MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(h)) for h in hashes])
        if self.transport.send_message(peer_id, msg):
            logger.info(f"[P2P] Announcing {len(hashes)} block(s) (heights {from_height}.."
                        f"{from_height + len(hashes) - 1}) to peer {peer_id} for catch-up")
        else:
            logger.warning(f"[P2P] Could not queue catch-up inv for peer {peer_id}")
            state.set_batch(None)

    def resume_height(self, state: PeerRelayState) -> int:
        """First main-chain height whose parent the peer is known to have."""
        chain = self.chain
        h = min(state.best_known_height, chain.height())
        while h > 0:
            mh = chain.main_chain_hash_at(h)
            if mh is not None and state.has(bytes(mh)):
                break
            h -= 1
        return h + 1

    def note_has(self, peer, state: PeerRelayState, block_hash: bytes) -> None:
        """Record that ``peer`` has (or is about to have) a block; continue its
        catch-up if that block ends the current batch."""
        h = bytes(block_hash)
        index = self.chain.get_index(Uint256(h))
        state.note_has(h, index.height if index is not None else None)
        if state.batch_last != h:
            return
        start = state.next_height
        prev = self.chain.main_chain_hash_at(start - 1)
        if prev is None or bytes(prev) != h:   # reorg since the batch was sent
            start = self.resume_height(state)
        self.send_catchup_batch(peer.id, state, start)

    def catch_up_lagging(self, states: dict[int, PeerRelayState], block_hash: bytes,
                         parent: tuple[bytes, int] | None, exclude_peer: int | None) -> None:
        """A new tip: every peer the broadcaster skips because it may lack the tip's
        parent (:data:`Announce.CATCH_UP`) gets a catch-up batch instead.  Posted on
        the handler thread by the tip listener; decides with the same rule as the
        broadcaster's snapshot."""
        now = time.monotonic()
        for peer_id, state in list(states.items()):
            if peer_id == exclude_peer:
                continue
            if announce_decision(state, block_hash, parent, now) is Announce.CATCH_UP:
                self.send_catchup_batch(peer_id, state, self.resume_height(state))

    def on_getblocks(self, peer, state: PeerRelayState, msg) -> None:
        """Announce our main chain after the last block the peer's locator shares with it."""
        fork = self.chain.locator_fork_height(msg.locator)
        peer.log().info(f"[P2P] Peer {peer.id} asked for our chain after height {fork}")
        self.send_catchup_batch(peer.id, state, fork + 1)

    # ------------------------------------------------------------ getblocks (we ask)
    def ask_after_orphan(self, peer, state: PeerRelayState, now: float) -> None:
        """A Python peer sent an orphan: send it our locator (at most once per
        :data:`GETBLOCKS_INTERVAL_S`); it answers with its chain from the last
        block we share, so a fork of any depth heals in a few round trips."""
        if now - state.getblocks_sent < GETBLOCKS_INTERVAL_S:
            return
        state.getblocks_sent = now
        if not self.transport.send_message(peer.id, MsgGetblocks(self.chain.locator())):
            peer.log().warning(f"[P2P] Could not queue getblocks for peer {peer.id}")

    def continue_batch(self, peer, state: PeerRelayState, received=None) -> None:
        """Ask a Python peer for what follows its last catch-up batch, as Bitcoin's
        receivers do with ``getblocks``: we may never request the batch's last block
        (already here, or waiting as an orphan), so the sender cannot tell we are done.

        When the batch's last block is in our block tree, ask from there.  When it is
        not but nothing is in flight from this peer any more (its parent was lost, say
        from a full orphan pool), ask from the highest block of that peer's branch we
        have, at most once per ``GETBLOCKS_INTERVAL_S``.
        """
        if state.is_cpp:
            return
        if received is not None and (state.branch_tip is None
                                     or received.height > state.branch_tip.height):
            state.branch_tip = received
        if state.batch_end is None:
            return
        chain = self.chain
        now = time.monotonic()
        index = chain.get_index(Uint256(state.batch_end))
        if index is None:
            if self.download.busy_with(peer.id) or now - state.getblocks_sent < GETBLOCKS_INTERVAL_S:
                return
            index = state.branch_tip
        state.batch_end = None
        state.getblocks_sent = now
        if not self.transport.send_message(peer.id, MsgGetblocks(chain.locator(index))):
            peer.log().warning(f"[P2P] Could not queue getblocks for peer {peer.id}")
