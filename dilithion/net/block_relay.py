"""The relay coordinator: one place that creates and drops each peer's relay state,
routes messages to the job that handles them and announces new tips.

Message processing is split by job, as Bitcoin Core's ``net_processing`` and
btcd's ``netsync`` are; this module only holds them together:

* :mod:`dilithion.net.block_sync`: catch-up batches and ``getblocks``;
* :mod:`dilithion.net.block_fetch`: ``inv``/``block``, the download that
  :mod:`dilithion.net.block_download` keeps the books of, the stall thread;
* :mod:`dilithion.net.block_serve`: ``getdata`` (notfound, slices, send-side pauses);
* :mod:`dilithion.net.tx_relay`: ``tx``; :mod:`dilithion.net.addr_relay`: ``getaddr``/``addr``;
* :mod:`dilithion.net.peer_relay_state`: the per-peer state they share
  (:class:`PeerRelayState`, handler thread only) and the snapshot the
  broadcaster reads (:class:`AnnounceFilter`).

**relay**: every new tip is announced through the broadcaster to every peer
except the one the block came from (``net D-17`` fixed); the broadcaster
decides from each peer's published :class:`AnnounceFilter` and never calls back
into the relay.  A C++ peer that may lack the tip's parent is skipped there and
sent a catch-up batch on the handler thread (a call posted by the tip listener).
"""
from __future__ import annotations

from typing import Callable

from dilithion.consensus.block_index import connected_indexes
from dilithion.consensus.chain import ChainState
from dilithion.net.addr_relay import AddrRelay
from dilithion.net.async_broadcaster import AsyncBroadcaster
from dilithion.net.block_download import BlockDownload
from dilithion.net.block_fetch import BlockFetch
from dilithion.net.block_serve import BlockServer
from dilithion.net.block_sync import BlockSync
from dilithion.net.net_transport import ConnectionManager
from dilithion.net.peer_relay_state import AnnounceFilters, PeerRelayState
from dilithion.net.propagation import PropagationLog
from dilithion.net.protocol import (MsgAddr, MsgBlock, MsgGetaddr, MsgGetblocks, MsgGetdata,
                                    MsgInv, MsgTx)
from dilithion.net.tx_relay import TxRelay
from dilithion.node.metrics import NULL_METRICS, Metrics

__all__ = ["BlockRelay"]


