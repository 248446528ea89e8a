"""Chain state: which blocks are known, which chain is active, and how it changes.

The port of ``CChainState`` (``src/consensus/chain.{h,cpp}``) together with the
block-acceptance steps the C++ node runs inline in its P2P and miner callbacks
(``chain`` 5.3-5.7).  By default a block is decided exactly as the C++ node
decides it:

* its RandomX hash must meet its *own* ``nBits``, which must lie in the
  network's allowed range (``chain D10``, ``D12``, ``D22``); nothing else about
  the block is examined;
* its parent must be known;
* the tip is the block with the most chain work, strictly greater wins and
  ties keep the block seen first (``chain`` 3.4, 5.4);
* a reorganisation deeper than 100 blocks is refused (``chain D39``);
* disconnects (tip first) and connects (ascending) run in order, and a failure
  part-way restores the old tip.

``strict`` (``--strict``) adds the rules the C++ library contains but never applies:
expected ``nBits`` (retargeting), the timestamp rule, the merkle root, and full
block/transaction validation by the UTXO set while connecting.

Deliberate differences from the C++ node (none changes a stored byte):

* blocks with an unknown parent wait in a bounded :class:`OrphanPool` and are
  connected when the parent arrives (``chain D21``: the C++ stores and abandons them);
* block, index and ``bestblock`` records are written in one batch after the
  decision, synced when the tip moves (``chain D19``); with a UTXO set attached
  the block record is also written before the UTXO set applies it, so that
  :meth:`ChainState.load` can always bring the two databases together;
* a failure part-way through a reorganisation restores the old tip completely
  (the C++ may leave ``pnext`` links inconsistent, ``chain D39``), and strict-mode
  invalid blocks are remembered as failed in memory (never stored), except for
  failures another body or a later clock could cure (``BlockValidationError.curable``,
  Core's ``BLOCK_MUTATED``, ``BLOCK_TIME_FUTURE``): the real block still connects;
* the start-up load (:mod:`dilithion.node.chain_loader`) rebuilds the whole
  tree from disk, side branches included, and therefore restarts on data the
  C++ node cannot restart on (``chain D15``, ``D16``).

The chain state reaches the databases only through the interfaces of
:mod:`dilithion.consensus.storage`; what follows a tip change outside
consensus (mempool clean-up, metrics, relay, mining) subscribes as a tip
listener.
"""
from __future__ import annotations

import enum
import threading
import time as _time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from loguru import logger

from dilithion.consensus.block_index import BLOCK_FAILED, STATUS_STORED_BLOCK, BlockIndex
from dilithion.consensus.orphan_pool import OrphanPool
from dilithion.consensus.pow import HeaderHashCache, check_proof_of_work
from dilithion.consensus.storage import BlockStore, CoinStore, StorageError
from dilithion.consensus.validation import (BlockValidationError, check_block_body,
                                            contextual_header_failure)
from dilithion.core.chainparams import ChainParams
from dilithion.primitives.block import Block, Uint256

__all__ = ["BlockStatus", "BlockResult", "ChainState", "MAX_REORG_DEPTH", "TipListener"]

#: ``ActivateBestChain``'s limit on the number of blocks a reorganisation may disconnect.
MAX_REORG_DEPTH = 100
#: Header hashes remembered by :meth:`ChainState.hash_block` (80-byte key + 32-byte value each).

TipListener = Callable[[BlockIndex, list[Block], list[Block]], None]


class BlockStatus(enum.Enum):
    """What :meth:`ChainState.process_new_block` did with a block."""

    TIP = "tip"              # extended the active chain
    REORG = "reorg"          # became the tip of a heavier branch; blocks were disconnected
    SIDE = "side"            # stored on a branch with less or equal work (or too deep to reorg)
    ORPHAN = "orphan"        # parent unknown: waiting in the orphan pool
    DUPLICATE = "duplicate"  # already known (indexed or waiting in the orphan pool)
    UNREQUESTED = "unrequested"  # not asked for and no more work than the tip: not stored
    INVALID = "invalid"      # rejected; ``reason`` says why


#: Results after which the block is indexed and its waiting orphans can follow.
_ACCEPTED = (BlockStatus.TIP, BlockStatus.REORG, BlockStatus.SIDE)


