"""The node's miner (``src/miner/controller.{h,cpp}`` plus the mining parts of
``main`` in ``src/node/dilithion-node.cpp``).

What differs from the C++ and why:

* every worker hashes with its own RandomX VM over the one shared cache
  (the node's ``hasher``), so threads scale; the C++ serialises all hashing behind one
  global mutex (``cli 6.2`` #13);
* :meth:`MiningController.stop` never destroys the hasher: block validation
  keeps working after ``stopmining`` (``cli 6.2`` #14, ``chain D41``);
* a tip change bumps a generation counter that every worker compares after
  each hash, so no worker grinds a stale template and no sibling block is mined
  on a replaced tip; nothing is cleared "after the rebuild", so a notification
  cannot be lost (``cli 6.2`` #16/#17);
* the template is rebuilt every :data:`TEMPLATE_REFRESH_SECONDS`, which
  refreshes ``nTime`` and picks up new mempool transactions (``cli 6.2`` #19);
  ``nTime`` is never before the median time past + 1 (Core's ``UpdateTime``),
  so ``--strict`` peers accept the blocks of a fast chain;
* mempool transactions and their fees are included (the C++ node never
  consults its mempool, ``cli 6.1`` #3);
* with ``--randomx=auto`` (or ``full``) starting the miner starts the RandomX
  dataset build; the workers hash in light mode until it is ready, then in
  full mode, each with its own VM over the one shared dataset (issue #14);
* ``start``/``stop`` run under one lock (``cli 6.2`` #21); hashing and
  submission errors are logged, never swallowed (``cli 6.2`` #23).

The template itself comes from :mod:`dilithion.mining.template` (the C++
``BuildMiningTemplate`` form), its ``nBits`` from ``next_work_bits`` (genesis
bits unless ``--strict``, ``chain D12``).
"""
from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger

from dilithion.consensus.chain import BlockStatus, ChainState
from dilithion.consensus.params import MAX_BLOCK_SIZE
from dilithion.consensus.pow import hash_less_than
from dilithion.crypto.randomx_hash import RandomXHasher, wants_full_mode
from dilithion.mining.template import (BlockTemplate, create_block_template, next_work_bits,
                                      template_time)
from dilithion.node.blockchain_storage import StorageError
from dilithion.node.mempool import TxMemPool
from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import Transaction

__all__ = ["MiningController", "MiningStats", "TEMPLATE_REFRESH_SECONDS", "default_thread_count"]

#: Rebuild the template this often even without a new tip (fresh nTime, new mempool txs).
TEMPLATE_REFRESH_SECONDS = 30.0
#: Hash-rate window: the rate is averaged over the last few one-second samples.
HASH_RATE_WINDOW_SECONDS = 5
#: Bytes of the block kept free for the header, the coinbase and the tx count.
COINBASE_RESERVE_BYTES = 1000
#: Pause after a failed hash or a rejected own block, so a broken state cannot spin.
ERROR_BACKOFF_SECONDS = 1.0


def default_thread_count() -> int:
    """``--threads=auto``: every logical CPU (the C++ ``hardware_concurrency``)."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class MiningStats:
    """A snapshot of the controller's statistics (``CMiningStats``)."""

    hashes_computed: int
    blocks_found: int
    start_time: float
    hash_rate: float
    threads: int
    mining: bool


@dataclass(frozen=True)
class _Job:
    """One immutable unit of work shared by all workers: a template, the tip
    generation it was built for, and when it must be rebuilt anyway."""

    template: BlockTemplate
    generation: int
    expires: float  # time.monotonic()


