"""Asynchronous block and transaction announcements.

The C++ node announces a mined block from the mining thread itself, peer after
peer, while holding the miner's callback mutex (``net`` 6.1): one slow peer
delays the announcement to every other peer and stalls mining.  Here
``broadcast_block`` / ``broadcast_tx`` only append a task to a queue and return;
worker threads turn each task into one ``inv`` per eligible peer and place it
on that peer's send queue (``ConnectionManager.send_message``, which never
blocks).  A peer whose queue refuses the message (backpressure, closing) is
retried later from a heap keyed by due time, with exponential backoff, so a
stalled peer never delays any other peer and no thread ever sleeps per peer.
Per-peer token buckets bound how many announcements one peer receives per
second.  There are no per-peer threads: the cost is one heap entry per pending
retry, so hundreds of peers are cheap.

Metric definition (``block_propagation_time{role="announce"}``): from the
moment ``broadcast_block`` was called (the chain's tip listener calls it as
soon as the tip changed) until ``send_message`` accepted the ``inv`` for the
last eligible peer of that task, retries included.  Not observed when no peer
was eligible or no peer accepted it.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from loguru import logger

from dilithion.net.peer_relay_state import Announce, AnnounceFilters, announce_decision
from dilithion.net.protocol import Inv, InvType, MsgInv
from dilithion.net.socket import TokenBucket
from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.primitives.block import Uint256

if TYPE_CHECKING:
    from dilithion.net.net_transport import ConnectionManager
    from dilithion.net.tx_relay import TxRelayManager

__all__ = ["AsyncBroadcaster", "BroadcastTask", "DEFAULT_MAX_RETRIES", "DEFAULT_RETRY_BACKOFF_MS"]

#: Retries of a refused announcement before it is given up (``DIL_BROADCAST_RETRIES``).
DEFAULT_MAX_RETRIES = 3
#: Delay before the first retry, doubled per retry (``DIL_BROADCAST_BACKOFF_MS``).
DEFAULT_RETRY_BACKOFF_MS = 50


@dataclass
class BroadcastTask:
    """One announcement to fan out.  ``pending`` counts peers whose delivery
    is not resolved yet (sent or given up); guarded by the broadcaster lock."""

    inv_type: int
    hash: Uint256
    exclude_peer: int | None
    created: float
    #: A block's parent ``(hash, height)``; None: unknown (C++ peers are not told).
    parent: tuple[bytes, int] | None = None
    message: MsgInv = field(init=False)
    eligible: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    last_delivery: float = 0.0

    def __post_init__(self) -> None:
        self.message = MsgInv([Inv(self.inv_type, bytes(self.hash))])

    @property
    def is_block(self) -> bool:
        return self.inv_type == InvType.MSG_BLOCK_INV


@dataclass
class _PeerStats:
    """What the broadcaster knows about one peer (diagnostics, rate limit)."""

    bucket: TokenBucket
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    rate_sample: tuple[float, int] = (0.0, 0)   # (time, peer.bytes_sent) of the last sample
    send_rate_bps: float = 0.0


class AsyncBroadcaster:
    """Fans announcements out to peers without blocking the caller.

    Threads: callers (mining thread, message-handler thread, RPC) only enqueue;
    ``workers`` daemon threads do the sending.  One ``threading.Condition``
    (``self._cv``) guards the task queue, the retry heap, every ``BroadcastTask``
    counter and the per-peer statistics.  ``connman.send_message`` is called
    *outside* that lock so a slow transport never holds up callers.

    ``announce_filters`` (:class:`~dilithion.net.peer_relay_state.AnnounceFilters`,
    given by the node assembly) holds the immutable per-peer snapshots the
    message-handler thread publishes; a block is sent to a peer only if
    :func:`~dilithion.net.peer_relay_state.announce_decision` says so on that
    snapshot (skipped: the peer has it, or a C++ peer that gets it by catch-up,
    which the handler thread sends).  Workers never call into the relay.
    Each block is announced once: the block relay's tip listener is the only
    caller of :meth:`broadcast_block`.
    """

    #: Default first retry delay; doubled per attempt (0.05, 0.1, 0.2 ... seconds).
    RETRY_BASE_S = DEFAULT_RETRY_BACKOFF_MS / 1000.0
    RATE_SAMPLE_S = 1.0

    def __init__(self, connman: ConnectionManager, *, tx_relay: TxRelayManager | None = None,
                 metrics: Metrics = NULL_METRICS, workers: int = 1, rate: float = 200.0,
                 burst: float = 100.0,
                 max_retries: int = DEFAULT_MAX_RETRIES, retry_base_s: float | None = None,
                 announce_filters: AnnounceFilters | None = None,
                 propagation=None, clock: Callable[[], float] = time.monotonic) -> None:
        #: Monotonic seconds for rate limits, retry due times and latency.
        #: Tests inject a fake clock; waits still use real time (bounded by RATE_SAMPLE_S).
        self._clock = clock
        self.connman = connman
        self.tx_relay = tx_relay
        self.metrics = metrics
        self.workers = max(1, workers)
        self.rate = rate
        self.burst = burst
        self.max_retries = max_retries
        #: First retry delay in seconds (doubled per attempt); the node passes
        #: ``DIL_BROADCAST_BACKOFF_MS`` in through ``NodeConfig``.
        self.retry_base_s = self.RETRY_BASE_S if retry_base_s is None else retry_base_s
        #: Per-peer snapshots published by the handler thread (None: announce to all).
        self.announce_filters = announce_filters
        #: The block relay's per-block propagation record (``PropagationLog``), or None.
        self.propagation = propagation
        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[BroadcastTask] = deque()
        self._retries: list[tuple[float, int, BroadcastTask, int, int]] = []  # (due, seq, task, peer, attempt)
        self._seq = itertools.count()
        self._peers: dict[int, _PeerStats] = {}
        self._threads: list[threading.Thread] = []
        self._running = False
        self._last_sample = 0.0
        self.tasks_queued = 0
        self.tasks_done = 0
        self.tasks_failed = 0
        self.tasks_retried = 0
        self.last_broadcast_latency_s: float | None = None
        self.last_success_rate: float | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        with self._cv:
            if self._running:
                return
            self._running = True
        for i in range(self.workers):
            t = threading.Thread(target=self._run, name=f"broadcast-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cv:
            self._running = False
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()

    # ----------------------------------------------------------------- producers
    def broadcast_block(self, block_hash, exclude_peer: int | None = None,
                        parent: tuple[bytes, int] | None = None) -> None:
        """Queue a block ``inv`` for every eligible peer; returns at once.  ``parent``
        is the block's parent ``(hash, height)`` (C++ peers hear only of blocks
        whose parent they have)."""
        self._enqueue(InvType.MSG_BLOCK_INV, block_hash, exclude_peer, parent)

    def broadcast_tx(self, txid, exclude_peer: int | None = None) -> None:
        """Queue a tx ``inv`` for every peer that relays txs and has not seen it.

        C++: ``AnnounceTransactionToPeers``.
        """
        self._enqueue(InvType.MSG_TX_INV, txid, exclude_peer)

    def _enqueue(self, inv_type: int, h, exclude_peer: int | None,
                 parent: tuple[bytes, int] | None = None) -> None:
        now = self._clock()
        with self._cv:
            self._queue.append(BroadcastTask(int(inv_type), Uint256(bytes(h)), exclude_peer, now,
                                             parent))
            self.tasks_queued += 1
            self._set_depth_metric()
            self._cv.notify()

    def peer_disconnected(self, peer_id: int) -> None:
        """Forget a peer's statistics; its pending retries resolve as failures."""
        with self._cv:
            self._peers.pop(peer_id, None)

    # ----------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._cv:
                job = self._next_job()
                if job is None:
                    return
            try:
                if isinstance(job, BroadcastTask):
                    self._fan_out(job)
                elif job == "sample":
                    self._sample_rates()
                else:
                    self._retry(*job)
            except Exception:  # a worker must never die
                logger.exception("[P2P] ERROR: broadcast worker failed")

    def _next_job(self):
        """Wait (lock held) for a new task, a due retry or a rate sample tick."""
        while self._running:
            now = self._clock()
            last_sample = self._last_sample
            if self._retries and self._retries[0][0] <= now:
                due, _seq, task, peer_id, attempt = heapq.heappop(self._retries)
                return (task, peer_id, attempt)
            if self._queue:
                task = self._queue.popleft()
                self._set_depth_metric()
                return task
            if now - last_sample >= self.RATE_SAMPLE_S:
                self._last_sample = now
                return "sample"
            timeout = self.RATE_SAMPLE_S - (now - last_sample)
            if self._retries:
                timeout = min(timeout, self._retries[0][0] - now)
            self._cv.wait(timeout=max(0.0, timeout))
        return None

    def _eligible_peers(self, task: BroadcastTask) -> list:
        pm = self.connman.peer_manager
        peers = []
        for peer in pm.handshake_complete_peers():
            if peer.id == task.exclude_peer:
                self._not_sent(task, peer.id, "peer sent us the block")
                continue
            if not task.is_block:
                if not peer.relay:
                    continue
                relay = self.tx_relay
                if relay is not None and not relay.should_announce(peer.id, bytes(task.hash)):
                    continue
            if task.is_block and not self._announce_allowed(peer, task):
                self._not_sent(task, peer.id, "skipped: peer has the block, or a C++ peer that"
                                              " gets it by catch-up")
                continue
            peers.append(peer)
        return peers

    def _announce_allowed(self, peer, task: BroadcastTask) -> bool:
        """Decided from the peer's published snapshot alone (monotonic time, the
        relay's clock for catch-up deadlines)."""
        if self.announce_filters is None:
            return True
        view = self.announce_filters.get(peer.id, peer.is_cpp())
        return announce_decision(view, bytes(task.hash), task.parent,
                                 time.monotonic()) is Announce.SEND

    def _fan_out(self, task: BroadcastTask) -> None:
        peers = self._eligible_peers(task)
        with self._cv:
            task.eligible = task.pending = len(peers)
        if not peers:
            logger.debug(f"[P2P] No eligible peers to announce {task.hash.short()}...")
            self._finish(task)
            return
        for peer in peers:
            self._attempt(task, peer.id, 0)
        logger.debug(f"[P2P] Broadcasted {'block' if task.is_block else 'tx'} inv "
                     f"{task.hash.short()}... to {task.delivered} peer(s) at once")

    def _retry(self, task: BroadcastTask, peer_id: int, attempt: int) -> None:
        if self.connman.peer_manager.get_peer(peer_id) is None:
            self._give_up(task, peer_id, "peer disconnected")
            return
        self._attempt(task, peer_id, attempt)

    def _give_up(self, task: BroadcastTask, peer_id: int, why: str) -> None:
        _task_logger(task, peer=peer_id).warning(
            f"[P2P] Failed to announce {task.hash.short()}... to peer {peer_id}: {why}")
        if task.is_block:
            self.metrics.block_broadcast_failures.inc()
        self._not_sent(task, peer_id, why)
        self._resolve(task, peer_id, delivered=False)

    def _attempt(self, task: BroadcastTask, peer_id: int, attempt: int) -> None:
        """One delivery try; on refusal schedule a retry instead of waiting."""
        now = self._clock()
        with self._cv:
            stats = self._peer_stats(peer_id, now)
            if not stats.bucket.try_take(now):
                # Rate limited: not a failure and not counted as an attempt.
                self._schedule(stats.bucket.next_token_at(now), task, peer_id, attempt)
                return
        ok = False
        record = self.propagation if task.is_block else None
        queued_at = record.now() if record is not None else 0.0
        try:
            written = (record.written_callback(bytes(task.hash), peer_id, "inv_written")
                       if record is not None else None)
            ok = bool(self.connman.send_message(peer_id, task.message, on_written=written))
        except Exception as e:  # transport trouble is a refused enqueue
            logger.debug(f"[P2P] send to peer {peer_id} raised {e!r}")
        if ok and record is not None:
            record.note(bytes(task.hash), peer_id, "inv_queued", at=queued_at)
        if ok:
            if not task.is_block and self.tx_relay is not None:
                self.tx_relay.mark_announced(peer_id, bytes(task.hash))
            self._resolve(task, peer_id, delivered=True)
        elif attempt < self.max_retries:
            with self._cv:
                self.tasks_retried += 1
                if peer_id in self._peers:
                    self._peers[peer_id].retried += 1
                self._schedule(self._clock() + self.retry_base_s * (2 ** attempt),
                               task, peer_id, attempt + 1)
        else:
            self._give_up(task, peer_id, f"send queue full after {attempt + 1} attempt(s)")

    def _not_sent(self, task: BroadcastTask, peer_id: int, why: str) -> None:
        if task.is_block and self.propagation is not None:
            self.propagation.not_sent(bytes(task.hash), peer_id, why)

    def _schedule(self, due: float, task: BroadcastTask, peer_id: int, attempt: int) -> None:
        heapq.heappush(self._retries, (due, next(self._seq), task, peer_id, attempt))
        self._cv.notify()

    def _resolve(self, task: BroadcastTask, peer_id: int, delivered: bool) -> None:
        now = self._clock()
        with self._cv:
            stats = self._peers.get(peer_id)
            if delivered:
                task.delivered += 1
                task.last_delivery = now
                if stats:
                    stats.delivered += 1
            else:
                task.failed += 1
                if stats:
                    stats.failed += 1
            task.pending -= 1
            done = task.pending == 0
        if done:
            self._finish(task)

    def _finish(self, task: BroadcastTask) -> None:
        """All peers of the task resolved: account it and record its metrics."""
        metrics = self.metrics
        with self._cv:
            if task.delivered or not task.eligible:
                self.tasks_done += 1
            else:
                self.tasks_failed += 1
            if task.delivered:
                self.last_broadcast_latency_s = task.last_delivery - task.created
            if task.eligible:
                self.last_success_rate = task.delivered / task.eligible
        if task.is_block:
            if task.delivered:
                metrics.block_propagation_time.labels(role="announce").observe(
                    task.last_delivery - task.created)
            if task.eligible:
                metrics.peer_broadcast_success_rate.set(task.delivered / task.eligible)
        if task.delivered:
            _task_logger(task).info(f"[P2P] Broadcasted {'block' if task.is_block else 'tx'} "
                                    f"inv to {task.delivered} peer(s)")

    # ----------------------------------------------------------------- stats
    def _peer_stats(self, peer_id: int, now: float) -> _PeerStats:
        stats = self._peers.get(peer_id)
        if stats is None:
            # Rate baseline: the connection's byte counter starts at 0.
            stats = self._peers[peer_id] = _PeerStats(TokenBucket(self.rate, self.burst, now),
                                                      rate_sample=(now, 0))
        return stats

    def _sample_rates(self) -> None:
        """Update each peer's send rate from the transport's byte counters."""
        now = self._clock()
        peers = self.connman.peer_manager.get_connected_peers()
        with self._cv:
            for peer in peers:
                stats = self._peer_stats(peer.id, now)
                t0, b0 = stats.rate_sample
                sent = int(peer.bytes_sent)
                if now > t0:
                    stats.send_rate_bps = max(0.0, (sent - b0) / max(1e-6, now - t0))
                stats.rate_sample = (now, sent)
            live = {p.id for p in peers}
            for gone in [pid for pid in self._peers if pid not in live]:
                del self._peers[gone]

    def _set_depth_metric(self) -> None:
        self.metrics.message_queue_depth.set(len(self._queue))

    def diagnostics(self) -> dict:
        """A consistent snapshot for RPC/tests; cheap, callable from any thread."""
        with self._cv:
            peers = {pid: {"delivered": s.delivered, "failed": s.failed, "retried": s.retried,
                           "send_rate_bps": round(s.send_rate_bps, 1),
                           "tokens": round(s.bucket.tokens, 2)}
                     for pid, s in self._peers.items()}
            snap = {
                "queue_depth": len(self._queue),
                "pending_retries": len(self._retries),
                "tasks_queued": self.tasks_queued,
                "tasks_done": self.tasks_done,
                "tasks_failed": self.tasks_failed,
                "tasks_retried": self.tasks_retried,
                "last_broadcast_latency_s": self.last_broadcast_latency_s,
                "last_success_rate": self.last_success_rate,
                "workers": self.workers,
                "running": self._running,
            }
        for pid, info in peers.items():
            try:
                info["queued_bytes"] = self.connman.queued_bytes(pid)
            except Exception:
                info["queued_bytes"] = 0
        snap["peers"] = peers
        return snap


def _task_logger(task: BroadcastTask, **fields):
    """The logger with the JSON log's structured fields of ``task`` (a block's hash)."""
    if task.is_block:
        fields["block_hash"] = task.hash.get_hex()
    return logger.bind(**fields)
