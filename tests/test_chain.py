"""ChainState: the C++ node's block decisions, the strict option, orphans, reorganisations and the UTXO set.

Every chain here is real: regtest blocks mined with RandomX by the template
code, stored in real LevelDB directories.
"""
from __future__ import annotations

import threading

import pytest
from loguru import logger

from dilithion.consensus.chain import MAX_REORG_DEPTH, BlockStatus, ChainState
from dilithion.consensus.orphan_pool import OrphanPool
from dilithion.consensus.pow import check_proof_of_work, compact_to_big, get_block_proof
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.sha3 import sha3_256
from dilithion.mining.template import BlockTemplate, create_coinbase, mine_block, mine_chain, search_nonce
from dilithion.consensus.block_index import BLOCK_FAILED, STATUS_STORED_GENESIS
from dilithion.node.blockchain_storage import StorageError
from dilithion.node.chain_loader import close_chain_state, open_chain_state
from dilithion.node.init import connect_tip_listeners
from dilithion.node.genesis import create_genesis_block
from dilithion.node.mempool import TxMemPool
from dilithion.node.metrics import NULL_METRICS, NodeMetrics
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

PARAMS = ChainParams.regtest()
PKH_A = bytes(20)
PKH_B = b"\x0b" * 20
FEE = 500_000


def block_time(height: int, branch: int = 0) -> int:
    return PARAMS.genesis_time + 240 * height + branch


def mine_on(hasher, parent_hash: Uint256, parent_height: int, count: int, pkh: bytes,
            branch: int = 0) -> list[tuple[Block, Uint256]]:
    return mine_chain(hasher, parent_hash, parent_height, count, pkh, PARAMS,
                      time_of=lambda height: block_time(height, branch))


def solve(hasher, block: Block) -> tuple[Block, Uint256]:
    """Grind the nonce of a hand-made block (any header fields) until it meets its own nBits."""
    found = search_nonce(hasher, BlockTemplate(block, compact_to_big(block.header.bits), 0))
    assert found is not None
    return found


@pytest.fixture(scope="module")
def genesis_hash(hasher) -> Uint256:
    return create_genesis_block(PARAMS).get_hash(hasher)


@pytest.fixture(scope="module")
def main50(hasher, genesis_hash):
    """Fifty regtest blocks on the genesis, mined once for the module (~2.5 s)."""
    return mine_on(hasher, genesis_hash, 0, 50, PKH_A)


@pytest.fixture(scope="module")
def branch_b(hasher, main50):
    """Six blocks forking from height 10 of ``main50`` (heights 11..16), another miner."""
    return mine_on(hasher, main50[9][1], 10, 6, PKH_B, branch=1)


@pytest.fixture
def make_chain(tmp_path, hasher):
    contexts = []

    def make(name="node", strict=False, utxo=False, mempool=None, metrics=NULL_METRICS) -> ChainState:
        ctx = open_chain_state(PARAMS, tmp_path / name, hasher, utxo=utxo, strict=strict)
        connect_tip_listeners(ctx.chainstate, mempool=mempool, coins=ctx.utxo_set,
                              metrics=metrics)
        contexts.append(ctx)
        return ctx.chainstate

    yield make
    for ctx in contexts:
        close_chain_state(ctx)


def feed(chain: ChainState, blocks, expect: BlockStatus | None = None):
    results = [chain.process_new_block(b, h) for b, h in blocks]
    if expect is not None:
        assert [r.status for r in results] == [expect] * len(results), [r.reason for r in results]
    return results


@pytest.fixture
def log_lines():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)


# ----------------------------------------------------------------------------- basics

def test_fresh_database_gets_the_genesis(make_chain, genesis_hash):
    chain = make_chain()
    tip = chain.tip()
    assert (chain.height(), tip.hash, tip.prev) == (0, genesis_hash, None)
    assert tip.chain_work == get_block_proof(PARAMS.genesis_bits)
    db = chain.db
    assert db.read_best_block() == genesis_hash
    assert db.read_block_index(genesis_hash).status == STATUS_STORED_GENESIS == 12
    assert db.read_block(genesis_hash) == create_genesis_block(PARAMS)


