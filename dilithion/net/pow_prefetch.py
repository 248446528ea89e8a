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
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from loguru import logger

__all__ = ["PowPrefetch", "PER_PEER"]

#: Headers one peer may have queued or in progress.
PER_PEER = 16


class PowPrefetch:
    """A small pool of hashing threads fed by the network thread.

    Ownership: ``offer`` runs on the network thread; ``_waiting`` (per-peer
    counts), ``_pool`` and ``headers_done`` are guarded by ``_lock``; the pool's
    threads touch only the chain's header-hash cache, which has its own lock.
    ``close`` is called once, by the thread that stops the node.
    """

    def __init__(self, chain, workers: int | None = None) -> None:
        self._chain = chain
        self._workers = workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.headers_done = 0    # headers hashed here or found already hashed (diagnostics)

    def offer(self, peer, payload: bytes) -> None:
        """Network thread: queue the header of a received ``block`` payload, if allowed."""
        if len(payload) < 80 or not peer.is_handshake_complete():
            return
        with self._lock:
            if self._closed or self._waiting.get(peer.id, 0) >= PER_PEER:
                return
            self._waiting[peer.id] = self._waiting.get(peer.id, 0) + 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="pow-prefetch")
            pool = self._pool
        pool.submit(self._hash, peer, bytes(payload[:80]))

    def _hash(self, peer, header80: bytes) -> None:
        hashed = False
        try:
            if peer.is_connected():
                hashed = self._chain.prehash_header(header80)
        except Exception as exc:  # noqa: BLE001 - the handler hashes again and reports
            logger.debug(f"[P2P] Proof-of-work prefetch failed: {exc}")
        finally:
            with self._lock:
                self.headers_done += hashed
                left = self._waiting.get(peer.id, 1) - 1
                if left:
                    self._waiting[peer.id] = left
                else:
                    self._waiting.pop(peer.id, None)

    def close(self) -> None:
        """Drop what is queued, wait for the hashes in progress."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
