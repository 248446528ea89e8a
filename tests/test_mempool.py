"""The mempool: admission against a real UTXO set, order, conflicts, eviction, expiry, confirmation."""
from __future__ import annotations

import threading

import pytest

from coins_helpers import FEE, RegtestChain, TipHeight, p2pkh, spend
from dilithion.consensus.validation import block_transactions
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair, create_script_pub_key
from dilithion.crypto.sha3 import sha3_256d
from dilithion.node.context import NodeContext
from dilithion.node.mempool import (DEFAULT_EXPIRY_SECONDS, DEFAULT_MAX_MEMPOOL_BYTES, MempoolEntry,
                                    TxMemPool, TxValidationError, accept_to_memory_pool,
                                    mempool_entry_sort_key)
from dilithion.node.utxo_set import UTXOSet
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

NOW = 1_800_000_000
SPK = b"\x76\xa9\x14" + b"\0" * 20 + b"\x88\xac"


@pytest.fixture(scope="module")
def miner() -> KeyPair:
    return KeyPair.from_seed(b"\x11" * 32)


@pytest.fixture
def node(tmp_path, miner):
    """A context with a real UTXO set at height 101 (coinbases 1 and 2 spendable next block)."""
    with UTXOSet(tmp_path / "chainstate") as utxo:
        chain = RegtestChain(utxo, miner)
        chain.grow(101)
        ctx = NodeContext(ChainParams.regtest(), tmp_path, hasher=None, utxo_set=utxo,
                          mempool=TxMemPool(), chainstate=TipHeight(chain))
        ctx.chain = chain
        yield ctx


def pay(ctx, keypair, height=1, fee=FEE, to=None, extra_outputs=()):
    outpoint, coin = ctx.chain.coinbase_coin(height)
    return spend(keypair, [(outpoint, coin)],
                 [(coin.value - fee - sum(v for v, _ in extra_outputs), to or p2pkh(keypair)),
                  *extra_outputs])


def accept(ctx, tx, now=None) -> bytes:
    """``accept_to_memory_pool`` with the context's collaborators."""
    return accept_to_memory_pool(ctx.chainstate, ctx.utxo_set, ctx.mempool, tx, now=now)


def synthetic(i: int, value: int = 1000) -> Transaction:
    """A small unsigned transaction for the pool's own bookkeeping (``add_tx`` validates no UTXOs)."""
    return Transaction(1, [TxIn(OutPoint(i.to_bytes(32, "little"), 0))], [TxOut(value, SPK)])


# -- admission ----------------------------------------------------------------------

def test_accept_valid_spend(node, miner):
    tx = pay(node, miner)
    txid = accept(node, tx, now=NOW)
    pool = node.mempool
    assert txid == tx.get_hash() and pool.exists(txid) and pool.get_tx(txid) == tx
    assert pool.txids() == [txid] and pool.size() == 1
    assert pool.total_bytes() == tx.get_serialized_size()
    entry = pool.get_entry(txid)
    assert (entry.fee, entry.time, entry.height) == (FEE, NOW, 102)
    stats = pool.get_stats()
    assert stats["count"] == 1 and stats["bytes"] == entry.size
    assert stats["min_fee_rate"] == stats["max_fee_rate"] == FEE / entry.size


def test_double_spend_in_mempool_rejected(node, miner):
    accept(node, pay(node, miner), now=NOW)
    rival = pay(node, miner, fee=FEE + 1)
    with pytest.raises(TxValidationError, match="already spent by mempool transaction"):
        accept(node, rival, now=NOW)
    with pytest.raises(TxValidationError, match="already spent by mempool transaction"):
        node.mempool.add_tx(rival, FEE + 1, NOW, 102)  # the pool itself refuses too
    assert node.mempool.size() == 1


def test_same_transaction_twice_rejected(node, miner):
    tx = pay(node, miner)
    accept(node, tx, now=NOW)
    with pytest.raises(TxValidationError, match="Already in mempool"):
        accept(node, tx, now=NOW)
    with pytest.raises(TxValidationError, match="Already in mempool"):
        node.mempool.add_tx(tx, FEE, NOW, 102)


def test_maturity_uses_next_block_height(node, miner):
    """Tip 101: the next block is 102, so coinbase 2 (100 confirmations) is in, coinbase 3 is not."""
    accept(node, pay(node, miner, height=2), now=NOW)
    with pytest.raises(TxValidationError, match="Coinbase output not mature"):
        accept(node, pay(node, miner, height=3), now=NOW)