def test_blocks_extend_the_tip(make_chain, main50, log_lines):
    metrics = NodeMetrics()
    chain = make_chain(metrics=metrics)
    calls = []
    chain.add_tip_listener(lambda tip, conn, disc: calls.append((tip.height, conn, disc)))
    for n, (block, h) in enumerate(main50[:5], start=1):
        result = chain.process_new_block(block)              # hash computed by the chain
        assert (result.status, result.hash, result.index.height) == (BlockStatus.TIP, h, n)
        assert result.connected == [block] and result.disconnected == []
    assert chain.height() == 5 and chain.tip().hash == main50[4][1]
    assert chain.main_chain_hash_at(3) == main50[2][1] and chain.main_chain_hash_at(6) is None
    assert chain.main_chain_hash_at(-1) is None
    assert chain.main_chain_hashes(2, 2) == [main50[1][1], main50[2][1]]
    assert chain.main_chain_hashes(4, 10) == [main50[3][1], main50[4][1]]
    assert chain.get_block(main50[0][1]) == main50[0][0]
    assert chain.get_index(main50[1][1]).prev is chain.get_index(main50[0][1])
    assert chain.get_index(main50[1][1]).chain_work == 3 * get_block_proof(PARAMS.genesis_bits)
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5]
    assert metrics.registry.get_sample_value("blocks_connected_total") == 5
    assert metrics.registry.get_sample_value("chain_height") == 5
    assert "[Chain] Block extends current tip: height 5" in log_lines
    assert chain.db.read_best_block() == main50[4][1]


def test_duplicate_block(make_chain, main50):
    chain = make_chain()
    calls = []
    chain.add_tip_listener(lambda *a: calls.append(a))
    feed(chain, main50[:2], BlockStatus.TIP)
    again = chain.process_new_block(*main50[1])
    assert again.status is BlockStatus.DUPLICATE and again.index is chain.tip()
    assert len(calls) == 2 and again.connected == []


def test_proof_of_work_is_the_blocks_own_bits_in_range(make_chain, main50, hasher):
    chain = make_chain()
    block, _ = main50[0]
    out_of_range = Block(BlockHeader(**{**vars(block.header), "bits": 0x1C00FFFF}), block.vtx)
    result = chain.process_new_block(out_of_range)
    assert result.status is BlockStatus.INVALID and "high-hash" in result.reason
    header = BlockHeader(**vars(block.header))
    while check_proof_of_work(header.get_hash(hasher), header.bits, PARAMS):
        header.nonce += 1
    missed = Block(header, block.vtx)
    result = chain.process_new_block(missed)
    assert result.status is BlockStatus.INVALID
    assert chain.get_index(result.hash) is None and not chain.db.block_exists(result.hash)
    assert chain.height() == 0


def test_hash_block_is_cached_by_header_bytes(main50, hasher):
    class CountingHasher:
        def __init__(self):
            self.calls = 0

        def hash(self, data):
            self.calls += 1
            return hasher.hash(data)

    counting = CountingHasher()
    chain = ChainState(PARAMS, None, counting)
    block, h = main50[0]
    assert chain.hash_block(block) == h and chain.hash_block(block) == h
    assert counting.calls == 1


def test_listener_errors_do_not_break_the_chain(make_chain, main50):
    chain = make_chain()
    chain.add_tip_listener(lambda *a: 1 / 0)
    seen = []
    chain.add_tip_listener(lambda tip, *a: seen.append(tip.height))
    feed(chain, main50[:2], BlockStatus.TIP)
    assert seen == [1, 2]


# ----------------------------------------------------------------------------- forks

def test_tie_keeps_first_seen_then_heavier_branch_reorganises(make_chain, main50, branch_b, log_lines):
    chain = make_chain()
    events = []
    chain.add_tip_listener(lambda tip, conn, disc: events.append((tip.hash, conn, disc)))
    feed(chain, main50[:13], BlockStatus.TIP)                       # prefix 1..10 + A 11..13
    a_blocks = [b for b, _ in main50[10:13]]
    feed(chain, branch_b[:3], BlockStatus.SIDE)                     # B 11..13: the tie keeps A
    assert chain.tip().hash == main50[12][1]
    assert "[Chain] New chain has less or equal work - keeping current chain" in log_lines
    events.clear()
    result = chain.process_new_block(*branch_b[3])                  # B14: more work
    assert result.status is BlockStatus.REORG
    assert result.disconnected == a_blocks[::-1]
    assert result.connected == [b for b, _ in branch_b[:4]]
    assert events == [(branch_b[3][1], result.connected, result.disconnected)]
    assert chain.height() == 14 and chain.main_chain_hash_at(11) == branch_b[0][1]
    a11 = chain.get_index(main50[10][1])
    assert a11 is not None and not chain.is_on_main_chain(a11)
    assert chain.get_block(main50[10][1]) == main50[10][0]             # side blocks stay stored
    assert chain.blocks_at_height(11) == sorted([main50[10][1], branch_b[0][1]])
    assert chain.db.read_best_block() == branch_b[3][1]
    assert "[Chain] ⚠️  NEW CHAIN HAS MORE WORK - REORGANIZING" in log_lines
    # A catches up and overtakes again
    feed(chain, main50[13:14], BlockStatus.SIDE)
    back = chain.process_new_block(*main50[14])
    assert back.status is BlockStatus.REORG and chain.tip().hash == main50[14][1]
    assert back.disconnected == [b for b, _ in branch_b[:4]][::-1]
    assert back.connected == [b for b, _ in main50[10:15]]