class MiningController:
    """Grinds nonces on top of ``chain``'s tip with N worker threads.

    Collaborators come in as arguments, not as the node's context: the chain
    state (tip, consensus parameters, ``--strict``, block submission), the
    RandomX ``hasher``, the ``mempool`` (None: coinbase-only blocks),
    ``metrics`` and ``on_fatal`` (a failed block write stops the node).
    :meth:`on_tip_changed` must be registered as a tip listener of ``chain``
    by the node assembly (:func:`dilithion.node.init.connect_tip_listeners`),
    after the mempool's, so a rebuilt template never holds confirmed
    transactions.

    Threads: ``start``/``stop`` may be called from any thread (main loop, RPC);
    ``_lifecycle_lock`` serialises them.  Worker ``i`` owns slot ``i`` of
    ``_hashes`` (only it writes there, so counting needs no lock).  The shared
    job is replaced under ``_job_lock``.  ``_generation`` is bumped under
    ``_job_lock`` by the tip listener (any thread that connected a block) and
    read without a lock by workers (a single attribute read is atomic).
    """

    def __init__(self, chain: ChainState, hasher: RandomXHasher, pub_key_hash: bytes,
                 threads: int = 0, *, mempool: TxMemPool | None = None,
                 metrics: Metrics = NULL_METRICS,
                 randomx_mode: str = "light",
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self._chain = chain
        self._hasher = hasher
        self._mempool = mempool
        self._metrics = metrics
        self._randomx_mode = randomx_mode
        self._on_fatal = on_fatal
        self._threads = threads if threads > 0 else default_thread_count()
        self._pub_key_hash = bytes(pub_key_hash)
        #: Seconds before a template is rebuilt without a tip change (tests shorten it).
        self.template_refresh_seconds = TEMPLATE_REFRESH_SECONDS
        #: The wall clock templates are stamped from (tests freeze it to make a fast chain).
        self.clock = time.time

        self._lifecycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._mining = False
        self._workers: list[threading.Thread] = []
        self._monitor: threading.Thread | None = None

        self._job_lock = threading.Lock()
        self._generation = 0
        self._job: _Job | None = None

        self._hashes: list[int] = [0] * self._threads
        self._blocks_found = 0
        self._found_lock = threading.Lock()   # serialises submissions and guards _blocks_found
        self._start_time = 0.0
        self._rate_samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=HASH_RATE_WINDOW_SECONDS + 1)
        self._hash_rate = 0.0

    # ------------------------------------------------------------------ public API
    @property
    def pub_key_hash(self) -> bytes:
        return self._pub_key_hash

    @property
    def blocks_found(self) -> int:
        return self._blocks_found

    def thread_count(self) -> int:
        """The number of worker threads (``GetThreadCount``)."""
        return self._threads

    def is_mining(self) -> bool:
        return self._mining

    def worker_hashes(self) -> list[int]:
        """Hashes per worker since the last :meth:`start`."""
        return list(self._hashes)

    def current_template(self) -> BlockTemplate | None:
        """The template the workers are grinding now (``None`` before the first build)."""
        job = self._job
        return job.template if job is not None else None

    def total_hashes(self) -> int:
        """Hashes computed since the last :meth:`start`."""
        return sum(self._hashes)

    def get_hash_rate(self) -> float:
        """Hashes per second averaged over the last few seconds (0 when idle)."""
        return self._hash_rate

    def get_stats(self) -> MiningStats:
        return MiningStats(self.total_hashes(), self._blocks_found, self._start_time,
                           self._hash_rate, self._threads, self._mining)

    def start(self) -> bool:
        """Start the workers; ``False`` if already mining (``StartMining``).

        The statistics restart here (``CMiningStats::Reset``).
        """
        with self._lifecycle_lock:
            if self._mining:
                return False
            self._stop.clear()
            self._hashes = [0] * self._threads
            self._blocks_found = 0
            self._hash_rate = 0.0
            self._rate_samples.clear()
            self._start_time = time.time()
            with self._job_lock:
                self._job = None
            self._workers = [threading.Thread(target=self._worker, args=(i,), daemon=True,
                                              name=f"miner-{i}") for i in range(self._threads)]
            self._monitor = threading.Thread(target=self._hash_rate_monitor, daemon=True,
                                             name="miner-rate")
            self._mining = True
            if wants_full_mode(self._randomx_mode, mining=True):
                self._hasher.start_full_mode()
            for t in self._workers:
                t.start()
            self._monitor.start()
            return True

    def stop(self) -> None:
        """Stop and join every worker, each after its current hash (``StopMining``).

        The hasher is left alone: block validation shares it (``chain D41``).
        Statistics stay readable until the next start.
        """
        with self._lifecycle_lock:
            if not self._mining:
                return
            self._stop.set()
            me = threading.current_thread()
            for t in self._workers + [self._monitor]:
                if t is not None and t is not me:
                    t.join()
            self._workers = []
            self._monitor = None
            self._mining = False
            self._hash_rate = 0.0
            self._metrics.mining_hash_rate.set(0.0)

    # ------------------------------------------------------------------ tip tracking
    def on_tip_changed(self, new_tip, connected, disconnected) -> None:
        """Chain-state tip listener: every worker drops its template after its current hash.

        C++: ``UpdateTemplate``, which the caller had to invoke.
        """
        with self._job_lock:
            self._generation += 1
        if self._mining:
            logger.info("[Mining] New block found, updating template...")

    # ------------------------------------------------------------------ template
    def _current_job(self) -> _Job:
        """The job for the current tip, rebuilt by the first worker that finds it stale."""
        with self._job_lock:
            job = self._job
            if job is not None and job.generation == self._generation \
                    and time.monotonic() < job.expires:
                return job
            generation = self._generation
        # Build outside the job lock: reading the tip takes the chain lock, and the
        # tip listener (which needs the job lock) is called by chain code.
        template = self.build_template()
        with self._job_lock:
            if self._job is not None and self._job.generation == self._generation \
                    and time.monotonic() < self._job.expires:
                return self._job          # another worker was quicker
            resumed = self._job is None or self._job.template.height != template.height
            self._job = _Job(template, generation, time.monotonic() + self.template_refresh_seconds)
            job = self._job
        if resumed:
            logger.info(f"[Mining] Resumed mining on block height {template.height}")
        return job

    def build_template(self, pub_key_hash: bytes | None = None) -> BlockTemplate:
        """A template on the current tip, paying this node's key (or ``pub_key_hash``),
        with mempool txs (``BuildMiningTemplate`` in ``dilithion-node.cpp``)."""
        cs = self._chain
        params = cs.params
        with cs.lock:
            tip = cs.tip()
            bits = next_work_bits(tip, params, cs.strict)
            now = template_time(tip, int(self.clock()))
            transactions = self._mempool_transactions()
        return create_block_template(tip.hash, tip.height + 1, bits,
                                     pub_key_hash or self._pub_key_hash, params, transactions,
                                     now=now)

    def _mempool_transactions(self) -> list[tuple[Transaction, int]]:
        """``(tx, fee)`` pairs from the mempool in its order, within the block size.

        C++: ``SelectTransactionsForBlock``.
        """
        mempool = self._mempool
        if mempool is None or mempool.size() == 0:
            return []
        # The library's 1,000,000-byte vtx limit (chain D29), not the chain params'
        # 4 MiB: a block we mine must also pass peers that run --strict.
        budget = min(self._chain.params.max_block_size, MAX_BLOCK_SIZE) - COINBASE_RESERVE_BYTES
        chosen: list[tuple[Transaction, int]] = []
        # Pooled transactions spend only confirmed outputs (the mempool admits no
        # in-pool chains), so any subset in fee-rate order is a valid block body.
        for entry in mempool.get_ordered_entries():
            if entry.size > budget:
                continue
            budget -= entry.size
            chosen.append((entry.tx, entry.fee))
        return chosen

    # ------------------------------------------------------------------ threads
    def _worker(self, index: int) -> None:
        """Worker ``index`` of N tries nonces ``index, index+N, ...`` on the shared job.

        C++: ``MiningWorker``.
        """
        step = self._threads
        hasher = self._hasher
        hashes = self._hashes
        stop = self._stop
        while not stop.is_set():
            try:
                job = self._current_job()
            except Exception:  # noqa: BLE001 - a storage error must not kill the miner silently
                logger.exception("[ERROR] Failed to build new mining template!")
                stop.wait(ERROR_BACKOFF_SECONDS)
                continue
            template = job.template
            header = BlockHeader(**vars(template.block.header))
            nonce = index
            while not stop.is_set() and self._generation == job.generation \
                    and time.monotonic() < job.expires:
                header.nonce = nonce
                try:
                    digest = hasher.hash(header.serialize())
                except Exception:  # noqa: BLE001
                    logger.exception("[Mining] RandomX hashing failed")
                    stop.wait(ERROR_BACKOFF_SECONDS)
                    break
                hashes[index] += 1
                if hash_less_than(digest, template.target):
                    solved = Block(BlockHeader(**vars(header)), template.block.vtx)
                    self._submit(solved, Uint256(digest), template.height, job)
                    break
                nonce = (nonce + step) & 0xFFFFFFFF
                if nonce < step:
                    break           # wrapped: a rebuilt template has a new nTime
            else:
                continue
            self._expire(job)

    def _expire(self, job: _Job) -> None:
        """Force a rebuild of ``job`` (after a find or a nonce wrap)."""
        with self._job_lock:
            if self._job is job:
                self._job = None

    def _hash_rate_monitor(self) -> None:
        """Every second, sample the hash count; the rate is the slope over the window."""
        while not self._stop.wait(1.0):
            self._rate_samples.append((time.monotonic(), self.total_hashes()))
            (t0, h0), (t1, h1) = self._rate_samples[0], self._rate_samples[-1]
            if t1 > t0:
                self._hash_rate = (h1 - h0) / (t1 - t0)
                self._metrics.mining_hash_rate.set(self._hash_rate)

    # ------------------------------------------------------------------ found block
    def _submit(self, block: Block, block_hash: Uint256, height: int, job: _Job) -> None:
        """Hand a solved block to the chain (``cli`` 2.7) and announce it if it became the tip.

        C++: the callback the node set with ``SetBlockFoundCallback``.
        """
        with self._found_lock:
            if job.generation != self._generation:
                # Another worker's block (or a peer's) replaced the tip during this
                # hash: this one would only be a sibling on a side branch (cli 6.2 #16).
                logger.bind(block_hash=block_hash.get_hex(), height=height).info(
                    f"[Mining] Discarding block {block_hash.short()}... found on a replaced tip")
                return
            self._blocks_found += 1
            log = logger.bind(block_hash=block_hash.get_hex(), height=height)
            _log_block_found(log, block, block_hash)
            try:
                result = self._chain.process_new_block(block, block_hash)
            except StorageError as exc:
                log.error(f"[Blockchain] ERROR: Failed to save block to database! ({exc})")
                if self._on_fatal is not None:
                    self._on_fatal(f"cannot store mined block {block_hash.short()}...: {exc}")
                self._stop.set()
                return
            except Exception as exc:  # noqa: BLE001 - reach the operator, keep mining
                log.opt(exception=exc).error(f"[Mining] ERROR: submitting block failed: {exc}")
                self._stop.wait(ERROR_BACKOFF_SECONDS)
                return
            # A new tip is announced by the block relay's tip listener, not here.
            self._log_outcome(log, result, height)
            if result.status is BlockStatus.INVALID:
                self._stop.wait(ERROR_BACKOFF_SECONDS)

    def _log_outcome(self, log, result, height: int) -> None:
        """``log``: the logger bound to the mined block's hash and height."""
        status = result.status
        tip = self._chain.tip()
        if status is BlockStatus.TIP:
            log.info("[Blockchain] Block saved to database")
            log.info(f"[Blockchain] Block index created (height {height})")
            log.info(f"[Blockchain] Block became new chain tip at height {height}")
        elif status is BlockStatus.REORG:
            log.info("[Blockchain] Block saved to database")
            log.warning("[Blockchain] \u26a0\ufe0f  CHAIN REORGANIZATION occurred during mining!")
            log.warning("  Our mined block triggered a reorg")
            log.warning(f"  New tip: {tip.hash.short()} (height {tip.height})")
        elif status is BlockStatus.SIDE or status is BlockStatus.DUPLICATE:
            log.warning("[Blockchain] WARNING: Mined block is valid but not on best chain")
            log.warning(f"  Current tip: {tip.hash.short()} (height {tip.height})")
        elif status is BlockStatus.ORPHAN:
            log.error(f"[Blockchain] ERROR: Cannot find parent block "
                      f"{result.missing_parent.short() if result.missing_parent else '?'}...")
        else:
            log.error(f"[Blockchain] ERROR: Failed to activate mined block in chain: "
                      f"{result.reason or ''}")


def _log_block_found(log, block: Block, block_hash: Uint256) -> None:
    """The C++ banner (``cli`` 5.1), one log record per line so each line can be grepped;
    ``log`` carries the block's hash and height for the JSON log."""
    h = block.header
    for line in ("", "======================================", "[OK] BLOCK FOUND!",
                 "======================================",
                 f"Block hash: {block_hash.get_hex()}", f"Block time: {h.time}",
                 f"Nonce: {h.nonce}", f"Difficulty: 0x{h.bits:x}",
                 "======================================", ""):
        log.info(line)

