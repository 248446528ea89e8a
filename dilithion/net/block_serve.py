"""Serving ``getdata``: the blocks and transactions a peer asks for, within bounded costs.

The C++ node (``ProcessGetDataMessage``) reads every requested block from the
database at once, logs one line per item and never answers unknown items
(``net D-15``).  Here, as in Bitcoin Core:

* **unknown items are answered from memory**: a block hash that is not in the
  block index (or a txid not in the mempool) costs no database read, no
  propagation-record entry and no log line of its own; a Python peer gets them
  back in one ``notfound`` (Bitcoin's layout), a C++ peer nothing (it neither
  sends nor handles ``notfound``: its wire is unchanged);
* **known items wait in a bounded per-peer queue** (``MAX_PENDING_GETDATA``,
  duplicates dropped) and are served at most ``SERVE_SLICE`` per handler turn;
  the next slice follows when a served block has left the send queue (its write
  callback posts a turn to the handler thread) or, as a safety net, at the next
  poll (:meth:`BlockServer.poll`, from the block relay's stall checker);
* **service pauses while the send side is full** (Core's ``fPauseSend``): no
  block is read from storage for a peer whose send queue holds more than
  ``max_send_buffer``, nor for anyone while all peers' queues together reach
  ``max_send_total`` (:class:`~dilithion.net.socket.ByteBudget`); the items stay
  queued and service resumes as the queues drain.  A peer that never reads is
  disconnected by the send deadline, as before;
* **one log line per getdata for its unknown items**, never one per item;
  ``Serving block`` and ``requested unknown block`` keep the C++ wording and
  are bound to the peer, so the node's log budget (``node/log_rate_limit.py``)
  charges them to that peer's host and a flooding peer cannot silence the same
  lines about an honest one.

Threads: everything here runs on the message-handler thread except
:meth:`BlockServer._schedule` (any thread: write callbacks on the network
thread, :meth:`poll` on the stall checker), which only posts a turn.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from loguru import logger

from dilithion.net.propagation import PropagationLog
from dilithion.net.protocol import Inv, InvType, MsgBlock, MsgNotfound
from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.primitives.block import Uint256

__all__ = ["BlockServer", "MAX_PENDING_GETDATA", "SERVE_SLICE"]

#: Known items one peer may have waiting to be served.  Twice the largest honest
#: request (a C++ peer asks for a whole 500-hash catch-up batch at once; a Python peer
#: for at most 16 blocks): about 150 KB per peer.  Items past it are dropped unserved
#: (counted in ``getdata_items_dropped``); the requester asks again when it times out.
MAX_PENDING_GETDATA = 1000
#: Items served per peer per handler turn: a request for 1,000 blocks reads four,
#: then lets the handler thread serve other peers' messages before the next four.
SERVE_SLICE = 4

_BLOCK = InvType.MSG_BLOCK_INV
_TX = InvType.MSG_TX_INV


class _Pending:
    """One peer's known items waiting to be served (handler thread only)."""

    __slots__ = ("peer", "items", "keys")

    def __init__(self, peer) -> None:
        self.peer = peer
        self.items: deque[tuple[int, bytes]] = deque()
        self.keys: set[tuple[int, bytes]] = set()

    def add(self, items: list[tuple[int, bytes]]) -> int:
        """Queue new items up to ``MAX_PENDING_GETDATA``; returns how many were dropped."""
        dropped = 0
        for key in items:
            if key in self.keys:
                continue
            if len(self.items) >= MAX_PENDING_GETDATA:
                dropped += 1
                continue
            self.keys.add(key)
            self.items.append(key)
        return dropped

    def pop(self) -> tuple[int, bytes]:
        key = self.items.popleft()
        self.keys.discard(key)
        return key


