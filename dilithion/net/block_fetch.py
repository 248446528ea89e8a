"""Block download: the ``inv`` and ``block`` handlers that drive
:class:`~dilithion.net.block_download.BlockDownload` (the bookkeeping), the
orphan-parent chase and the stall checker (btcd's ``netsync`` block half).

The C++ node (``net`` 3.7–3.10, 6) fetches announced blocks, but it echoes known
blocks back to the announcer (``net D-14``), never downloads history, and keeps a
block with an unknown parent forever (``net D-18``, ``chain D21``).  Here:

* **fetch**: unknown announced blocks are requested with ``getdata``, at most 16
  in flight per peer, scheduled by ``BlockDownload`` (a staller is disconnected
  and its blocks asked of their other announcers); an unrequested block that
  would not become the tip is not stored;
* **orphans**: a block whose parent we lack makes us ask *its sender* for the
  parent, again and again, until the chain connects (a C++ peer serves any
  stored block by hash, so this also catches a fresh node up from a C++ peer).

Metric ``block_propagation_time{role="receive"}``: from the first time this
node learned of a block hash (an ``inv`` item, an unsolicited ``block``, or the
missing parent of an orphan) until the block was connected to the main chain.

Threads: the handlers and :meth:`BlockFetch.peer_gone` run on the
message-handler thread, which alone owns ``_first_seen`` and the per-peer
:class:`~dilithion.net.peer_relay_state.PeerRelayState`; the stall checker
(``block-stall``) only calls ``BlockDownload`` (its own lock), the transport and
:meth:`_fill`.  ``origin_peer`` is thread-local: the tip listener reads it on the
thread that connected the block.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from loguru import logger

from dilithion.consensus.chain import BlockStatus, ChainState
from dilithion.consensus.storage import StorageError
from dilithion.core.lru import LRUDict
from dilithion.net.block_download import BlockDownload
from dilithion.net.block_sync import INV_BATCH, BlockSync
from dilithion.net.net_transport import ConnectionManager
from dilithion.net.peer_relay_state import PeerRelayState
from dilithion.net.protocol import Inv, InvType, MsgGetdata
from dilithion.net.tx_relay import TxRelay
from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.primitives.block import Uint256

__all__ = ["BlockFetch", "MAX_INV_BLOCK_ITEMS", "MAX_FIRST_SEEN"]

#: Block items of one ``inv`` that are looked at (two catch-up batches); the rest of a
#: 50,000-item ``inv`` is ignored, so one message cannot fill a peer's tables.
MAX_INV_BLOCK_ITEMS = 2 * INV_BATCH
#: Misbehaviour score for an unrequested block that would not become the tip (not stored).
UNREQUESTED_BLOCK_SCORE = 10
#: How often the stall checker looks at the requests in flight.
STALL_CHECK_INTERVAL_S = 0.2
#: Misbehaviour score for a block that fails validation (bans at 100).
INVALID_BLOCK_SCORE = 100
#: First-seen times kept for the receive-propagation metric.
MAX_FIRST_SEEN = 20_000


class BlockFetch:
    """Requests announced blocks, connects received ones, chases orphans' parents.

    ``sync`` (:class:`BlockSync`) is told what each peer has and continues its
    catch-up; ``poll`` is run by the stall thread after each check (the getdata
    server's wake-up)."""

    def __init__(self, chain: ChainState, transport: ConnectionManager, download: BlockDownload,
                 sync: BlockSync, tx: TxRelay, *, metrics: Metrics = NULL_METRICS,
                 on_fatal: Callable[[str], None] | None = None,
                 poll: Callable[[], None] = lambda: None) -> None:
        self.chain = chain
        self.transport = transport
        self.download = download
        self.sync = sync
        self.tx = tx
        self.metrics = metrics
        self._on_fatal = on_fatal
        self._poll = poll
        self._stop = threading.Event()
        self._stall_thread: threading.Thread | None = None
        self._first_seen: LRUDict[bytes, float] = LRUDict(MAX_FIRST_SEEN)
        self._origin = threading.local()     # peer whose block is being processed on this thread

    def origin_peer(self) -> int | None:
        """The peer whose block this thread is connecting (None: not a received block)."""
        return getattr(self._origin, "peer_id", None)

    def peer_gone(self, peer_id: int) -> None:
        """Release the peer's downloads; ask their other announcers."""
        refill = self.download.peer_gone(peer_id)
        self.download.forget_staller(peer_id)
        for other in refill:
            self._fill(other)

    # ------------------------------------------------------------ stall checker
    def start(self) -> None:
        """Start the stall checker thread (:meth:`check_stalls` every 0.2 s)."""
        if self._stall_thread is None:
            self._stop.clear()
            self._stall_thread = threading.Thread(target=self._stall_loop, name="block-stall",
                                                  daemon=True)
            self._stall_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._stall_thread is not None:
            self._stall_thread.join(5.0)
            self._stall_thread = None

    def _stall_loop(self) -> None:
        while not self._stop.wait(STALL_CHECK_INTERVAL_S):
            try:
                self.check_stalls()
                self._poll()
            except Exception:
                logger.exception("[P2P] Block stall check failed")

    def check_stalls(self) -> list[int]:
        """Disconnect peers that stall a block another peer announced; ask the others."""
        stallers, refill = self.download.take_stallers()
        for peer_id in stallers:
            logger.warning(f"[P2P] Peer {peer_id} stalled block download: disconnecting; "
                           f"asking other announcers")
            self.metrics.block_download_stalls.inc()
            self.transport.disconnect(peer_id, "block download stall")
        for peer_id in refill:
            self._fill(peer_id)
        self._update_gauge()
        return stallers

    def _update_gauge(self) -> None:
        self.metrics.blocks_in_flight.set(self.download.in_flight_count())

    # ------------------------------------------------------------ block requests
    def _fill(self, peer_id: int, extra: list[Inv] | None = None) -> None:
        """Request from ``peer_id`` the blocks it announced, up to its free slots."""
        wanted: list[bytes] = []
        for _round in range(4):             # rounds only repeat when known blocks were dropped
            candidates = self.download.candidates(peer_id)
            if not candidates:
                break
            have = {h for h in candidates if self._have_block(h)}
            wanted += self.download.claim(peer_id, candidates, have)
            if not have:
                break
        invs = [Inv(InvType.MSG_BLOCK_INV, h) for h in wanted]
        self._request(peer_id, invs + list(extra or ()), len(invs))
        self._update_gauge()

    def _learned_of(self, h: bytes, now: float) -> None:
        if h not in self._first_seen:
            self._first_seen.put(h, now)

    def _have_block(self, h: bytes) -> bool:
        """Indexed, or waiting in the orphan pool (its parent is chased separately)."""
        return self.chain.knows_block(Uint256(h))

    def _request(self, peer_id: int, invs: list[Inv], n_blocks: int) -> None:
        if not invs:
            return
        if n_blocks:
            logger.info(f"[P2P] Requesting {n_blocks} block(s) from peer {peer_id}")
        if not self.transport.send_message(peer_id, MsgGetdata(invs)):
            logger.warning(f"[P2P] Could not queue getdata for peer {peer_id}")
            self.download.unclaim([i.hash for i in invs if i.type == InvType.MSG_BLOCK_INV])

    # ------------------------------------------------------------ handlers
    def on_inv(self, peer, state: PeerRelayState, msg) -> None:
        """Request unknown blocks (one ``getdata``, no echo of known ones: ``net D-14``).

        C++: ``ProcessInvMessage`` and the node's ``SetInvHandler`` lambda.
        """
        now = time.monotonic()
        items = dict.fromkeys(msg.inv)
        blocks = list(dict.fromkeys(bytes(i.hash) for i in items if i.type == InvType.MSG_BLOCK_INV))
        txids = [bytes(i.hash) for i in items if i.type == InvType.MSG_TX_INV]
        if len(blocks) > MAX_INV_BLOCK_ITEMS:
            peer.log().info(f"[P2P] Peer {peer.id} announced {len(blocks)} blocks in one inv; "
                            f"looking at the first {MAX_INV_BLOCK_ITEMS}")
            blocks = blocks[:MAX_INV_BLOCK_ITEMS]
        batch = len(blocks) > 1
        if batch:
            # A catch-up batch: once its last block is in our block tree, ask for the next
            # (we may never request that block, so the sender cannot tell we are done).
            state.batch_end = blocks[-1]
        new = []
        for h in blocks:
            self.sync.note_has(peer, state, h)
            if not self._have_block(h):
                new.append(h)
                self._learned_of(h, now)
        if len(new) == 1:          # one line per inv, never one per item
            logger.bind(block_hash=Uint256(new[0]).get_hex(), **peer.log_fields()).info(
                f"[P2P] Peer {peer.id} announced new block: {Uint256(new[0]).short()}...")
        elif new:
            peer.log().info(f"[P2P] Peer {peer.id} announced {len(new)} new blocks: "
                            f"{Uint256(new[0]).short()}...{Uint256(new[-1]).short()}...")
        self.download.announced(peer.id, new)
        self._fill(peer.id, self.tx.items_to_request(peer, txids) if txids else None)
        if batch:
            self.sync.continue_batch(peer, state)

    def on_block(self, peer, state: PeerRelayState, msg) -> None:
        """Connect a received block (solicited or not); chase missing parents.

        C++: ``ProcessBlockMessage`` and the node's ``SetBlockHandler`` lambda.
        """
        chain = self.chain
        block = msg.block
        reason = chain.precheck_block(block)      # no RandomX hash for a block this bad
        if reason is not None:
            peer.log().error(f"[P2P] ERROR: Invalid block from peer {peer.id}: {reason}")
            self.transport.misbehaving(peer.id, INVALID_BLOCK_SCORE, f"invalid block: {reason}")
            return
        now = time.monotonic()
        h = chain.hash_block(block)
        hb = bytes(h)
        log = logger.bind(block_hash=h.get_hex(), **peer.log_fields())
        log.info(f"[P2P] Received block from peer {peer.id}: {h.short()}...")
        others = [p for p in self.download.announcers(hb) if p != peer.id]
        requested, freed = self.download.received(hb, peer.id)
        self._learned_of(hb, now)
        self._origin.peer_id = peer.id
        try:
            result = chain.process_new_block(block, block_hash=h, requested=requested)
        except StorageError as exc:
            log.error(f"[P2P] ERROR: Failed to save block from peer {peer.id}")
            if self._on_fatal is not None:
                self._on_fatal(f"cannot store block {h.short()}...: {exc}")
            return
        finally:
            self._origin.peer_id = None
        self.sync.note_has(peer, state, hb)
        for peer_id in freed:
            self._fill(peer_id)
        self.sync.continue_batch(peer, state, result.index)
        status = BlockStatus
        if result.status in (status.TIP, status.REORG, status.SIDE):
            peer.last_block_time = time.time()      # eviction protects recent block senders
        if result.status in (status.TIP, status.REORG):
            self._observe_received(result.connected)
            tip = chain.tip()
            tip_log = logger.bind(block_hash=tip.hash.get_hex(), height=tip.height,
                                  **peer.log_fields())
            if result.status == status.REORG:
                tip_log.info(f"[P2P] ⚠️  CHAIN REORGANIZATION occurred!\n  New tip: "
                             f"{tip.hash.short()} (height {tip.height})")
            log.bind(height=result.index.height if result.index else None).info(
                "[P2P] Block activated successfully")
            tip_log.info(f"[P2P] Updated best block to height {tip.height}")
        elif result.status == status.ORPHAN:
            self._chase_parent(peer, state, result.missing_parent)
        elif result.status == status.SIDE:
            self._observe_received(result.connected)
            log.info("[P2P] Block is valid but not on best chain (orphan)")
        elif result.status == status.DUPLICATE:
            logger.debug("[P2P] Block already in chain state, skipping")
            if result.missing_parent is not None:       # a waiting orphan: keep walking back
                self._chase_parent(peer, state, result.missing_parent)
        elif result.status == status.INVALID:
            log.error(f"[P2P] ERROR: Invalid block {h.short()}... from peer {peer.id}: "
                      f"{result.reason}")
            if not result.reason.startswith("time-too-new"):   # Core: BLOCK_TIME_FUTURE is not punished
                self.transport.misbehaving(peer.id, INVALID_BLOCK_SCORE,
                                           f"invalid block: {result.reason}")
            for peer_id in (others if result.index is None else []):   # not cached: the real
                self.download.announced(peer_id, [hb])                   # body may come from them
                self._fill(peer_id)
        elif result.status == status.UNREQUESTED:
            self.metrics.blocks_unrequested_dropped.inc()
            if not state.is_cpp:        # a C++ node may push its fork's blocks
                self.transport.misbehaving(peer.id, UNREQUESTED_BLOCK_SCORE,
                                           f"unrequested block: {h.short()}... has no more work "
                                           f"than our tip")

    def _chase_parent(self, peer, state: PeerRelayState, missing) -> None:
        """Fetch what connects an orphan from its sender.

        A Python peer is sent our locator (``getblocks``, :meth:`BlockSync.ask_after_orphan`).
        A C++ peer does not know ``getblocks``, so it is asked for the missing parent
        itself, walking back one block per round trip; the orphan pool bounds that
        walk (deeper C++ forks heal by catch-up instead).
        """
        if missing is None:
            return
        parent = bytes(missing)
        now = time.monotonic()
        logger.error(f"[P2P] ERROR: Cannot find parent block {Uint256(parent).short()}...\n"
                     f"  This is an orphan block - requesting the parent from peer {peer.id}")
        self._learned_of(parent, now)
        if not state.is_cpp:
            self.sync.ask_after_orphan(peer, state, now)
            return
        if self.download.request_now(peer.id, parent):
            self._request(peer.id, [Inv(InvType.MSG_BLOCK_INV, parent)], 1)

    def _observe_received(self, connected) -> None:
        now = time.monotonic()
        for block in connected or ():
            t0 = self._first_seen.pop(bytes(self.chain.hash_block(block)), None)
            if t0 is not None:
                self.metrics.block_propagation_time.labels(role="receive").observe(now - t0)
