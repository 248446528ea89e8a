"""Transaction relay: the port of ``src/net/tx_relay.{h,cpp}`` plus working wiring.

:class:`TxRelayManager` keeps the C++ bookkeeping (``net`` 5.1/5.2) with its
defects fixed: in-flight requests really expire (``cleanup_expired`` is called
periodically, ``net D-16``), disconnected peers are forgotten
(``peer_disconnected`` is wired to the transport), every per-peer announced set
is bounded, and the expiry log reads the txid before erasing it (``net D-29``).

:class:`TxRelay` is the protocol part the C++ never ran (``net D-16``):
``inv(tx)`` → ``getdata(tx)`` → ``tx`` → mempool → ``inv(tx)`` to the other
peers.  C++ peers ignore tx items and discard ``tx`` messages (``net`` 5.5), so
announcing to them is harmless; peers that advertised ``relay=0`` get nothing.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from loguru import logger

from dilithion.consensus.tx_validation import TxValidationError
from dilithion.core.lru import LRUDict
from dilithion.net.protocol import Inv, InvType, MsgTx
from dilithion.primitives.block import Uint256
from dilithion.primitives.transaction import Transaction

if TYPE_CHECKING:
    from dilithion.net.async_broadcaster import AsyncBroadcaster
    from dilithion.net.net_transport import ConnectionManager
    from dilithion.node.mempool import TxMemPool

__all__ = ["TxRelayManager", "TxRelay"]


def _short(txid: bytes) -> str:
    return Uint256(bytes(txid)).short()


class TxRelayManager:
    """Which txids each peer has seen and which are requested from whom.

    Shared by the message-handler thread (inv/getdata/tx) and the broadcaster
    workers (announce); ``_cs`` guards every field.  The mempool is never
    queried with ``_cs`` held, so no lock order against the mempool exists.
    """

    TX_REQUEST_TIMEOUT = 60
    TX_ANNOUNCE_TTL = 15
    #: Bound for one peer's announced set (C++: unbounded per peer; Core's known-tx
    #: filter holds 50,000).
    MAX_ANNOUNCED_PER_PEER = 50_000
    #: Bound for all peers' announced sets together.  One entry costs about 170
    #: bytes, so 125 peers at 50,000 each would hold about 1 GiB; 200,000 entries
    #: are about 34 MiB.  At the bound the inserting peer loses its own oldest
    #: entry when it holds its fair share (the total over the number of peers)
    #: or more, else the largest set loses its oldest: flooding peers rotate
    #: their own sets and a new peer still gets room.  A forgotten entry only
    #: means a txid may be announced to that peer again.
    MAX_ANNOUNCED_TOTAL = 200_000
    #: Bounds for the node-wide tables, which a peer's ``inv`` items would otherwise
    #: grow by up to 50,000 entries per message until they expire.
    MAX_TX_IN_FLIGHT = 50_000
    MAX_RECENTLY_ANNOUNCED = 100_000
    #: Core's ``MAX_PEER_TX_REQUEST_IN_FLIGHT``: one peer's unanswered tx requests.
    MAX_PEER_TX_IN_FLIGHT = 100
    #: Core's ``MAX_PEER_TX_ANNOUNCEMENTS``: tx items of one ``inv`` that are looked at.
    MAX_PEER_TX_ANNOUNCEMENTS = 5_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: Monotonic seconds for request and announce expiry (tests inject a fake clock).
        self._clock = clock
        self._cs = threading.Lock()
        self._tx_inv_sent: dict[int, LRUDict[bytes, None]] = {}
        self._announced_total = 0                      # sum of the sets' lengths
        self._tx_in_flight: dict[bytes, int] = {}
        self._tx_request_time: dict[bytes, float] = {}
        self._peer_in_flight: dict[int, int] = {}      # peer -> len of its _tx_in_flight share
        self._recently_announced: LRUDict[bytes, float] = LRUDict(self.MAX_RECENTLY_ANNOUNCED)

    def should_announce(self, peer_id: int, txid: bytes) -> bool:
        with self._cs:
            return bytes(txid) not in self._tx_inv_sent.get(peer_id, ())

    def mark_announced(self, peer_id: int, txid: bytes) -> None:
        """Record that ``peer_id`` knows ``txid`` (we announced it, or it sent it)."""
        txid = bytes(txid)
        with self._cs:
            seen = self._tx_inv_sent.get(peer_id)
            if seen is None:
                seen = self._tx_inv_sent[peer_id] = LRUDict(self.MAX_ANNOUNCED_PER_PEER)
            if txid not in seen:
                if self._announced_total >= self.MAX_ANNOUNCED_TOTAL:
                    self._evict_announced(seen)
                if seen.put(txid, None) is None:
                    self._announced_total += 1
            else:
                seen.touch(txid)
            self._recently_announced.put(txid, self._clock())

    def _evict_announced(self, inserting: LRUDict[bytes, None]) -> None:
        """Make room for one entry in the announced sets (``_cs`` held)."""
        share = self.MAX_ANNOUNCED_TOTAL // len(self._tx_inv_sent)
        victim = inserting if len(inserting) >= share else max(self._tx_inv_sent.values(), key=len)
        oldest = victim.oldest()
        if oldest is not None:
            victim.pop(oldest[0])
            self._announced_total -= 1

    def in_flight(self, txid: bytes) -> bool:
        """Requested and not yet timed out."""
        with self._cs:
            t = self._tx_request_time.get(bytes(txid))
            return t is not None and self._clock() - t < self.TX_REQUEST_TIMEOUT

    def already_have(self, txid: bytes, mempool) -> bool:
        if self.in_flight(txid):
            return True
        return mempool is not None and bool(mempool.exists(bytes(txid)))

    def mark_requested(self, txid: bytes, peer_id: int) -> bool:
        """Record a request; False (nothing recorded) when ``MAX_TX_IN_FLIGHT`` are pending
        node-wide or ``MAX_PEER_TX_IN_FLIGHT`` from this peer."""
        txid = bytes(txid)
        with self._cs:
            if txid not in self._tx_in_flight and (
                    len(self._tx_in_flight) >= self.MAX_TX_IN_FLIGHT
                    or self._peer_in_flight.get(peer_id, 0) >= self.MAX_PEER_TX_IN_FLIGHT):
                return False
            self._drop(txid)
            self._tx_in_flight[txid] = peer_id
            self._peer_in_flight[peer_id] = self._peer_in_flight.get(peer_id, 0) + 1
            self._tx_request_time[txid] = self._clock()
            return True

    def _drop(self, txid: bytes) -> None:
        """Forget one request (``_cs`` held)."""
        peer_id = self._tx_in_flight.pop(txid, None)
        self._tx_request_time.pop(txid, None)
        if peer_id is not None:
            left = self._peer_in_flight.get(peer_id, 0) - 1
            if left > 0:
                self._peer_in_flight[peer_id] = left
            else:
                self._peer_in_flight.pop(peer_id, None)

    def remove_in_flight(self, txid: bytes) -> None:
        with self._cs:
            self._drop(bytes(txid))

    def cleanup_expired(self) -> int:
        """Drop timed-out requests and stale announce stamps; returns requests dropped."""
        now = self._clock()
        with self._cs:
            expired = sorted(t for t, at in self._tx_request_time.items()
                             if now - at >= self.TX_REQUEST_TIMEOUT)
            for txid in expired:
                logger.debug(f"[TxRelay] Request for {_short(txid)}... from peer "
                             f"{self._tx_in_flight.get(txid)} timed out")
                self._drop(txid)
            for txid in [t for t, at in self._recently_announced.items()
                         if now - at >= self.TX_ANNOUNCE_TTL]:
                del self._recently_announced[txid]
        return len(expired)

    def peer_disconnected(self, peer_id: int) -> None:
        with self._cs:
            self._announced_total -= len(self._tx_inv_sent.pop(peer_id, ()))
            for txid in [t for t, p in self._tx_in_flight.items() if p == peer_id]:
                self._drop(txid)
            self._peer_in_flight.pop(peer_id, None)

    def get_stats(self) -> tuple[int, int, int]:
        with self._cs:
            return (self._announced_total, len(self._tx_in_flight),
                    len(self._recently_announced))


class TxRelay:
    """Handles tx items of ``inv``/``getdata`` and ``tx`` messages for one node.

    Runs on the message-handler thread; state lives in the shared
    :class:`TxRelayManager`.  Without a mempool (``mempool=None``) tx items
    are ignored, like the C++ node.  ``accept(tx)`` admits a transaction to
    the mempool (it raises :class:`TxValidationError` when it refuses) and
    ``broadcaster`` announces what was admitted.
    """

    CLEANUP_INTERVAL_S = 5.0

    def __init__(self, transport: ConnectionManager, manager: TxRelayManager,
                 mempool: TxMemPool | None = None,
                 accept: Callable[[Transaction], bytes] | None = None,
                 broadcaster: AsyncBroadcaster | None = None) -> None:
        self.transport = transport
        self.manager = manager
        self.mempool = mempool
        self.accept = accept
        self.broadcaster = broadcaster
        self._last_cleanup = time.monotonic()

    def _maybe_cleanup(self) -> None:
        now = time.monotonic()
        if now - self._last_cleanup >= self.CLEANUP_INTERVAL_S:
            self._last_cleanup = now
            self.manager.cleanup_expired()

    def items_to_request(self, peer, txids: list[bytes]) -> list[Inv]:
        """The tx items of an ``inv`` that we lack and nobody is fetching."""
        self._maybe_cleanup()
        mempool = self.mempool
        if mempool is None:
            return []  # like the C++ node without a mempool: tx items ignored
        wanted = []
        unique = list(dict.fromkeys(bytes(t) for t in txids))
        cap = self.manager.MAX_PEER_TX_ANNOUNCEMENTS
        if len(unique) > cap:      # one inv cannot fill the peer's announced set
            peer.log().info(f"[P2P] Peer {peer.id} announced {len(unique)} transactions in one "
                            f"inv; looking at the first {cap}")
            unique = unique[:cap]
        for txid in unique:
            self.manager.mark_announced(peer.id, txid)   # the announcer has it
            if self.manager.already_have(txid, mempool):
                continue
            if self.manager.mark_requested(txid, peer.id):
                wanted.append(Inv(InvType.MSG_TX_INV, txid))
        return wanted

    def has(self, txid: bytes) -> bool:
        """In the mempool (a ``getdata`` for it will be served)."""
        return self.mempool is not None and bool(self.mempool.exists(bytes(txid)))

    def serve(self, peer, txids: list[bytes]) -> int:
        """Answer ``getdata(tx)`` from the mempool (called by
        :class:`~dilithion.net.block_serve.BlockServer`, which answers unknown txids
        with ``notfound`` to Python peers).  Returns how many were sent."""
        mempool = self.mempool
        if mempool is None:
            return 0
        sent = 0
        for txid in txids:
            tx = mempool.get_tx(bytes(txid))
            if tx is None:
                logger.debug(f"[P2P] Peer {peer.id} requested unknown transaction {_short(txid)}...")
                continue
            if self.transport.send_message(peer.id, MsgTx(tx)):
                self.manager.mark_announced(peer.id, txid)
                sent += 1
                logger.debug(f"[P2P] Serving transaction {_short(txid)}... to peer {peer.id}")
        return sent

    def on_tx(self, peer, tx) -> bool:
        """A ``tx`` arrived: mempool it and announce it onwards.  Returns True if accepted.
        C++: ``ProcessTxMessage``.

        A rejected transaction is not the sender's fault in general (missing
        inputs, already spent after a block), so it costs no misbehaviour
        score, as in the C++ (``net`` 3.10 step 4).
        """
        txid = tx.get_hash()
        self.manager.remove_in_flight(txid)
        self.manager.mark_announced(peer.id, txid)
        log = peer.log()        # peer-caused lines: charged to the peer's share of the log
        log.info(f"[P2P] Received transaction from peer {peer.id}: {_short(txid)}...")
        mempool = self.mempool
        if mempool is None or self.accept is None:
            return False
        if mempool.exists(txid):
            return False
        try:
            self.accept(tx)
        except TxValidationError as e:
            reason = getattr(e, "reason", None) or str(e)
            log.info(f"[P2P] Transaction {_short(txid)}... from peer {peer.id} rejected: {reason}")
            return False
        log.info(f"[P2P] Transaction {_short(txid)}... accepted to mempool")
        if self.broadcaster is not None:
            self.broadcaster.broadcast_tx(txid, exclude_peer=peer.id)
        return True