@dataclass
class BlockResult:
    status: BlockStatus
    hash: Uint256
    index: BlockIndex | None = None
    #: For ORPHAN: the earliest unknown ancestor, the block to ask peers for.
    missing_parent: Uint256 | None = None
    #: Every block newly on the main chain because of this call, ascending
    #: (including orphans that connected behind this block).
    connected: list[Block] = field(default_factory=list)
    #: Blocks that left the main chain because of this call, tip first.
    disconnected: list[Block] = field(default_factory=list)
    reason: str | None = None


class _InvalidBlock(Exception):
    """A block failed validation while being connected (strict mode, or a UTXO error)."""

    def __init__(self, index: BlockIndex, reason: str, curable: bool = False) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason
        self.curable = curable


class _Change:
    """Bookkeeping for one :meth:`ChainState.process_new_block` call: the tip it
    started from and every block body touched, so connect/disconnect/rollback
    never read a block twice and the net connected/disconnected lists can be
    reported at the end."""

    def __init__(self, old_tip: BlockIndex) -> None:
        self.old_tip = old_tip
        self.blocks: dict[Uint256, Block] = {}


class ChainState:
    """``CChainState`` plus the node's accept-block steps.

    Ownership: shared by every thread of one node (P2P handlers, miners, RPC).
    ``self.lock`` (an ``RLock``) guards the index map, the main chain, the
    orphan pool and every ``BlockIndex`` it owns; ``process_new_block`` may be
    called from any thread.  Tip listeners run after the lock is released, on
    the thread that processed the block.
    """

    def __init__(self, params: ChainParams, db: BlockStore, hasher, *,
                 utxo_set: CoinStore | None = None, strict: bool = False) -> None:
        self.params = params
        self.db = db
        #: When given, every connect and disconnect also updates the UTXO set, in step.
        self.utxo_set = utxo_set
        #: Stricter intended consensus rules the C++ lacks (``--strict``).
        self.strict = strict
        self.lock = threading.RLock()
        self.max_reorg_depth = params.max_reorg_depth   # MAX_REORG_DEPTH; None on regtest
        self._index: dict[Uint256, BlockIndex] = {}
        self._main: list[BlockIndex] = []            # the active chain by height
        self.orphans = OrphanPool()
        self._hashes = HeaderHashCache(hasher)
        self._listeners: list[TipListener] = []

    # ------------------------------------------------------------------ queries
    def tip(self) -> BlockIndex:
        """The best block's index (``GetTip``)."""
        with self.lock:
            if not self._main:
                raise RuntimeError("chain state not loaded: no block tree adopted yet")
            return self._main[-1]

    def height(self) -> int:
        """The best block's height (``GetHeight``; the C++ also keeps ``g_chain_height``)."""
        with self.lock:
            return len(self._main) - 1

    def get_index(self, block_hash: Uint256) -> BlockIndex | None:
        """The entry of ``block_hash``, or ``None`` (``GetBlockIndex``, ``HasBlockIndex``)."""
        with self.lock:
            return self._index.get(block_hash)

    def knows_block(self, block_hash: Uint256) -> bool:
        """Indexed (any branch, failed included) or waiting in the orphan pool."""
        with self.lock:
            return block_hash in self._index or block_hash in self.orphans

    def get_block(self, block_hash: Uint256) -> Block | None:
        """Any stored block, on the main chain or not (orphans are not stored)."""
        return self.db.read_block(block_hash)

    def main_chain_hash_at(self, height: int) -> Uint256 | None:
        with self.lock:
            return self._main[height].hash if 0 <= height < len(self._main) else None

    def main_chain_hashes(self, from_height: int, count: int) -> list[Uint256]:
        with self.lock:
            start = max(from_height, 0)
            return [index.hash for index in self._main[start:start + max(count, 0)]]

    def is_on_main_chain(self, index: BlockIndex) -> bool:
        with self.lock:
            return self._on_main(index.hash)

    def blocks_at_height(self, height: int) -> list[Uint256]:
        """``GetBlocksAtHeight``: every known block at that height, in memcmp order (``chain D5``)."""
        with self.lock:
            return sorted(h for h, index in self._index.items()
                          if index.height == height and not index.is_failed())

    def chain_tips(self) -> list[tuple[BlockIndex, int, str]]:
        """Every block without a known child: ``(index, branch length, status)``.

        Status is ``active`` for the tip, ``valid-fork`` for a side branch and
        ``invalid`` for a branch ending in a block that failed strict validation;
        the branch length counts the blocks off the main chain.  Highest first.
        """
        with self.lock:
            parents = {index.prev.hash for index in self._index.values() if index.prev}
            tips = []
            for index in self._index.values():
                if index.hash in parents:
                    continue
                fork = self.find_fork(index, self._main[-1])
                branchlen = index.height - fork.height if fork is not None else index.height
                status = ("active" if index is self._main[-1]
                          else "invalid" if index.is_failed() else "valid-fork")
                tips.append((index, branchlen, status))
            return sorted(tips, key=lambda t: (-t[0].height, t[0].hash))

    def locator(self, start: BlockIndex | None = None) -> list[Uint256]:
        """Hashes describing the chain ending at ``start`` (default: our tip) to a peer.

        ``start`` and its nine predecessors one by one, then steps that double
        back, and the genesis last: about 10 + log2(height) hashes, so a peer on
        any fork finds the last block we share (``getblocks``).
        """
        with self.lock:
            index = start if start is not None else self._main[-1]
            hashes: list[Uint256] = []
            step = 1
            while index is not None and index.height > 0:
                hashes.append(index.hash)
                if len(hashes) >= 10:
                    step *= 2
                for _ in range(step):
                    index = index.prev
                    if index is None:
                        break
            hashes.append(self._main[0].hash)
            return hashes

    def locator_fork_height(self, locator: Iterable[bytes]) -> int:
        """Height of the first ``locator`` hash on our main chain (0: only the genesis)."""
        with self.lock:
            for h in locator:
                index = self._index.get(Uint256(bytes(h)))
                if index is not None and self._on_main(index.hash):
                    return index.height
            return 0

    def precheck_block(self, block: Block) -> str | None:
        """Why ``block`` is invalid on checks that need no RandomX hash, or None.

        ``nBits`` outside the network's range: the first half of
        ``check_proof_of_work``, which :meth:`process_new_block` applies after the
        hash.  The size limit needs no check here: ``vtx`` is capped at 4 MiB
        while the message is decoded, before any hash (the 1 MB
        ``MAX_BLOCK_SIZE`` is a strict-mode rule applied only when connecting,
        so checking it earlier would change decisions).  Callers run this before
        :meth:`hash_block`; it rejects only blocks :meth:`process_new_block`
        rejects too, so the decision stays the C++'s, only cheaper.
        """
        return self._bits_failure(block.header.bits)

    def _bits_failure(self, bits: int) -> str | None:
        lo, hi = self.params.pow_min_bits, self.params.pow_max_bits
        if not lo <= bits <= hi:
            return f"bad-diffbits: nBits 0x{bits:08x} outside [0x{lo:08x}, 0x{hi:08x}]"
        return None

    def hash_block(self, block: Block) -> Uint256:
        """The block's RandomX hash, cached (of the genesis block: C++ ``GetGenesisHash``)."""
        return self._hashes.get(block.header.serialize())

    @property
    def headers_hashed(self) -> int:
        """RandomX hashes :meth:`hash_block` and :meth:`prehash_header` computed (not cached)."""
        return self._hashes.computed

    def prehash_header(self, header80: bytes) -> bool:
        """Hash a received block's header ahead of :meth:`hash_block` (another thread),
        unless :meth:`precheck_block` would reject it without a hash; whether it did."""
        if len(header80) != 80 or self._bits_failure(int.from_bytes(header80[72:76], "little")):
            return False
        self._hashes.get(bytes(header80))
        return True

    def add_tip_listener(self, callback: TipListener) -> None:
        with self.lock:
            self._listeners.append(callback)

    @staticmethod
    def find_fork(a: BlockIndex, b: BlockIndex) -> BlockIndex | None:
        """``FindFork``: the last common ancestor of ``a`` and ``b``."""
        while a is not None and b is not None and a is not b:
            if a.height > b.height:
                a = a.prev
            elif b.height > a.height:
                b = b.prev
            else:
                a, b = a.prev, b.prev
        return a if a is b else None

    # ------------------------------------------------------------------ start-up
    def adopt_tree(self, index: dict[Uint256, BlockIndex], tip: BlockIndex) -> None:
        """Install a block tree read from disk (or a fresh genesis) with ``tip`` active.

        Called once by the start-up loader (:mod:`dilithion.node.chain_loader`),
        which has already checked that every entry links back to the genesis.
        """
        with self.lock:
            self._index = dict(index)
            self._main[:] = self._path_from_genesis(tip)
            for lower, upper in zip(self._main, self._main[1:]):
                lower.next = upper

    def _on_main(self, block_hash: Uint256) -> bool:
        index = self._index.get(block_hash)
        return index is not None and index.height < len(self._main) and self._main[index.height] is index

    @staticmethod
    def _path_from_genesis(index: BlockIndex) -> list[BlockIndex]:
        path = []
        node: BlockIndex | None = index
        while node is not None:
            path.append(node)
            node = node.prev
        path.reverse()
        return path

    # ------------------------------------------------------------------ accepting blocks
    def process_new_block(self, block: Block, block_hash: Uint256 | None = None, *,
                          requested: bool = True) -> BlockResult:
        """Decide a received or mined block; store, connect, reorganise as needed.

        C++: ``AddBlockIndex`` and ``ActivateBestChain`` (and the callers' inline steps).

        ``block_hash`` may be given when the caller already knows it (the miner);
        otherwise it is computed (and cached) here, outside the chain lock.
        ``requested=False`` (a peer's block we did not ask for): if it would not
        become the tip it is not stored (``UNREQUESTED``), as Core's ``AcceptBlock``.
        Raises :class:`StorageError` when a database cannot be read or written
        (disk full, corrupt record); the in-memory chain then still matches the disk.
        """
        block_hash = Uint256(block_hash) if block_hash is not None else self.hash_block(block)
        with self.lock:
            change = _Change(self.tip())
            result = self._accept(block, block_hash, change, requested)
            if result.status in _ACCEPTED or result.index is not None:
                self._connect_orphans(block_hash, change)
            new_tip = self._main[-1]
            if new_tip is not change.old_tip:
                result.connected, result.disconnected = self._net_change(change, new_tip)
            listeners = list(self._listeners) if new_tip is not change.old_tip else []
        for callback in listeners:
            try:
                callback(new_tip, result.connected, result.disconnected)
            except Exception:
                logger.exception("[Chain] Tip listener {} failed", callback)
        return result

    def _accept(self, block: Block, block_hash: Uint256, change: _Change,
                requested: bool = True) -> BlockResult:
        header = block.header
        known = self._index.get(block_hash)
        if known is not None:
            if known.is_failed():
                return BlockResult(BlockStatus.INVALID, block_hash, known, reason="duplicate-invalid")
            return BlockResult(BlockStatus.DUPLICATE, block_hash, known)
        if block_hash in self.orphans:
            return BlockResult(BlockStatus.DUPLICATE, block_hash,
                               missing_parent=self.orphans.missing_root(header.hash_prev_block))
        if not check_proof_of_work(block_hash, header.bits, self.params):
            return BlockResult(BlockStatus.INVALID, block_hash,
                               reason=f"high-hash: proof of work fails nBits 0x{header.bits:08x}")
        parent = self._index.get(header.hash_prev_block)
        if parent is not None and parent.is_failed():
            failure = BlockValidationError("bad-prevblk: descends from an invalid block")
        else:
            failure = self._strict_failure(block, parent) if self.strict else None
        if failure is not None and (failure.curable or parent is None):
            # Remembering the hash would refuse the real block; a kept orphan would shadow it.
            logger.warning("[Chain] Rejected block {}... (not marked failed): {}",
                           block_hash.short(), failure.reason)
            return BlockResult(BlockStatus.INVALID, block_hash, reason=failure.reason)
        if parent is None:
            self.orphans.add(block_hash, block)
            missing = self.orphans.missing_root(header.hash_prev_block)
            logger.info("[Chain] Orphan block {}... waits for {}... ({} in pool)",
                        block_hash.short(), missing.short(), len(self.orphans))
            return BlockResult(BlockStatus.ORPHAN, block_hash, missing_parent=missing)

        index = BlockIndex.from_header(block_hash, header, parent, STATUS_STORED_BLOCK)
        if failure is not None:
            return self._reject(index, failure.reason)

        tip = self._main[-1]
        if index.chain_work <= tip.chain_work:
            if not requested:
                logger.info("[Chain] Unrequested block {}... at height {} has no more work than "
                            "the tip: not stored", block_hash.short(), index.height)
                return BlockResult(BlockStatus.UNREQUESTED, block_hash)
            return self._store_side(index, block, tip)
        fork = self.find_fork(tip, index)
        depth = tip.height - fork.height
        if self.max_reorg_depth is not None and depth > self.max_reorg_depth:
            logger.error("[Chain] ERROR: Reorganization too deep: {} blocks", depth)
            logger.error("  Maximum allowed: {} blocks", self.max_reorg_depth)
            logger.error("  This may indicate a long-range attack or network partition")
            result = self._store_side(index, block, tip, quiet=True)
            result.reason = f"reorganisation of {depth} blocks refused (limit {self.max_reorg_depth})"
            return result
        return self._activate(index, block, fork, change)

    def _strict_failure(self, block: Block, parent: BlockIndex | None) -> BlockValidationError | None:
        """``--strict``'s checks before anything is stored or pooled (Core: ``CheckBlock``,
        ``ContextualCheckBlockHeader``): the header on its parent, then the body
        without the UTXO set.  What they pass leaves only failures the committed
        transactions decide (``check_block`` at connect), none of them curable."""
        if parent is not None:
            failure = contextual_header_failure(block.header, parent, self.params, int(_time.time()))
            if failure is not None:
                return failure
        try:
            check_block_body(block)
        except BlockValidationError as exc:
            return exc
        return None

    def _reject(self, index: BlockIndex, reason: str) -> BlockResult:
        """Remember an invalid block in memory only, so its descendants are refused fast."""
        index.status |= BLOCK_FAILED
        self._index[index.hash] = index
        logger.warning("[Chain] Rejected block {}... at height {}: {}", index.hash.short(),
                       index.height, reason)
        return BlockResult(BlockStatus.INVALID, index.hash, index, reason=reason)

    def _store_side(self, index: BlockIndex, block: Block, tip: BlockIndex,
                    quiet: bool = False) -> BlockResult:
        if not quiet:
            logger.info("[Chain] Received block on competing chain")
            logger.info("  Current tip: {} (height {})", tip.hash.short(), tip.height)
            logger.info("  New block:   {} (height {})", index.hash.short(), index.height)
            logger.info("[Chain] New chain has less or equal work - keeping current chain")
        with self.db.batch() as batch:
            batch.write_block(index.hash, block)
            batch.write_block_index(index.hash, index)
        self._index[index.hash] = index
        return BlockResult(BlockStatus.SIDE, index.hash, index)

    def _activate(self, index: BlockIndex, block: Block, fork: BlockIndex,
                  change: _Change) -> BlockResult:
        """Make ``index`` the tip, then persist block, index and ``bestblock`` in one synced batch."""
        tip = self._main[-1]
        extends = index.prev is tip
        if extends:
            logger.info("[Chain] Block extends current tip: height {}", index.height)
        else:
            depth = tip.height - fork.height
            logger.info("[Chain] ⚠️  NEW CHAIN HAS MORE WORK - REORGANIZING")
            logger.info("[Chain] Fork point: {} (height {})", fork.hash.short(), fork.height)
            if depth > 10:
                logger.warning("[Chain] ⚠️  WARNING: Deep reorganization ({} blocks)", depth)
            logger.info("[Chain] Reorganization plan:")
            logger.info("  Disconnect {} block(s)", depth)
            logger.info("  Connect {} block(s)", index.height - fork.height)
        change.blocks[index.hash] = block
        if self.utxo_set is not None:
            # The UTXO set (another database) may commit before 'bestblock' does; storing
            # the block first lets load() undo it after a crash (_reconcile_utxo).  This is
            # the one synced write per tip: the UTXO set and 'bestblock' are written after
            # it, so whatever of them outlives a power loss stands on blocks that did.
            with self.db.batch(sync=True) as batch:
                batch.write_block(index.hash, block)
        self._index[index.hash] = index
        try:
            self._switch_tip(index, change)
        except _InvalidBlock as e:
            self._index.pop(index.hash, None)
            if self.utxo_set is not None:
                self.db.erase_block(index.hash)
            if not e.curable:    # only a body stored by a default-mode run gets here curable
                e.index.status |= BLOCK_FAILED
                self._index[e.index.hash] = e.index
                for descendant in self._branch(e.index, index):
                    descendant.status |= BLOCK_FAILED
                    self._index[descendant.hash] = descendant
            logger.warning("[Chain] Block {}... at height {} is invalid: {}; tip stays at height {}",
                           e.index.hash.short(), e.index.height, e.reason, self._main[-1].height)
            return BlockResult(BlockStatus.INVALID, index.hash, index, reason=e.reason)
        except BaseException:
            self._index.pop(index.hash, None)
            raise
        try:
            # Synced only without a UTXO set; with one, the block record's synced write
            # above orders this one (LevelDB keeps a prefix of its log: the next tip's
            # sync makes this batch durable too).
            with self.db.batch(sync=self.utxo_set is None) as batch:
                batch.write_block(index.hash, block)
                batch.write_block_index(index.hash, index)
                batch.write_best_block(index.hash)
        except StorageError:
            self._switch_tip(tip, change)                 # memory and UTXO follow the disk
            self._index.pop(index.hash, None)
            raise
        if extends:
            return BlockResult(BlockStatus.TIP, index.hash, index)
        logger.info("[Chain] ✅ REORGANIZATION COMPLETE")
        logger.info("  New tip: {} (height {})", index.hash.short(), index.height)
        return BlockResult(BlockStatus.REORG, index.hash, index)

    @staticmethod
    def _branch(ancestor: BlockIndex, descendant: BlockIndex) -> list[BlockIndex]:
        """The blocks after ``ancestor`` up to ``descendant`` (ascending)."""
        out = []
        node = descendant
        while node is not None and node is not ancestor:
            out.append(node)
            node = node.prev
        out.reverse()
        return out

    def _switch_tip(self, target: BlockIndex, change: _Change) -> None:
        """Disconnect down to the fork with ``target``, then connect up to it.

        On any failure the previous tip is restored the same way (``ActivateBestChain``
        rollback) and the error propagates; the tip pointer is the main-chain list,
        which only ever holds a fully connected path.
        """
        start = self._main[-1]
        try:
            self._walk_to(target, change)
        except BaseException:
            try:
                self._walk_to(start, change)
            except Exception as rollback_error:
                logger.critical("[Chain] CRITICAL: Rollback failed! Chain state corrupted! {}",
                                rollback_error)
                raise
            logger.error("[Chain] Rollback complete. Reorg aborted.")
            raise

    def _walk_to(self, target: BlockIndex, change: _Change) -> None:
        fork = self.find_fork(self._main[-1], target)
        while self._main[-1] is not fork:
            self._disconnect_tip(change)
        for index in self._branch(fork, target):
            self._connect_tip(index, change)

    def _block_for(self, index: BlockIndex, change: _Change) -> Block:
        block = change.blocks.get(index.hash)
        if block is None:
            block = self.db.read_block(index.hash)
            if block is None:
                raise StorageError(f"block {index.hash} (height {index.height}) is indexed but "
                                   f"its record is missing from {self.db.path}")
            change.blocks[index.hash] = block
        return block

    def _connect_tip(self, index: BlockIndex, change: _Change) -> None:
        """``ConnectTip``: apply to the UTXO set (if any) and append to the main chain."""
        self._utxo_connect(index, self._block_for(index, change))
        self._main[-1].next = index
        self._main.append(index)

    def _disconnect_tip(self, change: _Change) -> None:
        """``DisconnectTip``: undo the tip in the UTXO set (if any) and drop it from the main chain."""
        index = self._main[-1]
        if index.prev is None:
            raise StorageError("cannot disconnect the genesis block")
        block = self._block_for(index, change)
        if self.utxo_set is not None:
            self.utxo_set.disconnect_block(block, index.height, index.hash)
        self._main.pop()
        index.prev.next = None

    def _utxo_connect(self, index: BlockIndex, block: Block) -> None:
        utxo = self.utxo_set
        if utxo is None:
            return
        try:
            utxo.connect_block(block, index.height, index.hash, strict=self.strict)
        except BlockValidationError as e:
            raise _InvalidBlock(index, e.reason, e.curable) from e

    def _connect_orphans(self, parent_hash: Uint256, change: _Change) -> None:
        """Process the orphans waiting for ``parent_hash``, recursively, parents first."""
        queue = [parent_hash]
        while queue:
            parent = queue.pop(0)
            for child_hash, child in self.orphans.pop_children(parent):
                result = self._accept(child, child_hash, change)
                logger.info("[Chain] Orphan block {}... processed: {}", child_hash.short(),
                            result.status.value)
                if result.status in _ACCEPTED or result.index is not None:
                    queue.append(child_hash)

    # ------------------------------------------------------------------ after a tip change
    def _net_change(self, change: _Change, new_tip: BlockIndex) -> tuple[list[Block], list[Block]]:
        fork = self.find_fork(change.old_tip, new_tip)
        connected = [self._block_for(i, change) for i in self._branch(fork, new_tip)]
        disconnected = [self._block_for(i, change) for i in reversed(self._branch(fork, change.old_tip))]
        return connected, disconnected