class BlockServer:
    """Answers ``getdata`` for one node (see the module docstring).

    ``on_served(peer, hash)`` runs after a block was queued for a peer (the
    block relay notes the peer has it and continues its catch-up);
    ``post(fn, peer_id)`` is :meth:`NetMessageProcessor.post`: each slice runs
    as its peer's work in the handler's fair queue, so the requester pays for
    every block read for it and other peers' messages are served between slices.
    Ownership: ``_pending`` (peer id -> :class:`_Pending`) belongs to the handler
    thread; ``_lock`` guards ``_scheduled`` (peers with a slice posted) and
    ``_all_posted`` (a wake-up of every waiting peer posted).
    """

    def __init__(self, chain, transport, tx, propagation: PropagationLog,
                 post: Callable[..., None],
                 on_served: Callable[[object, bytes], None],
                 metrics: Metrics = NULL_METRICS) -> None:
        self.chain = chain
        self.transport = transport
        self.tx = tx
        self.propagation = propagation
        self._post = post
        self._on_served = on_served
        self.metrics = metrics
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._scheduled: set[int] = set()
        self._all_posted = False

    # ------------------------------------------------------------ handler thread
    def on_getdata(self, peer, msg) -> None:
        """Sort the items into known (queued) and unknown (``notfound``), then serve a slice.

        C++: ``ProcessGetDataMessage`` and the node's ``SetGetDataHandler`` lambda.
        """
        known: list[tuple[int, bytes]] = []
        missing: list[Inv] = []
        for item in msg.inv:
            h = bytes(item.hash)
            if item.type == _BLOCK:
                if self.chain.get_index(Uint256(h)) is None:
                    missing.append(item)
                    continue
                self.propagation.note(h, peer.id, "getdata")
            elif item.type == _TX:
                if self.tx.mempool is None:
                    continue            # no mempool: tx items ignored, as the C++ node
                if not self.tx.has(h):
                    missing.append(item)
                    continue
            else:
                continue
            known.append((item.type, h))
        if missing:
            self._answer_missing(peer, missing)
        queue = self._pending.get(peer.id)
        if queue is None:
            queue = _Pending(peer)
        dropped = queue.add(known)
        if dropped:
            logger.debug(f"[P2P] Peer {peer.id} has {MAX_PENDING_GETDATA} items waiting: "
                         f"{dropped} item(s) of its getdata dropped")
            self.metrics.getdata_items_dropped.inc(dropped)
        if queue.items:
            self._pending[peer.id] = queue
            self._serve(queue)

    def _answer_missing(self, peer, missing: list[Inv]) -> None:
        """One log line for the getdata's unknown items; a ``notfound`` to Python peers."""
        first = missing[0]
        what = "block" if first.type == _BLOCK else "transaction"
        more = f" (and {len(missing) - 1} more unknown item(s))" if len(missing) > 1 else ""
        peer.log().info(f"[P2P] Peer {peer.id} requested unknown {what}: "
                        f"{Uint256(bytes(first.hash)).short()}...{more}")
        if peer.is_cpp() or self.transport.send_paused(peer.id):
            return      # the C++ ignores notfound (net D-15); a full queue gets no more
        self.transport.send_message(peer.id, MsgNotfound(missing))

    def _serve(self, queue: _Pending) -> None:
        """Serve up to ``SERVE_SLICE`` of one peer's items, unless its send side is full."""
        peer = queue.peer
        if not peer.is_connected():
            self._pending.pop(peer.id, None)
            return
        armed = paused = False  # armed: a served block's write callback gives the next turn
        for _ in range(SERVE_SLICE):
            if not queue.items:
                break
            if self.transport.send_paused(peer.id):
                paused = True       # resumed by a write callback, a disconnect or poll()
                break
            kind, h = queue.pop()
            if kind == _BLOCK:
                armed |= self._serve_block(peer, h)
            else:
                self.tx.serve(peer, [h])
        self._pending.pop(peer.id, None)
        if queue.items:
            self._pending[peer.id] = queue
            if not armed and not paused:
                self._schedule(peer.id)

    def _serve_block(self, peer, h: bytes) -> bool:
        """Read one indexed block and queue it; True when it was queued."""
        block = self.chain.get_block(Uint256(h))
        log = logger.bind(block_hash=Uint256(h).get_hex(), **peer.log_fields())
        if block is None:           # indexed but not stored (pruned, or failed to store)
            log.debug(f"[P2P] Block {Uint256(h).short()}... requested by peer {peer.id} "
                      f"is not stored")
            return False
        record, queued_at = self.propagation, self.propagation.now()
        written = record.written_callback(h, peer.id, "block_written")

        def on_written() -> None:   # network thread: this peer's next slice; the freed
            written()               # bytes may also unpause peers held by the node-wide cap
            self._schedule(peer.id)
            self._wake_all()

        if not self.transport.send_message(peer.id, MsgBlock(block), on_written):
            log.warning(f"[P2P] Could not queue block {Uint256(h).short()}... for peer {peer.id}")
            record.not_sent(h, peer.id, "block refused: send queue full")
            return False
        record.note(h, peer.id, "block_queued", at=queued_at)
        log.info(f"[P2P] Serving block {Uint256(h).short()}... to peer {peer.id}")
        self._on_served(peer, h)    # after the block is queued: a continuation inv follows it
        return True

    def _turn(self, peer_id: int) -> None:
        """One slice for ``peer_id`` (posted as that peer's work)."""
        with self._lock:
            self._scheduled.discard(peer_id)
        queue = self._pending.get(peer_id)
        if queue is not None:
            self._serve(queue)

    def _schedule_all(self) -> None:
        """A slice posted for every peer with items waiting (handler thread)."""
        with self._lock:
            self._all_posted = False
        for peer_id in list(self._pending):
            self._schedule(peer_id)

    def peer_gone(self, peer_id: int) -> None:
        """Forget a disconnected peer's items; its queued bytes were freed: serve others."""
        self._pending.pop(peer_id, None)
        with self._lock:
            self._scheduled.discard(peer_id)
        if self._pending:
            self._wake_all()

    def pending_count(self, peer_id: int) -> int:
        queue = self._pending.get(peer_id)
        return len(queue.items) if queue is not None else 0

    # ------------------------------------------------------------ any thread
    def _schedule(self, peer_id: int) -> None:
        """Post one slice for ``peer_id`` (coalesced: at most one waiting per peer)."""
        with self._lock:
            if peer_id in self._scheduled:
                return
            self._scheduled.add(peer_id)
        self._post(lambda: self._turn(peer_id), peer_id)

    def _wake_all(self) -> None:
        """Post one :meth:`_schedule_all` (coalesced); it reads the table on the handler
        thread, so no other thread ever iterates it."""
        with self._lock:
            if self._all_posted:
                return
            self._all_posted = True
        self._post(self._schedule_all)

    def poll(self) -> None:
        """Safety net (stall-checker thread): every waiting peer gets a slice, e.g. one
        whose queue is full of messages without write callbacks, or one held by the
        node-wide cap.  Reads only the table's size."""
        if self._pending:
            self._wake_all()
