"""Block download scheduling: who announced each wanted block, what is in flight from whom.

The port of the block-download bookkeeping of Bitcoin Core's
``net_processing.cpp`` (``mapBlocksInFlight``, ``MAX_BLOCKS_IN_TRANSIT_PER_PEER``,
block stalling); the C++ Dilithion node has none of it (it re-requests every
announced hash from its announcer, ``net`` 3.7 step 4).  The rules:

* each peer has at most :data:`MAX_BLOCKS_IN_TRANSIT_PER_PEER` (16) block
  requests in flight, so one peer's ``inv`` of 10,000 hashes occupies 16 slots,
  never the node's whole request capacity;
* every announcer of a wanted hash is remembered (at most
  :data:`MAX_ANNOUNCERS_PER_HASH`), each peer's wanted list is bounded
  (:data:`MAX_WANTED_PER_PEER`, oldest dropped) and filled in announcement order
  whenever the peer has a free slot, so an honest announcer is always asked
  for a block it announced that nobody else is fetching;
* a peer whose requests made no progress for :data:`STALL_TIMEOUT_S` while
  another peer announced one of the blocks it holds is a *staller*: its
  requests are released, the other announcers are asked, and the caller
  disconnects it (Core: block stalling).  A request with no other announcer
  simply expires after :data:`BLOCK_REQUEST_TIMEOUT_S` and may be made again.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from dilithion.core.lru import LRUDict

__all__ = ["BlockDownload", "MAX_BLOCKS_IN_TRANSIT_PER_PEER", "STALL_TIMEOUT_S",
           "BLOCK_REQUEST_TIMEOUT_S", "MAX_WANTED_PER_PEER", "MAX_ANNOUNCERS_PER_HASH"]

#: Core's ``MAX_BLOCKS_IN_TRANSIT_PER_PEER``.
MAX_BLOCKS_IN_TRANSIT_PER_PEER = 16
#: A peer that delivered nothing for this long while another peer could serve one of
#: its requested blocks is a staller (Core: ``BLOCK_STALLING_TIMEOUT``, 2 s, adaptive).
STALL_TIMEOUT_S = 5.0
#: A request nobody else could serve may be made again (to anyone) after this.
BLOCK_REQUEST_TIMEOUT_S = 30.0
#: Wanted hashes remembered per announcer (two catch-up batches of 500).
MAX_WANTED_PER_PEER = 1024
#: Announcers remembered per wanted hash.
MAX_ANNOUNCERS_PER_HASH = 8
#: Wanted hashes remembered node-wide (each with its announcers; about 330 bytes
#: with its place in the announcers' lists, so about 6.6 MiB).  Twenty peers at
#: ``MAX_WANTED_PER_PEER`` reach it; at the bound a hash that is in flight is
#: never forgotten, and an announcer holding its fair share (the bound over the
#: number of announcers) or more gives up its own oldest hash, so flooding
#: peers rotate their own lists instead of pushing out an honest announcement.
MAX_WANTED = 20_000


class BlockDownload:
    """Wanted blocks, their announcers and the requests in flight, for one node.

    Owner: :class:`~dilithion.net.block_relay.BlockRelay` (one per node).  Lock:
    ``_lock`` guards ``_wanted``, ``_by_peer``, ``_in_flight``, ``_progress`` and
    ``_stallers``; it is taken by the message-handler thread (``inv``, ``block``,
    disconnects) and by the relay's stall checker thread, and it is never held
    while calling the chain state or the transport.  ``clock`` is monotonic
    seconds (tests inject a :class:`FakeClock`).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        #: hash -> announcer peer ids, oldest first (bounded per hash and overall).
        self._wanted: LRUDict[bytes, list[int]] = LRUDict(MAX_WANTED)
        #: peer -> the wanted hashes it announced that are not in flight, announcement order.
        self._by_peer: dict[int, LRUDict[bytes, None]] = {}
        #: hash -> (peer, time requested).
        self._in_flight: dict[bytes, tuple[int, float]] = {}
        #: peer -> hashes in flight from it (at most MAX_BLOCKS_IN_TRANSIT_PER_PEER).
        self._peer_flight: dict[int, set[bytes]] = {}
        #: peer -> when it last started a request from idle or delivered a block.
        self._progress: dict[int, float] = {}
        #: peers released as stallers (never asked again; the caller disconnects them).
        self._stallers: set[int] = set()

    # ------------------------------------------------------------ announcements
    def announced(self, peer_id: int, hashes: list[bytes]) -> None:
        """``peer_id`` has these (unknown to us) blocks; remember it as their announcer."""
        with self._lock:
            if peer_id in self._stallers:
                return
            mine = self._by_peer.get(peer_id)
            if mine is None:
                mine = self._by_peer[peer_id] = LRUDict(MAX_WANTED_PER_PEER)
            for h in hashes:
                peers = self._wanted.get(h)
                if peers is None:
                    if len(self._wanted) >= MAX_WANTED:
                        self._make_room(peer_id, mine)
                    peers = []
                    evicted = self._wanted.put(h, peers)
                    if evicted is not None:
                        self._forget_hash(evicted)
                if peer_id not in peers:
                    if len(peers) >= MAX_ANNOUNCERS_PER_HASH:
                        continue
                    peers.append(peer_id)
                cur = self._in_flight.get(h)
                if cur is not None and cur[0] == peer_id:
                    continue
                gone = mine.put(h, None)
                if gone is not None:
                    self._drop_announcer(gone, peer_id)

    def candidates(self, peer_id: int) -> list[bytes]:
        """Hashes ``peer_id`` announced that nobody is fetching, in announcement order:
        about twice its free slots (the caller drops those it already has)."""
        with self._lock:
            free = MAX_BLOCKS_IN_TRANSIT_PER_PEER - len(self._peer_flight.get(peer_id, ()))
            mine = self._by_peer.get(peer_id)
            if free <= 0 or not mine or peer_id in self._stallers:
                return []
            now = self.clock()
            out = []
            for h in mine:
                cur = self._in_flight.get(h)
                if cur is None or now - cur[1] >= BLOCK_REQUEST_TIMEOUT_S:
                    out.append(h)
                    if len(out) >= 2 * free:
                        break
            return out

    def claim(self, peer_id: int, hashes: list[bytes], have: set[bytes]) -> list[bytes]:
        """Mark up to the free slots of ``hashes`` requested from ``peer_id``; hashes in
        ``have`` are forgotten.  Returns the hashes to put in a ``getdata``."""
        now = self.clock()
        out: list[bytes] = []
        with self._lock:
            flight = self._peer_flight.setdefault(peer_id, set())
            for h in hashes:
                if h in have:
                    self._forget_hash(h)
                    continue
                if len(flight) >= MAX_BLOCKS_IN_TRANSIT_PER_PEER:
                    break
                cur = self._in_flight.get(h)
                if cur is not None and now - cur[1] < BLOCK_REQUEST_TIMEOUT_S:
                    continue
                if cur is not None:
                    self._release(h)
                if not flight:
                    self._progress[peer_id] = now
                self._in_flight[h] = (peer_id, now)
                flight.add(h)
                mine = self._by_peer.get(peer_id)
                if mine is not None:
                    mine.pop(h, None)
                out.append(h)
            if not flight:
                self._peer_flight.pop(peer_id, None)
        return out

    def request_now(self, peer_id: int, h: bytes) -> bool:
        """Ask ``peer_id`` for ``h`` (an orphan's parent) regardless of its queue order,
        unless an unexpired request for it exists.  True when the caller should send it."""
        now = self.clock()
        with self._lock:
            cur = self._in_flight.get(h)
            if cur is not None and now - cur[1] < BLOCK_REQUEST_TIMEOUT_S:
                return False
            if cur is not None:
                self._release(h)
            flight = self._peer_flight.setdefault(peer_id, set())
            if not flight:
                self._progress[peer_id] = now
            self._in_flight[h] = (peer_id, now)
            flight.add(h)
            return True

    def unclaim(self, hashes: list[bytes]) -> None:
        """The ``getdata`` for these could not be queued: they are not in flight."""
        with self._lock:
            for h in hashes:
                self._release(h)

    # ------------------------------------------------------------ arrivals, departures
    def received(self, h: bytes, peer_id: int) -> tuple[bool, list[int]]:
        """A block arrived from ``peer_id``.  Returns (whether we had requested it from
        anyone, the peers whose slots it freed: refill them)."""
        with self._lock:
            cur = self._in_flight.get(h)
            requested = cur is not None
            freed = [cur[0]] if cur is not None else []
            if cur is not None and cur[0] == peer_id or peer_id in self._peer_flight:
                self._progress[peer_id] = self.clock()
            self._forget_hash(h)
            if peer_id not in freed:
                freed.append(peer_id)
            return requested, freed

    def announcers(self, h: bytes) -> list[int]:
        """The peers remembered as announcers of ``h`` (before :meth:`received` forgets
        them: a refused copy must not cost the real block its other sources)."""
        with self._lock:
            return list(self._wanted.get(h, ()))

    def peer_gone(self, peer_id: int) -> list[int]:
        """Forget a disconnected peer.  Returns the other announcers of the blocks it
        had in flight (ask them now)."""
        with self._lock:
            return self._drop_peer(peer_id)

    def take_stallers(self) -> tuple[list[int], list[int]]:
        """Peers that stalled (see the module docstring), released; and the peers to refill."""
        now = self.clock()
        stallers: list[int] = []
        refill: list[int] = []
        with self._lock:
            for peer_id, flight in list(self._peer_flight.items()):
                if not flight or now - self._progress.get(peer_id, now) < STALL_TIMEOUT_S:
                    continue
                others = {p for h in flight for p in self._wanted.get(h, ()) if p != peer_id}
                if not others:
                    continue
                stallers.append(peer_id)
                self._stallers.add(peer_id)
                refill += [p for p in self._drop_peer(peer_id) if p not in refill]
        return stallers, [p for p in refill if p not in stallers]

    # ------------------------------------------------------------ queries
    def in_flight_count(self, peer_id: int | None = None) -> int:
        with self._lock:
            if peer_id is None:
                return len(self._in_flight)
            return len(self._peer_flight.get(peer_id, ()))

    def busy_with(self, peer_id: int) -> bool:
        """Anything in flight from, or still to request from, ``peer_id``."""
        with self._lock:
            return bool(self._peer_flight.get(peer_id)) or bool(self._by_peer.get(peer_id))

    def table_sizes(self) -> dict[str, int]:
        with self._lock:
            return {"wanted": len(self._wanted), "in_flight": len(self._in_flight),
                    "by_peer": sum(len(m) for m in self._by_peer.values())}

    # ------------------------------------------------------------ internals (lock held)
    def _make_room(self, peer_id: int, mine: LRUDict[bytes, None]) -> None:
        """``_wanted`` is full: an announcer holding its fair share or more gives up
        its own oldest hash; if that freed nothing, the oldest wanted hash goes.
        A hash in flight is never forgotten here."""
        if len(mine) >= MAX_WANTED // max(1, len(self._by_peer)):
            own = next((h for h in mine if h not in self._in_flight), None)
            if own is not None:
                mine.pop(own)
                self._drop_announcer(own, peer_id)
        if len(self._wanted) >= MAX_WANTED:
            victim = next((h for h in self._wanted if h not in self._in_flight), None)
            if victim is not None:
                self._forget_hash(victim)

    def _release(self, h: bytes) -> None:
        cur = self._in_flight.pop(h, None)
        if cur is None:
            return
        flight = self._peer_flight.get(cur[0])
        if flight is not None:
            flight.discard(h)
            if not flight:
                del self._peer_flight[cur[0]]
        # Back in its announcers' queues (the front would be better; the end is bounded).
        for p in self._wanted.get(h, ()):
            mine = self._by_peer.get(p)
            if mine is not None and p not in self._stallers:
                mine.put(h, None)

    def _forget_hash(self, h: bytes) -> None:
        cur = self._in_flight.pop(h, None)
        if cur is not None:
            flight = self._peer_flight.get(cur[0])
            if flight is not None:
                flight.discard(h)
                if not flight:
                    del self._peer_flight[cur[0]]
        for p in self._wanted.pop(h, None) or ():
            mine = self._by_peer.get(p)
            if mine is not None:
                mine.pop(h, None)

    def _drop_announcer(self, h: bytes, peer_id: int) -> None:
        peers = self._wanted.get(h)
        if peers is not None and peer_id in peers:
            peers.remove(peer_id)
            if not peers and h not in self._in_flight:
                self._wanted.pop(h, None)

    def _drop_peer(self, peer_id: int) -> list[int]:
        refill: list[int] = []
        for h in list(self._peer_flight.get(peer_id, ())):
            self._drop_announcer(h, peer_id)
            self._release(h)
            refill += [p for p in self._wanted.get(h, ()) if p not in refill]
            if not self._wanted.get(h):
                self._wanted.pop(h, None)
        for h in list(self._by_peer.pop(peer_id, None) or ()):
            self._drop_announcer(h, peer_id)
        self._peer_flight.pop(peer_id, None)
        self._progress.pop(peer_id, None)
        return [p for p in refill if p != peer_id]

    def forget_staller(self, peer_id: int) -> None:
        """The staller's connection is gone (its id is never reused)."""
        with self._lock:
            self._stallers.discard(peer_id)