def test_invalid_spends_rejected(node, miner):
    other = KeyPair.from_seed(b"\x12" * 32)
    tampered = pay(node, miner)
    tampered.vout[0].value -= 1
    missing = Transaction(1, [TxIn(OutPoint(b"\3" * 32, 0))], [TxOut(10**8, p2pkh(miner))])
    cases = {
        "Dilithium signature verification failed": tampered,
        "Public key hash does not match": pay(node, other),
        "Fee too high": pay(node, miner, fee=10_000_001),
        "Fee too low": pay(node, miner, fee=150_000),
        "non-existent UTXO": missing,
        "Coinbase transaction is only valid in a block": block_transactions(node.chain.blocks[7][0])[0],
        "non-standard: version 2": spend(miner, [node.chain.coinbase_coin(1)], [(10**9, p2pkh(miner))],
                                         version=2),
        "dust": pay(node, miner, extra_outputs=[(999, p2pkh(miner))]),
        "not 25-byte": pay(node, miner, to=create_script_pub_key(sha3_256d(miner.public_key))),
        "Transaction has no outputs": Transaction(1, [TxIn(OutPoint(b"\3" * 32, 0))], []),
    }
    for reason, tx in cases.items():
        with pytest.raises(TxValidationError, match=reason):
            accept(node, tx, now=NOW)
    assert node.mempool.size() == 0


def test_missing_components_give_a_reason(tmp_path):
    ctx = NodeContext(ChainParams.regtest(), tmp_path, hasher=None)
    with pytest.raises(TxValidationError, match="unavailable"):
        accept(ctx, synthetic(1))


# -- confirmation -------------------------------------------------------------------

def test_block_removes_confirmed_and_conflicting(node, miner):
    """chain D40 fixed: a pooled spend of an outpoint the block spent is dropped too."""
    pooled = pay(node, miner, height=1)
    unrelated = pay(node, miner, height=2)
    accept(node, pooled, now=NOW)
    accept(node, unrelated, now=NOW)
    rival = pay(node, miner, height=1, fee=FEE + 7)   # mined elsewhere, same input as ``pooled``
    block = node.chain.add_block([(rival, FEE + 7)])
    removed = node.mempool.remove_for_block(block_transactions(block))
    assert removed == [pooled.get_hash()]
    assert node.mempool.txids() == [unrelated.get_hash()]
    assert node.mempool.spender_of(pooled.vin[0].prevout) is None
    confirm = node.chain.add_block([(unrelated, FEE)])
    assert node.mempool.remove_for_block(block_transactions(confirm)) == [unrelated.get_hash()]
    assert node.mempool.size() == 0 and node.mempool.total_bytes() == 0


def test_spent_input_no_longer_accepted_after_block(node, miner):
    tx = pay(node, miner)
    rival = pay(node, miner, fee=FEE + 1)
    node.chain.add_block([(tx, FEE)])
    for spent in (tx, rival):
        with pytest.raises(TxValidationError, match="non-existent UTXO"):
            accept(node, spent, now=NOW)


# -- pool bookkeeping (add_tx directly) -----------------------------------------------

def test_order_fee_rate_then_time_then_txid():
    pool = TxMemPool()
    a, b, c, d = (synthetic(i) for i in range(1, 5))
    pool.add_tx(a, 200_000, NOW + 5, 1)
    pool.add_tx(b, 300_000, NOW + 9, 1)   # best fee rate
    pool.add_tx(c, 200_000, NOW + 1, 1)   # same rate as a, earlier
    pool.add_tx(d, 200_000, NOW + 5, 1)   # same rate and time as a: raw txid decides
    tie = sorted([a, d], key=lambda t: t.get_hash())
    assert pool.get_ordered_txs() == [b, c, *tie]
    assert [e.tx for e in pool.get_ordered_entries()] == pool.get_ordered_txs()
    entries = [MempoolEntry(t, 200_000, NOW, 1) for t in (a, d)]
    assert sorted(entries, key=mempool_entry_sort_key)[0].tx == tie[0]
    stats = pool.get_stats()
    assert stats["max_fee_rate"] == 300_000 / b.get_serialized_size()
    assert stats["min_fee_rate"] == 200_000 / a.get_serialized_size()


def test_add_tx_applies_the_fee_rule():
    pool = TxMemPool()
    with pytest.raises(TxValidationError, match="Below relay min: 99999"):
        pool.add_tx(synthetic(1), 99_999, NOW, 1)
    with pytest.raises(TxValidationError, match="Fee too high"):
        pool.add_tx(synthetic(1), 10_000_001, NOW, 1)
    with pytest.raises(TxValidationError, match="Transaction is null"):
        pool.add_tx(Transaction(), 200_000, NOW, 1)
    assert pool.size() == 0


