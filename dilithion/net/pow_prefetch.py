"""Proof-of-work prefetch: hash received blocks on spare cores before the handler needs them.

The message handler processes one message at a time, and for a block the
RandomX hash is most of that time (one hash in full mode is about as long as
storing the block).  During a catch-up, blocks arrive in batches and wait in
the peer's backlog, so the handler would hash them one after another on one
core while the others idle.  The network thread offers each complete ``block``
message here as it queues it (``ConnectionManager.delivery_observers``); worker
threads hash the header into the chain's header-hash cache, and the handler
finds the hash ready (or waits for the hash in progress instead of computing it
twice).  The C++ node hashes every block on its handler thread
(``ProcessBlockMessage``).

What it cannot be used for: making a node hash what it otherwise would not.
Headers whose ``nBits`` is out of range are not hashed (as in
``ChainState.precheck_block``), only peers that completed the handshake are
served, and each peer may have at most :data:`PER_PEER` headers waiting, so a
flood of bogus blocks costs at most that many hashes ahead of the handler,
which then discourages the sender at the first invalid one.

Fair across peers: the workers take headers **round-robin by peer**, and at
most :data:`MAX_QUEUED` wait node-wide.  Dozens of peers each sending junk
blocks with in-range ``nBits`` therefore put an honest block's header behind
at most one header of each of them, not behind hundreds (about 30 ms each in
light mode).  When the node-wide queue is full, a peer with fewer headers
waiting than the peer with the most takes that peer's newest place, so every
peer keeps its share; otherwise the header is simply not prefetched: the
handler hashes it in its turn, and the handler's fair scheduling
(:mod:`dilithion.net.fair_queue`) charges that peer the time.
"""
from __future__ import annotations

import os
import threading
from collections import deque

from loguru import logger

from dilithion.node.metrics import NULL_METRICS, Metrics
__all__ = ["PowPrefetch", "PER_PEER", "MAX_QUEUED"]

#: Headers one peer may have queued or in progress: block download keeps 16
#: blocks in flight per peer (``MAX_BLOCKS_IN_TRANSIT_PER_PEER``), so a catch-up
#: peer's whole window is hashed ahead.
PER_PEER = 16

#: Headers waiting node-wide (not counting those being hashed): four peers' full
#: windows, about a second of both cores' work in light mode (~30 ms a hash) and
#: a fraction of that in full mode; more would only be work done ahead for
#: blocks the handler reaches much later, or never (a junk sender is
#: discouraged at its first invalid block and its queued headers are skipped).
MAX_QUEUED = 4 * PER_PEER


class PowPrefetch:
    """A small pool of hashing threads fed by the network thread, round-robin by peer.

    Ownership: ``offer`` runs on the network thread; ``_cv`` (a condition on
    its own lock) guards ``_queues`` (peer id -> its waiting ``(peer, header)``
    items), ``_turns`` (the round-robin order of peer ids with items waiting),
    ``_busy`` (per peer, headers being hashed), ``_queued``, ``_threads``,
    ``_closed``, ``headers_done`` and ``refused``; the hashing threads touch
    only the chain's header-hash cache, which has its own lock.  ``close`` is
    called once, by the thread that stops the node.
    """

    def __init__(self, chain, workers: int | None = None,
                 metrics: Metrics = NULL_METRICS) -> None:
        self._chain = chain
        self._metrics = metrics
        self._workers = workers or os.cpu_count() or 1
        self._cv = threading.Condition(threading.Lock())
        self._queues: dict[int, deque] = {}
        self._turns: deque[int] = deque()
        self._busy: dict[int, int] = {}
        self._queued = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.headers_done = 0    # headers hashed here or found already hashed (diagnostics)
        self.refused = 0         # headers not prefetched: the peer's or the node's queue was full

    def offer(self, peer, payload: bytes) -> None:
        """Network thread: queue the header of a received ``block`` payload, if allowed."""
        if len(payload) < 80 or not peer.is_handshake_complete():
            return
        with self._cv:
            if self._closed:
                return
            queue = self._queues.get(peer.id)
            waiting = len(queue) if queue else 0
            if (waiting + self._busy.get(peer.id, 0) >= PER_PEER
                    or self._queued >= MAX_QUEUED and not self._make_room(waiting)):
                self._refuse()
                return
            if queue is None:
                queue = self._queues[peer.id] = deque()
                self._turns.append(peer.id)
            queue.append((peer, bytes(payload[:80])))
            self._queued += 1
            if not self._threads:
                self._start_workers()
            self._cv.notify()

    def _make_room(self, waiting: int) -> bool:
        """The node-wide queue is full: take the newest place of the peer with
        the most headers waiting if it has more than the offering peer (with
        ``waiting``) would after this one; else False."""
        victim = max(self._queues, key=lambda pid: len(self._queues[pid]))
        if len(self._queues[victim]) <= waiting + 1:
            return False
        self._queues[victim].pop()
        self._queued -= 1
        self._refuse()
        return True

    def _refuse(self) -> None:
        self.refused += 1
        self._metrics.pow_prefetch_refused.inc()

    def _start_workers(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"pow-prefetch_{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _next(self):
        """The next peer's oldest header, round-robin; None once closed."""
        with self._cv:
            while not self._closed and not self._turns:
                self._cv.wait()
            if self._closed:
                return None
            peer_id = self._turns.popleft()
            queue = self._queues[peer_id]
            item = queue.popleft()
            self._queued -= 1
            if queue:
                self._turns.append(peer_id)
            else:
                del self._queues[peer_id]
            self._busy[peer_id] = self._busy.get(peer_id, 0) + 1
            return item

    def _work(self) -> None:
        while (item := self._next()) is not None:
            self._hash(*item)

    def _hash(self, peer, header80: bytes) -> None:
        hashed = False
        try:
            if peer.is_connected():
                hashed = self._chain.prehash_header(header80)
        except Exception as exc:  # noqa: BLE001 - the handler hashes again and reports
            logger.debug(f"[P2P] Proof-of-work prefetch failed: {exc}")
        finally:
            with self._cv:
                self.headers_done += hashed
                left = self._busy.get(peer.id, 1) - 1
                if left:
                    self._busy[peer.id] = left
                else:
                    self._busy.pop(peer.id, None)

    def peers_tracked(self) -> int:
        """Peers with headers queued or being hashed (for leak checks: 0 at rest)."""
        with self._cv:
            return len(self._queues.keys() | self._busy.keys())

    def close(self) -> None:
        """Drop what is queued, wait for the hashes in progress."""
        with self._cv:
            self._closed = True
            self._queues.clear()
            self._turns.clear()
            self._queued = 0
            threads, self._threads = self._threads, []
            self._cv.notify_all()
        for t in threads:
            t.join()