def test_reorg_depth_limit(make_chain, main50, branch_b):
    assert MAX_REORG_DEPTH == 100
    assert ChainParams.mainnet().max_reorg_depth == ChainParams.testnet().max_reorg_depth == 100
    chain = make_chain()
    assert chain.max_reorg_depth is None                             # regtest: no limit
    chain.max_reorg_depth = 2
    feed(chain, main50[:13], BlockStatus.TIP)
    feed(chain, branch_b[:3], BlockStatus.SIDE)
    refused = chain.process_new_block(*branch_b[3])                 # would disconnect 3 > 2
    assert refused.status is BlockStatus.SIDE and "refused" in refused.reason
    assert chain.tip().hash == main50[12][1]
    assert chain.process_new_block(*branch_b[4]).status is BlockStatus.SIDE   # the branch stays refused

    other = make_chain("limit3")
    other.max_reorg_depth = 3                                        # depth == limit is allowed
    feed(other, main50[:13] + branch_b[:3])
    assert other.process_new_block(*branch_b[3]).status is BlockStatus.REORG


def test_failure_part_way_in_default_mode_keeps_the_old_tip(make_chain, main50, branch_b):
    chain = make_chain()
    feed(chain, main50[:13] + branch_b[:3])
    chain.db.erase_block(branch_b[1][1])                # B12's data is gone
    before = chain.main_chain_hashes(0, 20)
    with pytest.raises(StorageError, match=str(branch_b[1][1])):
        chain.process_new_block(*branch_b[3])
    assert chain.main_chain_hashes(0, 20) == before
    assert chain.db.read_best_block() == main50[12][1]
    assert chain.process_new_block(*main50[13]).status is BlockStatus.TIP


# ----------------------------------------------------------------------------- orphans

def test_chain_fed_in_reverse_connects_through_the_orphan_pool(make_chain, main50):
    chain = make_chain()
    events = []
    chain.add_tip_listener(lambda tip, conn, disc: events.append((tip.height, len(conn))))
    for block, h in reversed(main50[1:]):
        result = chain.process_new_block(block, h)
        assert result.status is BlockStatus.ORPHAN
        assert result.missing_parent == block.header.hash_prev_block
        assert not chain.db.block_exists(h)             # not stored as if connected
    assert chain.height() == 0 and len(chain.orphans) == 49
    again = chain.process_new_block(*main50[30])
    assert again.status is BlockStatus.DUPLICATE and again.missing_parent == main50[0][1]
    result = chain.process_new_block(*main50[0])
    assert result.status is BlockStatus.TIP and result.index.height == 1
    assert result.connected == [b for b, _ in main50]
    assert chain.height() == 50 and chain.tip().hash == main50[-1][1]
    assert len(chain.orphans) == 0 and events == [(50, 50)]
    assert all(chain.db.block_exists(h) for _, h in main50)


def test_missing_parent_names_the_first_block_nobody_has(make_chain, main50):
    chain = make_chain()
    feed(chain, [main50[4], main50[3]], BlockStatus.ORPHAN)
    result = chain.process_new_block(*main50[5])          # height 6: 5 and 4 wait in the pool
    assert result.status is BlockStatus.ORPHAN and result.missing_parent == main50[2][1]


def test_orphan_pool_is_bounded_oldest_first(main50):
    pool = OrphanPool(max_blocks=3)
    for block, h in main50[:4]:
        pool.add(h, block)
    assert len(pool) == 3 and main50[0][1] not in pool and main50[3][1] in pool
    assert pool.pop_children(main50[1][1]) == [(main50[2][1], main50[2][0])]
    assert main50[2][1] not in pool and len(pool) == 2
    by_bytes = OrphanPool(max_blocks=100, max_bytes=2 * len(main50[0][0].vtx) + 5)
    for block, h in main50[:4]:
        by_bytes.add(h, block)
    assert len(by_bytes) == 2 and main50[3][1] in by_bytes


