"""Block and transaction relay: what the node does with ``inv``/``getdata``/``block``/``tx``.

The C++ node (``net`` 3.7–3.10, 6) fetches announced blocks and serves stored
ones, but it echoes known blocks back to the announcer (``net D-14``), never
relays a received block (``net D-17``), never downloads history, and keeps a
block with an unknown parent forever (``net D-18``, ``chain D21``).  This
module keeps the wire behaviour C++ peers rely on and fixes the rest:

* **fetch**: unknown announced blocks are requested with ``getdata``, at most 16
  in flight per peer, scheduled by :class:`~dilithion.net.block_download.BlockDownload`
  (a staller is disconnected and its blocks asked of their other announcers);
  an unrequested block that would not become the tip is not stored;
* **orphans**: a block whose parent we lack makes us ask *its sender* for the
  parent, again and again, until the chain connects (a C++ peer serves any
  stored block by hash, so this also catches a fresh node up from a C++ peer);
* **relay**: every new tip is announced through the broadcaster to every
  peer except the one the block came from;
* **catch-up**: after a handshake we announce our main chain to a peer that is
  behind, ascending, in ``inv`` batches of at most 500 hashes; when the peer
  shows it has the last hash of a batch (``getdata`` for it, or the C++ echo of
  it, or an ``inv`` of it) the next batch follows (Bitcoin's ``hashContinue``).
  C++ peers always advertise height 0, so they get the chain from height 1; a
  C++ peer is never told about a block whose parent it may lack, because it
  would store that block as unconnectable forever (``chain D21``).

Serving ``getdata`` (notfound, slices, send-side pauses) is
:mod:`dilithion.net.block_serve`'s job (``self.server``).

Metric ``block_propagation_time{role="receive"}``: from the first time this
node learned of a block hash (an ``inv`` item, an unsolicited ``block``, or the
missing parent of an orphan) until the block was connected to the main chain.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from loguru import logger

from dilithion.consensus.block_index import connected_indexes
from dilithion.consensus.chain import BlockStatus, ChainState
from dilithion.consensus.storage import StorageError
from dilithion.core.lru import LRUDict, LRUSet
from dilithion.net.async_broadcaster import AsyncBroadcaster, BroadcastTask
from dilithion.net.propagation import PropagationLog
from dilithion.net.block_download import BlockDownload
from dilithion.net.block_serve import BlockServer
from dilithion.net.net_transport import ConnectionManager
from dilithion.net.protocol import (Address, Inv, InvType, MsgAddr, MsgBlock, MsgGetaddr,
                                    MsgGetblocks, MsgGetdata, MsgInv, MsgTx)
from dilithion.net.tx_relay import TxRelay
from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.primitives.block import Uint256

__all__ = ["BlockRelay", "INV_BATCH", "MAX_INV_BLOCK_ITEMS"]

#: Most hashes in one catch-up ``inv`` (Bitcoin's ``MAX_BLOCKS_IN_TRANSIT``-like batch).
INV_BATCH = 500
#: Block items of one ``inv`` that are looked at (two catch-up batches); the rest of a
#: 50,000-item ``inv`` is ignored, so one message cannot fill a peer's tables.
MAX_INV_BLOCK_ITEMS = 2 * INV_BATCH
#: Misbehaviour score for an unrequested block that would not become the tip (not stored).
UNREQUESTED_BLOCK_SCORE = 10
#: How often the stall checker looks at the requests in flight.
STALL_CHECK_INTERVAL_S = 0.2
#: A catch-up batch nobody continued is abandoned after this; tip announcements resume.
CATCHUP_TIMEOUT_S = 60.0
#: At most one ``getblocks`` per peer in this many seconds (every orphan from a peer
#: on another fork would otherwise ask again).
GETBLOCKS_INTERVAL_S = 2.0
#: Misbehaviour score for a block that fails validation (bans at 100).
INVALID_BLOCK_SCORE = 100
#: Most addresses returned for ``getaddr``.
MAX_ADDR_REPLY = 1000
#: Blocks in our block tree remembered per peer as known to it.  Only indexed blocks
#: (each paid for with proof of work) enter this set, so a peer cannot fill it with
#: made-up hashes.
MAX_KNOWN_PER_PEER = 20_000
#: Hashes a peer announced that are not in our block tree (yet), per peer: as many as
#: it may have waiting in the download table.  Made-up hashes in ``inv`` floods land
#: here, so 125 flooding peers hold 125 x 1,024 hashes (about 18 MB), not
#: 125 x 20,000 (about 350 MB).
MAX_ANNOUNCED_UNKNOWN_PER_PEER = 1024
#: First-seen times kept for the receive-propagation metric.
MAX_FIRST_SEEN = 20_000


@dataclass
class _PeerSync:
    """Per-peer relay state (guarded by ``P2PHandlers._lock``; ``batch_end`` and
    ``branch_tip`` are the handler thread's alone)."""

    is_cpp: bool
    known: LRUSet[bytes] = field(default_factory=lambda: LRUSet(MAX_KNOWN_PER_PEER))
    announced: LRUSet[bytes] = field(
        default_factory=lambda: LRUSet(MAX_ANNOUNCED_UNKNOWN_PER_PEER))
    best_known_height: int = 0
    batch_last: bytes | None = None     # continuation trigger of the running catch-up
    batch_sent: float = 0.0
    next_height: int = 0                # first height of the next catch-up batch
    sent_addr: bool = False
    getblocks_sent: float = -GETBLOCKS_INTERVAL_S   # when we last asked it for its chain
    batch_end: bytes | None = None      # last hash of the latest multi-block inv it sent us
    branch_tip: object = None           # highest block from it that entered our block tree

    def has(self, h: bytes) -> bool:
        """The peer has (or announced) block ``h``."""
        return h in self.known or h in self.announced

    def catching_up(self, now: float) -> bool:
        return self.batch_last is not None and now - self.batch_sent < CATCHUP_TIMEOUT_S


class BlockRelay:
    """Block relay and sync for one node.  The port of the block and inv/getdata
    handler lambdas of ``src/node/dilithion-node.cpp``.

    It registers nothing itself: the node assembly (:mod:`dilithion.node.init`)
    adds :meth:`handlers` to the message processor, :meth:`on_handshake` and
    :meth:`on_disconnect` as its listeners, :meth:`on_tip_changed` as a tip
    listener of the chain state and :meth:`may_announce` as the broadcaster's
    peer filter.  ``post`` queues a call on the message-handler thread
    (``NetMessageProcessor.post``); ``propagation`` is the per-block record the
    broadcaster fills too.

    Threads: handlers run on the message-handler thread; the tip listener runs
    on whichever thread connected the block (handler thread, a mining thread,
    RPC); ``may_announce`` runs on broadcaster workers; the stall checker
    (``block-stall``, :meth:`start`/:meth:`stop`) releases stallers' requests.
    ``_lock`` guards ``_peers`` and ``_first_seen``; the download tables are
    owned by ``self.download`` (:class:`BlockDownload`, its own ``_lock``).
    Neither lock is held while calling the chain state or the transport.
    """

    def __init__(self, chain: ChainState, transport: ConnectionManager,
                 broadcaster: AsyncBroadcaster, tx: TxRelay, *, post: Callable[..., None],
                 propagation: PropagationLog, metrics: Metrics = NULL_METRICS,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.chain = chain
        self.transport = transport
        self.broadcaster = broadcaster
        self.tx = tx
        self.metrics = metrics
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._peers: dict[int, _PeerSync] = {}
        self.download = BlockDownload()
        self._stop = threading.Event()
        self._stall_thread: threading.Thread | None = None
        self._first_seen: LRUDict[bytes, float] = LRUDict(MAX_FIRST_SEEN)
        self._origin = threading.local()     # peer whose block is being processed on this thread
        #: Per-block propagation record (RPC ``getblockpropagation``); the broadcaster fills it too.
        self.propagation = propagation
        #: ``getdata`` service (net/block_serve.py): notfound, slices, send-side pauses.
        self.server = BlockServer(chain, transport, tx, propagation, post, self._note_has,
                                  metrics=metrics)

    def handlers(self) -> tuple[tuple[type, Callable], ...]:
        """``(message class, handler)`` pairs for the message processor (registered
        by the node assembly, which owns the wiring)."""
        return ((MsgInv, self.on_inv), (MsgGetdata, self.server.on_getdata),
                (MsgBlock, self.on_block), (MsgTx, self.on_tx), (MsgGetblocks, self.on_getblocks),
                (MsgGetaddr, self.on_getaddr), (MsgAddr, self.on_addr))

    # ------------------------------------------------------------ peer state
    def _sync(self, peer) -> _PeerSync:
        with self._lock:
            sync = self._peers.get(peer.id)
            if sync is None:
                sync = _PeerSync(is_cpp=peer.is_cpp())
                # A broadcaster worker may ask about a peer whose on_disconnect already
                # ran (its state is DISCONNECTED by then): keep nothing for it.
                if peer.is_connected():
                    self._peers[peer.id] = sync
            return sync

    def on_handshake(self, peer) -> None:
        """Start catch-up for a peer that is behind us (C++ peers: always from height 1)."""
        sync = self._sync(peer)
        their_height = 0 if sync.is_cpp else max(0, int(peer.start_height))
        if self.chain is not None and self.chain.height() > their_height:
            self._send_catchup_batch(peer.id, sync, their_height + 1)

    def on_disconnect(self, peer, reason: str = "") -> None:
        with self._lock:
            self._peers.pop(peer.id, None)
        refill = self.download.peer_gone(peer.id)
        self.download.forget_staller(peer.id)
        self.tx.manager.peer_disconnected(peer.id)
        self.broadcaster.peer_disconnected(peer.id)
        self.propagation.peer_disconnected(peer.id)
        self.server.peer_gone(peer.id)
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
                self.server.poll()
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

    def _send_catchup_batch(self, peer_id: int, sync: _PeerSync, from_height: int) -> None:
        """Announce main-chain hashes ``from_height`` upwards (one ``inv``) or finish."""
        chain = self.chain
        hashes = chain.main_chain_hashes(from_height, INV_BATCH) if from_height >= 1 else []
        with self._lock:
            if not hashes:
                sync.batch_last = None
                return
            sync.batch_last = bytes(hashes[-1])
            sync.batch_sent = time.monotonic()
            sync.next_height = from_height + len(hashes)
        msg = MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(h)) for h in hashes])
        if self.transport.send_message(peer_id, msg):
            logger.info(f"[P2P] Announcing {len(hashes)} block(s) (heights {from_height}.."
                        f"{from_height + len(hashes) - 1}) to peer {peer_id} for catch-up")
        else:
            logger.warning(f"[P2P] Could not queue catch-up inv for peer {peer_id}")
            with self._lock:
                sync.batch_last = None

    def _resume_height(self, sync: _PeerSync) -> int:
        """First main-chain height whose parent the peer is known to have."""
        chain = self.chain
        h = min(sync.best_known_height, chain.height())
        while h > 0:
            mh = chain.main_chain_hash_at(h)
            with self._lock:
                if mh is not None and sync.has(bytes(mh)):
                    break
            h -= 1
        return h + 1

    def _note_has(self, peer, block_hash: bytes) -> None:
        """Record that ``peer`` has (or is about to have) a block; continue its
        catch-up if that block ends the current batch."""
        h = bytes(block_hash)
        sync = self._sync(peer)
        index = self.chain.get_index(Uint256(h))
        with self._lock:
            (sync.known if index is not None else sync.announced).add(h)
            if index is not None:
                sync.best_known_height = max(sync.best_known_height, index.height)
            continue_batch = sync.batch_last == h
        if continue_batch:
            chain = self.chain
            start = sync.next_height
            prev = chain.main_chain_hash_at(start - 1)
            if prev is None or bytes(prev) != h:   # reorg since the batch was sent
                start = self._resume_height(sync)
            self._send_catchup_batch(peer.id, sync, start)

    def may_announce(self, peer, task: BroadcastTask) -> bool:
        """Broadcaster veto: skip peers that have the block, and C++ peers that are
        still catching up or may lack its parent (those get a catch-up instead).

        A Python peer hears of every new tip even mid-catch-up: if it cannot
        connect it yet, its ``getblocks`` fills the gap (a C++ node would store
        the block as an orphan for good, ``chain D21``)."""
        if not task.is_block:
            return True
        sync = self._sync(peer)
        h = bytes(task.hash)
        with self._lock:
            if sync.has(h) or (sync.is_cpp and sync.catching_up(time.monotonic())):
                return False
        if not sync.is_cpp:
            return True
        index = self.chain.get_index(task.hash)
        if index is None or index.prev is None:
            return False
        with self._lock:
            parent_known = index.prev.height == 0 or sync.has(bytes(index.prev.hash))
        if parent_known:
            return True
        self._send_catchup_batch(peer.id, sync, self._resume_height(sync))
        return False

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
        with self._lock:
            if h not in self._first_seen:
                self._first_seen.put(h, now)

    def in_flight_count(self) -> int:
        return self.download.in_flight_count()

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
    def on_inv(self, peer, msg) -> None:
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
            self._sync(peer).batch_end = blocks[-1]
        new = []
        for h in blocks:
            self._note_has(peer, h)
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
            self._continue_batch(peer, self._sync(peer))

    def on_block(self, peer, msg) -> None:
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
        self._note_has(peer, hb)
        for peer_id in freed:
            self._fill(peer_id)
        self._continue_batch(peer, self._sync(peer), result.index)
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
            self._chase_parent(peer, result.missing_parent)
        elif result.status == status.SIDE:
            self._observe_received(result.connected)
            log.info("[P2P] Block is valid but not on best chain (orphan)")
        elif result.status == status.DUPLICATE:
            logger.debug("[P2P] Block already in chain state, skipping")
            if result.missing_parent is not None:       # a waiting orphan: keep walking back
                self._chase_parent(peer, result.missing_parent)
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
            if not self._sync(peer).is_cpp:        # a C++ node may push its fork's blocks
                self.transport.misbehaving(peer.id, UNREQUESTED_BLOCK_SCORE,
                                           f"unrequested block: {h.short()}... has no more work "
                                           f"than our tip")

    def _chase_parent(self, peer, missing) -> None:
        """Fetch what connects an orphan from its sender.

        A Python peer is sent our locator (``getblocks``) and answers with its
        main chain from the last block we share, in ascending batches: a fork of
        any depth heals in a few round trips and the blocks connect as they
        arrive.  A C++ peer does not know ``getblocks``, so it is asked for the
        missing parent itself, walking back one block per round trip; the orphan
        pool bounds that walk (deeper C++ forks heal by catch-up instead).
        """
        if missing is None:
            return
        parent = bytes(missing)
        now = time.monotonic()
        logger.error(f"[P2P] ERROR: Cannot find parent block {Uint256(parent).short()}...\n"
                     f"  This is an orphan block - requesting the parent from peer {peer.id}")
        self._learned_of(parent, now)
        sync = self._sync(peer)
        if not sync.is_cpp:
            with self._lock:
                due = now - sync.getblocks_sent >= GETBLOCKS_INTERVAL_S
                if due:
                    sync.getblocks_sent = now
            if due and not self.transport.send_message(
                    peer.id, MsgGetblocks(self.chain.locator())):
                peer.log().warning(f"[P2P] Could not queue getblocks for peer {peer.id}")
            return
        if self.download.request_now(peer.id, parent):
            self._request(peer.id, [Inv(InvType.MSG_BLOCK_INV, parent)], 1)

    def _continue_batch(self, peer, sync: _PeerSync, received=None) -> None:
        """Ask a Python peer for what follows its last catch-up batch, as Bitcoin's
        receivers do with ``getblocks``: we may never request the batch's last block
        (already here, or waiting as an orphan), so the sender cannot tell we are done.

        When the batch's last block is in our block tree, ask from there.  When it is
        not but nothing is in flight from this peer any more (its parent was lost, say
        from a full orphan pool), ask from the highest block of that peer's branch we
        have, at most once per ``GETBLOCKS_INTERVAL_S``.
        """
        if sync.is_cpp:
            return
        # batch_end and branch_tip are written only here and in on_inv: the handler thread.
        if received is not None and (sync.branch_tip is None
                                     or received.height > sync.branch_tip.height):
            sync.branch_tip = received
        if sync.batch_end is None:
            return
        chain = self.chain
        now = time.monotonic()
        index = chain.get_index(Uint256(sync.batch_end))
        busy = index is None and self.download.busy_with(peer.id)
        with self._lock:
            if index is None:
                if busy or now - sync.getblocks_sent < GETBLOCKS_INTERVAL_S:
                    return
                index = sync.branch_tip
            sync.batch_end = None
            sync.getblocks_sent = now
        if not self.transport.send_message(peer.id, MsgGetblocks(chain.locator(index))):
            peer.log().warning(f"[P2P] Could not queue getblocks for peer {peer.id}")

    def on_getblocks(self, peer, msg) -> None:
        """Announce our main chain after the last block the peer's locator shares with it."""
        fork = self.chain.locator_fork_height(msg.locator)
        peer.log().info(f"[P2P] Peer {peer.id} asked for our chain after height {fork}")
        self._send_catchup_batch(peer.id, self._sync(peer), fork + 1)

    def _observe_received(self, connected) -> None:
        now = time.monotonic()
        for block in connected or ():
            h = bytes(self.chain.hash_block(block))
            with self._lock:
                t0 = self._first_seen.pop(h, None)
            if t0 is not None:
                self.metrics.block_propagation_time.labels(role="receive").observe(now - t0)

    def on_tx(self, peer, msg) -> None:
        """Pass a received transaction to :class:`TxRelay` (``ProcessTxMessage``)."""
        self.tx.on_tx(peer, msg.tx)

    def on_getaddr(self, peer, msg) -> None:
        """Reply once per connection with the listening addresses we dialled
        (inbound peers' ports are ephemeral).  The C++ never answers (``net`` 3.5).

        C++: ``ProcessGetAddrMessage``; the reply is what ``GetPeerAddresses`` was for.
        """
        sync = self._sync(peer)
        with self._lock:
            if sync.sent_addr:
                return
            sync.sent_addr = True
        addrs = []
        for p in self.transport.peer_manager.handshake_complete_peers():
            if p.inbound or p.id == peer.id:
                continue
            try:
                addrs.append(Address.from_ipv4(p.host, p.port))
            except ValueError:
                continue
        if addrs:
            self.transport.send_message(peer.id, MsgAddr(addrs[:MAX_ADDR_REPLY]))

    def on_addr(self, peer, msg) -> None:
        """Addresses are only logged: the node dials what it is told (``--connect``/``--addnode``).

        C++: ``ProcessAddrMessage``.
        """
        logger.debug(f"[P2P] Received {len(msg.addrs)} address(es) from peer {peer.id}")

    # ------------------------------------------------------------ tip listener
    def on_tip_changed(self, new_tip, connected, disconnected) -> None:
        """Announce the new tip to every peer except the block's sender (``net D-17``
        fixed).  After a reorg or a batch connection only the tip is announced:
        Python peers fetch the rest by their orphan walk, C++ peers by catch-up."""
        origin = getattr(self._origin, "peer_id", None)
        for index in connected_indexes(new_tip, connected or []):
            self.propagation.connected(bytes(index.hash), index.height, origin)
        self.broadcaster.broadcast_block(new_tip.hash, exclude_peer=origin)
