"""The per-block propagation record: who got each recent block from us, and when.

A miner (or an operator, or ``dilithion-lab``) needs to know whether a block
reached the network, without grepping logs.  For each block that became our
tip recently (mined here or relayed from a peer) this keeps: when it was
connected here, where it came from, and per peer when its ``inv`` was queued
and written to the socket, whether the peer asked for the block (``getdata``)
and when the block was queued and written, or why it was not announced
(already known, C++ peer catching up, send queue full, disconnected).

Writers are the block relay (tip listener, ``getdata`` handler, peer filter),
the broadcaster workers and the network thread (write callbacks); readers are
RPC threads.  One lock guards everything; each call holds it for a dict
update, never while calling out.  The history is bounded whatever peers
do: ``DEFAULT_CAPACITY`` blocks (oldest forgotten first), each with at most
``MAX_PEERS_PER_BLOCK`` peer entries (the oldest entry forgotten first, so
peers that reconnect under new ids cannot grow a record), and only blocks
that became our tip get a record: a ``getdata`` for any other hash adds
nothing.  So one peer has at most one entry per recorded block, and the
node at most ``DEFAULT_CAPACITY * MAX_PEERS_PER_BLOCK`` entries.

Times are wall-clock Unix seconds so records of several nodes on one machine
(the lab) or on NTP-synchronised machines can be compared.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from dilithion.core.lru import LRUDict

__all__ = ["PropagationLog", "DEFAULT_CAPACITY", "MAX_PEERS_PER_BLOCK", "EVENTS"]

#: Blocks kept.  A record holds one small entry per peer (~150 bytes), so the
#: worst case (125 peers) is about 4 MB; at one block a minute, 3+ hours.
DEFAULT_CAPACITY = 200
#: Peer entries kept per block: twice the 125 connection slots, so every connected
#: peer keeps its entry while peers churning in and out only push out the entries of
#: the longest-gone ones.  Node-wide at most 200 x 256 entries (~7.7 MB).
MAX_PEERS_PER_BLOCK = 256

EVENTS = ("inv_queued", "inv_written", "getdata", "block_queued", "block_written")


class _PeerEntry:
    """One peer's stamps for one block (slots: the record is kept for every peer)."""

    __slots__ = (*EVENTS, "not_sent")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)

    def as_dict(self, peer_id: int) -> dict:
        return {"peer": peer_id, **{name: getattr(self, name) for name in self.__slots__}}


class PropagationLog:
    """Bounded history of per-block propagation records (see module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._blocks: LRUDict[bytes, dict] = LRUDict(capacity)

    # ------------------------------------------------------------------ writers
    def connected(self, block_hash: bytes, height: int, from_peer: int | None) -> None:
        """A block became part of our main chain (``from_peer`` None: mined or RPC here)."""
        with self._lock:
            if block_hash in self._blocks:
                return
            self._blocks[block_hash] = {
                "hash": block_hash[::-1].hex(), "height": height, "connected": self._clock(),
                "source": "local" if from_peer is None else "peer", "from_peer": from_peer,
                "peers": LRUDict(MAX_PEERS_PER_BLOCK)}

    def _peer(self, block_hash: bytes, peer_id: int) -> _PeerEntry | None:
        """The peer's entry of a recorded block (lock held); None for unrecorded blocks."""
        rec = self._blocks.get(block_hash)
        if rec is None:
            return None
        entry = rec["peers"].get(peer_id)
        if entry is None:
            entry = _PeerEntry()
            rec["peers"].put(peer_id, entry)
        return entry

    def now(self) -> float:
        return self._clock()

    def note(self, block_hash: bytes, peer_id: int, event: str, at: float | None = None) -> None:
        """Stamp one event (``inv_queued``, ``inv_written``, ``getdata``,
        ``block_queued``, ``block_written``) at ``at`` (default now); the first stamp stays."""
        now = self._clock() if at is None else at
        with self._lock:
            entry = self._peer(block_hash, peer_id)
            if entry is not None and getattr(entry, event) is None:
                setattr(entry, event, now)

    def not_sent(self, block_hash: bytes, peer_id: int, why: str) -> None:
        """Record why the peer was not sent the inv or the block."""
        with self._lock:
            entry = self._peer(block_hash, peer_id)
            if entry is not None and entry.not_sent is None:
                entry.not_sent = why

    def written_callback(self, block_hash: bytes, peer_id: int, event: str):
        """A callable for the transport to run when the message left the send queue."""
        return lambda: self.note(block_hash, peer_id, event)

    def peer_disconnected(self, peer_id: int) -> None:
        """Mark unfinished deliveries to a peer that went away."""
        with self._lock:
            for h in self._blocks:
                entry = self._blocks[h]["peers"].get(peer_id)
                if entry is None or entry.not_sent:
                    continue
                if entry.inv_written is None or (entry.getdata and not entry.block_written):
                    entry.not_sent = "peer disconnected"

    # ------------------------------------------------------------------ readers
    def get(self, block_hash: bytes) -> dict | None:
        """A copy of the block's record with relative times, or None if not recorded."""
        with self._lock:
            if block_hash not in self._blocks:
                return None
            rec = dict(self._blocks[block_hash])
            peers = [e.as_dict(pid) for pid, e in rec["peers"].items()]
        t0 = rec["connected"]
        for p in peers:
            for key in EVENTS:
                if p[key] is not None:
                    p[key + "_ms"] = round((p[key] - t0) * 1000.0, 3)
            p["status"] = ("block sent" if p["block_written"] else
                           "block queued" if p["block_queued"] else
                           "not sent" if p["not_sent"] else
                           "inv written" if p["inv_written"] else
                           "inv queued" if p["inv_queued"] else "pending")
        rec["peers"] = sorted(peers, key=lambda p: p["peer"])
        return rec

    def recent(self, limit: int = 100) -> list[str]:
        """Hashes (display hex) of the most recently recorded blocks, newest last."""
        with self._lock:
            hashes = list(self._blocks)[-limit:]
        return [h[::-1].hex() for h in hashes]