# ----------------------------------------------------------------------------- strict option

def _variant(hasher, main50, what: str) -> tuple[Block, Uint256]:
    """Block 11 on ``main50[:10]`` that breaks one intended rule and nothing else."""
    parent_hash = main50[9][1]
    coinbase = create_coinbase(11, PKH_B, params=PARAMS).serialize()
    header = BlockHeader(1, parent_hash, Uint256(sha3_256(coinbase)), block_time(11, 7),
                         PARAMS.genesis_bits, 0)
    if what == "bits":
        header.bits = 0x201FFFFF                     # inside the allowed range, not the expected bits
    elif what == "time":
        header.time = block_time(4)                  # before the median time past (height 5)
    elif what == "merkle":
        header.hash_merkle_root = Uint256(sha3_256(b"something else"))
    return solve(hasher, Block(header, coinbase))


@pytest.mark.parametrize("what, reason", [("bits", "bad-diffbits"), ("time", "time-invalid"),
                                          ("merkle", "bad-txnmrklroot")])
def test_default_accepts_what_strict_rejects(make_chain, main50, hasher, what, reason):
    block, h = _variant(hasher, main50, what)
    default = make_chain("default")
    strict = make_chain("strict", strict=True)
    feed(default, main50[:10], BlockStatus.TIP)
    feed(strict, main50[:10], BlockStatus.TIP)                       # honest blocks pass strict
    assert default.process_new_block(block, h).status is BlockStatus.TIP
    result = strict.process_new_block(block, h)
    assert result.status is BlockStatus.INVALID and result.reason.startswith(reason)
    assert strict.height() == 10 and not strict.db.block_exists(h)
    child, child_hash = mine_block(hasher, h, 12, PKH_B, PARAMS, now=block_time(12, 7))
    assert default.process_new_block(child, child_hash).status is BlockStatus.TIP
    if what == "merkle":
        # A mutated body (Core's BLOCK_MUTATED): another body could match the header, so the
        # hash is not remembered as failed and the block's child simply waits for it.
        assert strict.get_index(h) is None
        assert strict.process_new_block(block, h).reason.startswith(reason)
        assert strict.process_new_block(child, child_hash).status is BlockStatus.ORPHAN
        return
    assert strict.get_index(h).status & BLOCK_FAILED
    assert strict.process_new_block(block, h).reason == "duplicate-invalid"
    rejected = strict.process_new_block(child, child_hash)
    assert rejected.status is BlockStatus.INVALID and rejected.reason.startswith("bad-prevblk")


def _overpaying(hasher, parent_hash, height, branch=3) -> tuple[Block, Uint256]:
    """A block whose coinbase claims one ion more than the subsidy (only the UTXO check sees it)."""
    coinbase = create_coinbase(height, PKH_B, fees=1, params=PARAMS).serialize()
    header = BlockHeader(1, parent_hash, Uint256(sha3_256(coinbase)), block_time(height, branch),
                         PARAMS.genesis_bits, 0)
    return solve(hasher, Block(header, coinbase))


def test_strict_runs_full_block_validation_in_the_utxo_set(make_chain, main50, hasher):
    block, h = _overpaying(hasher, main50[9][1], 11)
    default = make_chain("default", utxo=True)
    strict = make_chain("strict", strict=True, utxo=True)
    feed(default, main50[:10], BlockStatus.TIP)
    feed(strict, main50[:10], BlockStatus.TIP)
    assert default.process_new_block(block, h).status is BlockStatus.TIP
    coins_before = list(strict.utxo_set.coins())
    result = strict.process_new_block(block, h)
    assert result.status is BlockStatus.INVALID and "exceeds" in result.reason
    assert list(strict.utxo_set.coins()) == coins_before
    assert strict.tip().hash == main50[9][1] and not strict.db.block_exists(h)