def test_eviction_by_fee_rate():
    size = synthetic(1).get_serialized_size()
    usage = MempoolEntry(synthetic(1), 150_000, NOW, 1).usage
    pool = TxMemPool(max_bytes=2 * usage + usage // 2)
    low, mid, high, lower = synthetic(1), synthetic(2), synthetic(3), synthetic(4)
    pool.add_tx(low, 150_000, NOW, 1)
    pool.add_tx(mid, 200_000, NOW, 1)
    pool.add_tx(high, 300_000, NOW, 1)               # full: the lowest fee rate goes
    assert pool.get_ordered_txs() == [high, mid]
    assert pool.spender_of(low.vin[0].prevout) is None
    with pytest.raises(TxValidationError, match="Mempool full"):
        pool.add_tx(lower, 120_000, NOW, 1)          # ranks below everything pooled
    with pytest.raises(TxValidationError, match="Mempool full"):
        pool.add_tx(synthetic(5), 200_000, NOW + 1, 1)  # equal rate, later: ranks below mid
    assert pool.get_ordered_txs() == [high, mid] and pool.total_bytes() == 2 * size
    big = Transaction(1, [TxIn(OutPoint(b"\x09" * 32, 0), b"x" * (3 * usage))], [TxOut(1000, SPK)])
    with pytest.raises(TxValidationError, match="Mempool full"):
        pool.add_tx(big, 10_000_000, NOW, 1)          # larger than the whole pool
    assert TxMemPool().max_bytes == DEFAULT_MAX_MEMPOOL_BYTES == 314_572_800


def test_expiry():
    pool = TxMemPool(expiry_seconds=3600)
    old, fresh = synthetic(1), synthetic(2)
    pool.add_tx(old, 200_000, NOW, 1)
    pool.add_tx(fresh, 200_000, NOW + 1800, 1)
    assert pool.expire(NOW + 3600) == []             # exactly at the limit stays
    assert pool.expire(NOW + 3601) == [old.get_hash()]
    assert pool.txids() == [fresh.get_hash()]
    pool.add_tx(old, 200_000, NOW + 3601, 1)          # its input is free again
    assert pool.size() == 2
    assert TxMemPool().expiry_seconds == DEFAULT_EXPIRY_SECONDS == 14 * 86400


def test_remove_and_clear():
    pool = TxMemPool()
    a, b = synthetic(1), synthetic(2)
    pool.add_tx(a, 200_000, NOW, 1)
    pool.add_tx(b, 200_000, NOW, 1)
    assert pool.remove_for_block([a]) == [a.get_hash()] and pool.remove_for_block([a]) == []
    assert pool.txids() == [b.get_hash()]
    pool.clear()
    assert pool.size() == 0 and pool.total_bytes() == 0 and pool.txids() == []
    assert pool.get_stats() == {"count": 0, "bytes": 0, "min_fee_rate": 0.0, "max_fee_rate": 0.0}
    pool.add_tx(a, 200_000, NOW, 1)                   # outpoints were released
    assert pool.remove_for_block([b]) == [] and pool.size() == 1


def test_concurrent_conflicting_adds_admit_one():
    """Eight threads race to pool eight spends of one outpoint: exactly one wins."""
    pool = TxMemPool()
    rivals = [Transaction(1, [TxIn(OutPoint(b"\7" * 32, 0))], [TxOut(1000 + i, SPK)]) for i in range(8)]
    wins, errors = [], []
    barrier = threading.Barrier(len(rivals))

    def add(tx):
        barrier.wait()
        try:
            pool.add_tx(tx, 200_000, NOW, 1)
            wins.append(tx)
        except TxValidationError as exc:
            errors.append(exc.reason)

    threads = [threading.Thread(target=add, args=(tx,)) for tx in rivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(errors) == 7 and pool.txids() == [wins[0].get_hash()]


def test_reorg_drops_entries_whose_inputs_left_the_chain(node, miner):
    """Disconnecting blocks can remove an input (created in the block) or make a coinbase immature."""
    funding = pay(node, miner, height=1)
    node.chain.add_block([(funding, FEE)])                     # height 102
    child_coin = node.utxo_set.get(OutPoint(funding.get_hash(), 0))
    child = spend(miner, [(OutPoint(funding.get_hash(), 0), child_coin)],
                  [(child_coin.value - FEE, p2pkh(miner))])
    mature = pay(node, miner, height=3)                        # 100 confirmations at block 103
    accept(node, child, now=NOW)
    accept(node, mature, now=NOW)
    assert node.mempool.remove_unspendable(node.utxo_set, node.chain.height + 1) == []
    node.chain.disconnect()                                    # back to 101
    dropped = node.mempool.remove_unspendable(node.utxo_set, node.chain.height + 1)
    assert set(dropped) == {child.get_hash(), mature.get_hash()} and node.mempool.size() == 0


def test_pool_limit_bounds_memory_not_serialized_bytes():
    """Transactions of 2,000 outputs cost about five times their size in Python
    objects; a 4 MiB pool filled with them stays within 4 MiB of memory (with the
    bytes-based limit it held about 22 MiB)."""
    import tracemalloc
    limit = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        pool = TxMemPool(max_bytes=limit)
        base = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            tx = Transaction(1, [TxIn(OutPoint(i.to_bytes(32, "little"), 0))],
                             [TxOut(1000 + n, bytes([n % 256]) * 25) for n in range(2000)])
            try:
                pool.add_tx(tx, 2_000_000 + i, NOW, 1)     # each pays more: evicts the last
            except TxValidationError:
                pass
            del tx
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert pool.size() >= 5 and pool.usage() <= limit
    print(f"\npool of {pool.size()} entries: usage {pool.usage()}, Python memory {held}")
    assert held <= limit * 1.1, held
