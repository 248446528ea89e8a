"""Start-up: the chain state from the block database (``chain`` 5.7).

The C++ node loads its chain inline in ``main()`` (``src/node/dilithion-node.cpp``)
and cannot restart on a datadir with side branches (``chain D15``, ``D16``).
Here :func:`load_chain_state` builds the :class:`ChainState` of a
:class:`NodeContext` from its databases, connects the chain's neighbours in the
node (mempool clean-up and metrics as tip listeners) and either writes the
genesis on a fresh database or rebuilds the whole stored tree, side branches
included, and brings the UTXO set to the loaded tip.  :func:`open_chain_state`
does the same from a datadir for tools, benchmarks and tests.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

from loguru import logger

from dilithion.consensus.block_index import STATUS_STORED_GENESIS, BlockIndex
from dilithion.consensus.chain import ChainState
from dilithion.consensus.storage import StorageError
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.blockchain_storage import BlockchainDB
from dilithion.node.context import NodeContext
from dilithion.node.genesis import create_genesis_block
from dilithion.node.mempool import TxMemPool
from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.node.utxo_set import UTXOSet
from dilithion.primitives.block import Uint256

__all__ = ["BlockTreeLoader", "load_chain_state", "open_chain_state", "close_chain_state"]


class BlockTreeLoader:
    """Rebuilds the block tree from a blocks database (``chain`` 5.7, recommended port behaviour).

    Index records give height and status but no parent (``chain D15``), so
    parents come from the ``b`` records' ``hashPrevBlock``.  Each index
    record's embedded hash must equal its key and its header fields must equal
    the block record's; the stored key is then trusted as the block hash (no
    RandomX per block: 10,000 hashes would take minutes).  Chain work is
    recomputed from the genesis proof (``chain D16``).  Every indexed block
    linked to the genesis is loaded, side branches included.

    Ownership: used once, by the thread running :func:`load_chain_state`.
    """

    def __init__(self, db: BlockchainDB, genesis_hash: Uint256) -> None:
        self.db = db
        self.genesis_hash = genesis_hash

    def load(self) -> tuple[dict[Uint256, BlockIndex], BlockIndex]:
        """The index map and the tip (``bestblock``, else the most-work block)."""
        corrupt: list[tuple[Uint256, Exception]] = []
        records = {record.hash: record for record in self.db.iter_block_indexes(corrupt)}
        headers = {h: block.header for h, block in self.db.iter_blocks(corrupt) if h in records}
        for block_hash, header in list(headers.items()):
            record = records[block_hash]
            if (record.time, record.bits, record.nonce, record.version) != (
                    header.time, header.bits, header.nonce, header.version):
                corrupt.append((block_hash, StorageError(
                    f"index record 'i{block_hash}' does not match block record 'b{block_hash}' "
                    f"(time/bits/nonce/version differ)")))
        for block_hash, _error in corrupt:
            records.pop(block_hash, None)
            headers.pop(block_hash, None)
        index = self._link(records, headers)
        if corrupt:
            self._repair(index, corrupt)
        unlinked, missing_body = len(headers) - len(index), len(records) - len(headers)
        if unlinked or missing_body:
            logger.warning("[Chain] Ignored {} indexed block(s) not linked to genesis and {} index "
                           "record(s) without block data", unlinked, missing_body)
        return index, self._tip(index)

    def _repair(self, index: dict[Uint256, BlockIndex], corrupt) -> None:
        """Drop corrupt records that are not on the main chain; a corrupt main-chain
        record (``bestblock`` no longer links to the genesis) stops the start-up."""
        best = self.db.read_best_block()
        if best is None or best not in index:
            first_hash, first_error = corrupt[0]
            raise StorageError(f"corrupt record of main-chain block {first_hash} (the best block "
                               f"{best} no longer links to the genesis): {first_error}")
        for block_hash, error in corrupt:
            logger.error("[Chain] Corrupt side-branch record of block {} dropped from the block "
                         "database: {}", block_hash, error)
            self.db.erase_records(block_hash)

    def _link(self, records, headers) -> dict[Uint256, BlockIndex]:
        if self.genesis_hash not in headers:
            raise StorageError(f"block database {self.db.path}: genesis {self.genesis_hash} "
                               f"has no index record")
        children: dict[Uint256, list[Uint256]] = {}
        for block_hash, header in headers.items():
            if block_hash != self.genesis_hash:
                children.setdefault(header.hash_prev_block, []).append(block_hash)
        root = BlockIndex.from_header(self.genesis_hash, headers[self.genesis_hash], None,
                                      records[self.genesis_hash].status)
        index = {self.genesis_hash: root}
        stack = [root]
        while stack:
            parent = stack.pop()
            for child_hash in children.get(parent.hash, ()):
                record = records[child_hash]
                child = BlockIndex.from_header(child_hash, headers[child_hash], parent, record.status)
                if record.height != child.height:
                    raise StorageError(f"index record 'i{child_hash}' says height {record.height}, "
                                       f"its parents give {child.height}")
                index[child_hash] = child
                stack.append(child)
        return index

    def _tip(self, index: dict[Uint256, BlockIndex]) -> BlockIndex:
        try:
            best = self.db.read_best_block()
        except StorageError as e:
            logger.warning("[Chain] {}", e)
            best = None
        if best is not None and best in index:
            return index[best]
        tip = max(index.values(), key=lambda i: (i.chain_work, -i.height))
        logger.warning("[Chain] Best block {} is missing or not linked; using the most-work block "
                       "{} (height {}) and storing it as 'bestblock'", best, tip.hash, tip.height)
        self.db.write_best_block(tip.hash)
        return tip


def load_chain_state(ctx: NodeContext) -> BlockIndex:
    """Build ``ctx.chainstate`` on ``ctx.blockchain`` (and ``ctx.utxo_set``) and load it.

    A fresh database gets the genesis block; a stored chain is rebuilt with
    :class:`BlockTreeLoader`.  ``ctx.mempool`` (when set) and ``ctx.metrics``
    become the chain's first tip listeners (the mempool must drop confirmed
    transactions before a miner builds its next template).  Raises
    :class:`StorageError` when the data cannot be loaded.  Returns the tip.
    """
    chain = ChainState(ctx.chain_params, ctx.blockchain, ctx.hasher, utxo_set=ctx.utxo_set,
                       strict=ctx.strict)
    if ctx.mempool is not None:
        chain.add_tip_listener(functools.partial(ctx.mempool.on_tip_changed, coins=ctx.utxo_set))
    chain.add_tip_listener(ctx.metrics.on_tip_changed)
    genesis = create_genesis_block(ctx.chain_params)
    genesis_hash = chain.hash_block(genesis)
    with chain.lock:
        if ctx.blockchain.block_exists(genesis_hash):
            started = time.monotonic()
            index, tip = BlockTreeLoader(ctx.blockchain, genesis_hash).load()
            chain.adopt_tree(index, tip)
            logger.info("[Chain] Loaded chain state: {} blocks (height {}), tip {} in {:.2f} s",
                        len(index), tip.height, tip.hash, time.monotonic() - started)
        else:
            _init_genesis(ctx, chain, genesis, genesis_hash)
        if ctx.utxo_set is not None:
            _reconcile_utxo(chain, ctx.utxo_set)
        tip = chain.tip()
    ctx.metrics.chain_height.set(tip.height)
    ctx.chainstate = chain
    return tip


def _init_genesis(ctx: NodeContext, chain: ChainState, genesis, genesis_hash: Uint256) -> None:
    db = ctx.blockchain
    stored_best = db.read_best_block()
    if stored_best is not None:
        # The C++ would silently write a new genesis and point 'bestblock' at it (chain 4.7).
        raise StorageError(f"block database {db.path} has best block {stored_best} but no "
                           f"{ctx.chain_params.get_network_name()} genesis "
                           f"{genesis_hash}: wrong network or wrong datadir")
    index = BlockIndex.from_header(genesis_hash, genesis.header, None, STATUS_STORED_GENESIS)
    logger.info("[Chain] Activating genesis block at height 0")
    with db.batch(sync=True) as batch:
        batch.write_block(genesis_hash, genesis)
        batch.write_block_index(genesis_hash, index)
        batch.write_best_block(genesis_hash)
    chain.adopt_tree({genesis_hash: index}, index)


def _reconcile_utxo(chain: ChainState, utxo: UTXOSet) -> None:
    """Bring the UTXO set (its own database) to the loaded tip.

    The UTXO set is written before ``bestblock`` (it validates in strict
    mode), and every block it sees is stored first, so after a crash it may
    stand on a block that is on a side branch or not indexed at all: step it
    back to the main chain with the stored blocks, then replay forward.
    Replay is never strict: these blocks were accepted when they arrived.
    """
    db = chain.db
    best = utxo.best_block()
    while best is not None and not _on_main_chain(chain, best.hash):
        block = db.read_block(best.hash)
        if block is None:
            raise StorageError(f"the UTXO set stands on block {best.hash} (height {best.height}), "
                               f"which {db.path} does not hold: the chainstate belongs to "
                               f"another chain; remove it to rebuild")
        logger.warning("[Chain] UTXO set: undoing block {} (height {}) that is not on the "
                       "main chain", best.hash, best.height)
        utxo.disconnect_block(block, best.height, best.hash)
        best = utxo.best_block()
    start = 0 if best is None else best.height + 1
    height = chain.height()
    if start <= height:
        logger.info("[Chain] UTXO set at height {}: replaying {} block(s) to height {}",
                    start - 1, height - start + 1, height)
    for block_height, block_hash in enumerate(chain.main_chain_hashes(start, height - start + 1),
                                              start):
        block = db.read_block(block_hash)
        if block is None:
            raise StorageError(f"main-chain block {block_hash} (height {block_height}) is "
                               f"indexed but missing from {db.path}")
        utxo.connect_block(block, block_height, block_hash, strict=False)


def _on_main_chain(chain: ChainState, block_hash: Uint256) -> bool:
    index = chain.get_index(block_hash)
    return index is not None and chain.is_on_main_chain(index)


def open_chain_state(params: ChainParams, datadir, hasher: RandomXHasher | None = None, *,
                     utxo: bool = False, strict: bool = False, mempool: TxMemPool | None = None,
                     metrics: Metrics = NULL_METRICS) -> NodeContext:
    """A context with a loaded chain state on ``<datadir>/blocks`` (and ``<datadir>/chainstate``).

    For tools, benchmarks and tests; the node program goes through
    :class:`dilithion.node.init.NodeAssembly`, which reports each step.
    :func:`close_chain_state` closes what this opened.
    """
    datadir = Path(datadir)
    ctx = NodeContext(params, datadir, strict=strict,
                      **({"hasher": hasher} if hasher is not None else {}))
    ctx.mempool, ctx.metrics = mempool, metrics
    ctx.blockchain = BlockchainDB(datadir / "blocks")
    try:
        ctx.utxo_set = UTXOSet(datadir / "chainstate") if utxo else None
        load_chain_state(ctx)
    except BaseException:
        close_chain_state(ctx)
        raise
    return ctx


def close_chain_state(ctx: NodeContext) -> None:
    """Close the databases :func:`open_chain_state` opened (C++ ``CChainState::Cleanup``)."""
    if ctx.utxo_set is not None:
        ctx.utxo_set.close()
    ctx.blockchain.close()