def test_strict_failure_part_way_through_a_reorg_restores_the_old_tip(make_chain, main50, branch_b, hasher):
    chain = make_chain(strict=True, utxo=True)
    feed(chain, main50[:13], BlockStatus.TIP)
    b11 = branch_b[0]
    b12 = _overpaying(hasher, b11[1], 12)
    b13 = mine_on(hasher, b12[1], 12, 3, PKH_B, branch=3)              # heights 13..15
    feed(chain, [b11, b12, b13[0]], BlockStatus.SIDE)
    utxo = chain.utxo_set
    coins_before, best_before = list(utxo.coins()), utxo.best_block()
    result = chain.process_new_block(*b13[1])                           # B14: reorg, B12 fails
    assert result.status is BlockStatus.INVALID and "exceeds" in result.reason
    assert chain.tip().hash == main50[12][1] and chain.height() == 13
    assert chain.main_chain_hashes(11, 3) == [h for _, h in main50[10:13]]
    assert list(utxo.coins()) == coins_before and utxo.best_block() == best_before
    assert chain.get_index(b12[1]).is_failed() and chain.get_index(b13[1][1]).is_failed()
    assert not chain.get_index(b11[1]).is_failed()
    assert chain.db.read_best_block() == main50[12][1]
    assert chain.process_new_block(*b13[2]).reason.startswith("bad-prevblk")
    assert chain.process_new_block(*main50[13]).status is BlockStatus.TIP


# ----------------------------------------------------------------------------- UTXO set and mempool

def _spend_of_block1_coinbase(main50) -> Transaction:
    coinbase = Transaction.from_bytes(main50[0][0].vtx)
    value = coinbase.vout[0].value
    return Transaction(1, [TxIn(OutPoint(coinbase.get_hash(), 0), b"\x01" * 8)],
                       [TxOut(value - FEE, coinbase.vout[0].script_pubkey)], 0)


def test_reorg_leaves_the_utxo_set_equal_to_the_winner_built_from_scratch(make_chain, main50, branch_b,
                                                                         hasher):
    spend = _spend_of_block1_coinbase(main50)
    a14 = mine_block(hasher, main50[12][1], 14, PKH_A, PARAMS, now=block_time(14),
                     transactions=[(spend, FEE)])
    mempool = TxMemPool()
    mempool.add_tx(spend, FEE, block_time(14), 13)
    chain = make_chain("reorg", utxo=True, mempool=mempool)
    utxo = chain.utxo_set
    feed(chain, main50[:13] + [a14], BlockStatus.TIP)
    spent = OutPoint(spend.vin[0].prevout.hash, 0)
    assert utxo.get(spent) is None and not mempool.exists(spend.get_hash())   # mined, so removed
    feed(chain, branch_b[:4], BlockStatus.SIDE)
    result = chain.process_new_block(*branch_b[4])
    assert result.status is BlockStatus.REORG and len(result.disconnected) == 4
    assert utxo.get(spent) is not None                                 # the spend was undone

    scratch = make_chain("scratch", utxo=True)
    feed(scratch, main50[:10] + branch_b[:5], BlockStatus.TIP)
    assert list(utxo.coins()) == list(scratch.utxo_set.coins())
    assert utxo.stats() == scratch.utxo_set.stats()
    assert utxo.verify_consistency()


def test_reorg_drops_pooled_transactions_whose_inputs_left_the_chain(make_chain, main50, branch_b,
                                                                    hasher):
    spend = _spend_of_block1_coinbase(main50)
    a14 = mine_block(hasher, main50[12][1], 14, PKH_A, PARAMS, now=block_time(14),
                     transactions=[(spend, FEE)])
    child = Transaction(1, [TxIn(OutPoint(spend.get_hash(), 0), b"\x02" * 8)],
                        [TxOut(spend.vout[0].value - FEE, spend.vout[0].script_pubkey)], 0)
    mempool = TxMemPool()
    chain = make_chain("reorg-mempool", utxo=True, mempool=mempool)
    feed(chain, main50[:13] + [a14], BlockStatus.TIP)
    mempool.add_tx(child, FEE, block_time(15), 14)      # spends an output of the block at height 14
    feed(chain, branch_b[:4], BlockStatus.SIDE)
    assert mempool.exists(child.get_hash())             # side blocks change nothing
    assert chain.process_new_block(*branch_b[4]).status is BlockStatus.REORG
    assert not mempool.exists(child.get_hash())         # its input went away with height 14


# ----------------------------------------------------------------------------- threads

def test_concurrent_submission_connects_each_block_once(make_chain, main50):
    chain = make_chain()
    connected = []
    chain.add_tip_listener(lambda tip, conn, disc: connected.extend(conn))
    errors = []

    def submit(blocks):
        try:
            feed(chain, blocks)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(main50[:30],)),
               threading.Thread(target=submit, args=(main50[:30][::-1],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert chain.height() == 30
    assert sorted(b.header.serialize() for b in connected) == sorted(b.header.serialize()
                                                                    for b, _ in main50[:30])