class BlockRelay:
    """Message processing for one node: the port of the block, inv/getdata, tx and
    addr handler lambdas of ``src/node/dilithion-node.cpp``, by job.

    It registers nothing itself: the node assembly (:mod:`dilithion.node.init`)
    adds :meth:`handlers` to the message processor, :meth:`on_handshake` and
    :meth:`on_disconnect` as its listeners and :meth:`on_tip_changed` as a tip
    listener of the chain state, and gives the broadcaster the same
    ``announce_filters`` board.  ``post`` queues a call on the message-handler
    thread (``NetMessageProcessor.post``).

    Threads: handlers, listeners and posted calls run on the message-handler
    thread, which alone owns ``_peers`` (peer id -> :class:`PeerRelayState`;
    no lock); the tip listener runs on whichever thread connected the block and
    only posts, records and enqueues; the stall thread is ``fetch``'s.
    """

    def __init__(self, chain: ChainState, transport: ConnectionManager,
                 broadcaster: AsyncBroadcaster, tx: TxRelay, *, post: Callable[..., None],
                 propagation: PropagationLog, announce_filters: AnnounceFilters,
                 metrics: Metrics = NULL_METRICS,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.chain = chain
        self.transport = transport          # the RPC reads the peer table through it
        self.broadcaster = broadcaster
        self.tx = tx
        self._post = post
        self._peers: dict[int, PeerRelayState] = {}
        #: Snapshots for the broadcaster (the same board it was given by the assembly).
        self.announce_filters = announce_filters
        #: Per-block propagation record (RPC ``getblockpropagation``); the broadcaster fills it too.
        self.propagation = propagation
        self.download = BlockDownload()
        self.sync = BlockSync(chain, transport, self.download)
        #: ``getdata`` service (net/block_serve.py): notfound, slices, send-side pauses.
        self.server = BlockServer(chain, transport, tx, propagation, post, self._served,
                                  metrics=metrics)
        self.fetch = BlockFetch(chain, transport, self.download, self.sync, tx, metrics=metrics,
                                on_fatal=on_fatal, poll=self.server.poll)
        self.addr = AddrRelay(transport)

    def handlers(self) -> tuple[tuple[type, Callable], ...]:
        """``(message class, handler)`` pairs for the message processor (registered
        by the node assembly, which owns the wiring)."""
        jobs = ((MsgInv, self.fetch.on_inv), (MsgBlock, self.fetch.on_block),
                (MsgGetblocks, self.sync.on_getblocks),
                (MsgGetaddr, self.addr.on_getaddr), (MsgAddr, self.addr.on_addr))
        return ((MsgGetdata, self._with_publish(self.server.on_getdata)),
                (MsgTx, self._on_tx),
                *((msg_type, self._with_state(fn)) for msg_type, fn in jobs))

    # ------------------------------------------------------------ per-peer state (handler thread)
    def _state(self, peer) -> PeerRelayState:
        """The peer's state; a peer without one (no handshake yet, or gone) gets a
        throwaway, so nothing is kept for it."""
        state = self._peers.get(peer.id)
        return state if state is not None else PeerRelayState(is_cpp=peer.is_cpp())

    def _publish(self, peer_id: int, state: PeerRelayState) -> None:
        """Publish the peer's announce filter if it changed (and the peer is still here)."""
        if self._peers.get(peer_id) is state:
            snapshot = state.announce_filter()
            if snapshot is not None:
                self.announce_filters.publish(peer_id, snapshot)

    def _with_state(self, fn: Callable) -> Callable:
        """``fn(peer, state, msg)`` as a message handler that publishes afterwards."""
        def handle(peer, msg) -> None:
            state = self._state(peer)
            try:
                fn(peer, state, msg)
            finally:
                self._publish(peer.id, state)
        handle.__qualname__ = handle.__name__ = getattr(fn, "__name__", "handle")
        return handle

    def _with_publish(self, fn: Callable) -> Callable:
        """``fn(peer, msg)`` (not taking the state) that may note what the peer has."""
        return self._with_state(lambda peer, _state, msg: fn(peer, msg))

    def _served(self, peer, block_hash: bytes) -> None:
        """The getdata server sent ``peer`` a block (or queued it): it has it now."""
        state = self._state(peer)
        self.sync.note_has(peer, state, block_hash)
        self._publish(peer.id, state)

    def _on_tx(self, peer, msg) -> None:
        """Pass a received transaction to :class:`TxRelay` (``ProcessTxMessage``)."""
        self.tx.on_tx(peer, msg.tx)

    def on_handshake(self, peer) -> None:
        """Create the peer's state (the one place), publish it, start its catch-up."""
        state = self._peers[peer.id] = PeerRelayState(is_cpp=peer.is_cpp())
        self.sync.on_handshake(peer, state)
        self._publish(peer.id, state)

    def on_disconnect(self, peer, reason: str = "") -> None:
        """The one place that tells every job the peer is gone."""
        self._peers.pop(peer.id, None)
        self.announce_filters.drop(peer.id)
        self.tx.manager.peer_disconnected(peer.id)
        self.broadcaster.peer_disconnected(peer.id)
        self.propagation.peer_disconnected(peer.id)
        self.server.peer_gone(peer.id)
        self.fetch.peer_gone(peer.id)       # last: asks the peer's blocks of the others

    def peer_count(self) -> int:
        """Peers with relay state (leak checks: back to the start when peers left)."""
        return len(self._peers)

    # ------------------------------------------------------------ lifecycle, metrics
    def start(self) -> None:
        """Start the stall checker thread."""
        self.fetch.start()

    def stop(self) -> None:
        self.fetch.stop()

    def in_flight_count(self) -> int:
        return self.download.in_flight_count()

    # ------------------------------------------------------------ tip listener
    def on_tip_changed(self, new_tip, connected, disconnected) -> None:
        """Announce the new tip to every peer except the block's sender (``net D-17``
        fixed).  After a reorg or a batch connection only the tip is announced:
        Python peers fetch the rest by their orphan walk, C++ peers by catch-up."""
        origin = self.fetch.origin_peer()
        for index in connected_indexes(new_tip, connected or []):
            self.propagation.connected(bytes(index.hash), index.height, origin)
        prev = new_tip.prev
        parent = (bytes(prev.hash), prev.height) if prev is not None else None
        self.broadcaster.broadcast_block(new_tip.hash, exclude_peer=origin, parent=parent)
        block_hash = bytes(new_tip.hash)
        self._post(lambda: self._catch_up_lagging(block_hash, parent, origin))

    def _catch_up_lagging(self, block_hash: bytes, parent, origin: int | None) -> None:
        self.sync.catch_up_lagging(self._peers, block_hash, parent, origin)
        for peer_id, state in self._peers.items():
            self._publish(peer_id, state)
