"""MiningController against a real LevelDB chain state and real RandomX.

Regtest (``0x207fffff``, about every second hash a block) is used where blocks
should be found.  Where the miner must keep grinding without finding one, its
hasher is a :class:`NeverSolves` wrapper: it really hashes, but reports a digest
no target accepts, so "no block found" is a property of the test, not luck
(testnet odds alone, ~1 block per 11,000 hashes, failed now and then).
"""
from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from loguru import logger

from dilithion.consensus.chain import BlockStatus
from dilithion.consensus.validation import block_transactions
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair, extract_pub_key_hash
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.controller import MiningController
from dilithion.mining.template import mine_block, search_nonce
from dilithion.node.context import NodeContext
from dilithion.node.chain_loader import close_chain_state, open_chain_state
from dilithion.node.init import connect_tip_listeners, miner_for
from dilithion.node.mempool import TxMemPool, accept_to_memory_pool
from dilithion.node.metrics import NodeMetrics
from dilithion.node.wallet_key import MINING_KEY_FILE, MiningKeyError, load_or_create_mining_key
from dilithion.primitives.transaction import OutPoint

from coins_helpers import FEE, p2pkh, spend
from framework import MINER, InProcessNode, regtest_chain, wait_until


def make_ctx(tmp_path, params: ChainParams, with_utxo: bool = False) -> NodeContext:
    ctx = open_chain_state(params, tmp_path, RandomXHasher.for_key(), utxo=with_utxo)
    ctx.mempool = TxMemPool() if with_utxo else None
    ctx.metrics = NodeMetrics(process_metrics=False)
    connect_tip_listeners(ctx.chainstate, mempool=ctx.mempool, coins=ctx.utxo_set,
                          metrics=ctx.metrics)
    return ctx


def close_ctx(ctx: NodeContext) -> None:
    if ctx.miner is not None:
        ctx.miner.stop()
    close_chain_state(ctx)


@pytest.fixture
def regtest_ctx(tmp_path):
    ctx = make_ctx(tmp_path, ChainParams.regtest())
    yield ctx
    close_ctx(ctx)


@pytest.fixture
def testnet_ctx(tmp_path):
    ctx = make_ctx(tmp_path, ChainParams.testnet())
    yield ctx
    close_ctx(ctx)


@pytest.fixture
def log_lines():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def miner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("miner-")]


def assert_main_chain_pays(ctx, pkh: bytes, from_height: int = 1) -> None:
    cs = ctx.chainstate
    for height in range(from_height, cs.height() + 1):
        block = cs.get_block(cs.main_chain_hash_at(height))
        coinbase = block_transactions(block)[0]
        assert coinbase.vin[0].script_sig == f"Block {height} mined by Dilithion".encode()
        assert extract_pub_key_hash(coinbase.vout[0].script_pubkey) == pkh
        assert block.header.hash_prev_block == cs.main_chain_hash_at(height - 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_mines_regtest_blocks_into_the_chain(regtest_ctx, threads, log_lines):
    ctx = regtest_ctx
    key = KeyPair.from_seed(bytes([7]) * 32)
    miner = ctx.miner = miner_for(ctx, threads, pub_key_hash=key.pub_key_hash())
    assert miner.thread_count() == threads and not miner.is_mining()
    assert miner.start()
    assert miner.is_mining()
    assert wait_until(lambda: ctx.chainstate.height() >= 4, timeout=60)
    miner.stop()
    assert not miner.is_mining() and miner_threads() == []
    height = ctx.chainstate.height()
    assert miner.blocks_found >= height >= 4
    assert all(n > 0 for n in miner.worker_hashes())          # every worker hashed
    assert miner.total_hashes() == sum(miner.worker_hashes()) >= miner.blocks_found
    assert_main_chain_pays(ctx, key.pub_key_hash())
    # No sibling blocks: a find on a replaced tip is discarded, not stored (cli 6.2 #16).
    assert all(len(ctx.chainstate.blocks_at_height(h)) == 1 for h in range(1, height + 1))
    assert ctx.metrics.registry.get_sample_value("chain_height") == height
    # The C++ operator lines (cli 5.1) for a found block that became the tip.
    assert "[OK] BLOCK FOUND!" in log_lines
    assert any(line.startswith("Block hash: ") and len(line) == 12 + 64 for line in log_lines)
    assert "Difficulty: 0x207fffff" in log_lines
    assert "[Blockchain] Block saved to database" in log_lines
    assert "[Blockchain] Block became new chain tip at height 1" in log_lines
    time.sleep(0.5)
    assert ctx.chainstate.height() == height                  # stopped means stopped


#: Above every target (``hash_less_than`` is strict and the largest target is < 2**256).
UNSOLVABLE_DIGEST = b"\xff" * 32


class NeverSolves:
    """The miner's hasher for tests that must not find a block: the real RandomX
    hash is computed (same work, same pace) but the digest reported is
    :data:`UNSOLVABLE_DIGEST`.  Only the miner uses it: the chain state keeps the
    real hasher it was opened with, so blocks from elsewhere still validate."""

    def __init__(self, real: RandomXHasher) -> None:
        self.real = real

    def hash(self, data: bytes) -> bytes:
        self.real.hash(data)
        return UNSOLVABLE_DIGEST


class RecordingHasher(NeverSolves):
    """:class:`NeverSolves`, noting which thread hashed which nonce (header bytes 76..80)."""

    def __init__(self, real: RandomXHasher) -> None:
        super().__init__(real)
        self.seen: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    def hash(self, data: bytes) -> bytes:
        with self.lock:
            self.seen.setdefault(threading.current_thread().name, []).append(
                int.from_bytes(data[76:80], "little"))
        return super().hash(data)


def test_nonce_partition_between_workers(testnet_ctx, hasher):
    """Worker i of N tries exactly i, i+N, i+2N, ... (no find can interrupt it)."""
    ctx = testnet_ctx
    ctx.hasher = recorder = RecordingHasher(hasher)
    miner = ctx.miner = miner_for(ctx, 2, pub_key_hash=MINER.pub_key_hash())
    miner.template_refresh_seconds = 3600     # one template for the whole test, however slow
    miner.start()
    assert wait_until(lambda: all(len(recorder.seen.get(f"miner-{i}", [])) >= 5 for i in (0, 1)),
                      timeout=30)
    miner.stop()
    assert miner.blocks_found == 0 and ctx.chainstate.height() == 0
    for i in (0, 1):
        nonces = recorder.seen[f"miner-{i}"]
        assert nonces == list(range(i, i + 2 * len(nonces), 2)), (i, nonces[:10])
    assert sorted(miner.worker_hashes()) == sorted(len(v) for v in recorder.seen.values())


def test_restarts_on_tip_change_without_finding(testnet_ctx, cpp_chain, hasher):
    """A block from elsewhere moves the tip: the workers switch to a template on it."""
    ctx = testnet_ctx
    ctx.hasher = NeverSolves(hasher)          # the miner finds nothing; the chain validates for real
    miner = ctx.miner = miner_for(ctx, 2, pub_key_hash=MINER.pub_key_hash())
    genesis = ctx.chainstate.tip()
    miner.start()
    assert wait_until(lambda: miner.current_template() is not None, timeout=10)
    assert miner.current_template().block.header.hash_prev_block == genesis.hash
    assert miner.current_template().height == 1
    # C++ testnet block 1 from the vectors arrives "from a peer".
    from dilithion.primitives.block import Block
    block1 = Block.deserialize(bytes.fromhex(cpp_chain["blocks"][1]["block_message_payload_hex"]))
    result = ctx.chainstate.process_new_block(block1)
    assert result.status is BlockStatus.TIP
    assert wait_until(lambda: miner.current_template().height == 2, timeout=5)
    template = miner.current_template()
    assert template.block.header.hash_prev_block == result.hash
    hashes = miner.total_hashes()
    assert wait_until(lambda: miner.total_hashes() > hashes + 5, timeout=10)   # still grinding
    assert miner.blocks_found == 0 and ctx.chainstate.tip().hash == result.hash
    assert wait_until(lambda: miner.get_hash_rate() > 0, timeout=10)
    miner.stop()
    assert miner.get_hash_rate() == 0 and miner_threads() == []


def test_template_refresh_updates_ntime(testnet_ctx, hasher):
    ctx = testnet_ctx
    ctx.hasher = NeverSolves(hasher)          # no find may change the height meanwhile
    miner = ctx.miner = miner_for(ctx, 1, pub_key_hash=MINER.pub_key_hash())
    miner.template_refresh_seconds = 0.3
    miner.start()
    assert wait_until(lambda: miner.current_template() is not None, timeout=10)
    first = miner.current_template()
    # nTime has whole seconds: the wait is for the wall clock to tick (liveness guard)
    assert wait_until(lambda: miner.current_template().block.header.time > first.block.header.time,
                      timeout=10)
    assert miner.current_template().height == first.height
    miner.stop()


def test_start_stop_semantics_and_hasher_survives(regtest_ctx, hasher):
    ctx = regtest_ctx
    miner = ctx.miner = miner_for(ctx, 2, pub_key_hash=MINER.pub_key_hash())
    miner.stop()                                   # stop before start: no-op
    assert miner.start() and not miner.start()    # second start refused
    # concurrent stops and starts from several threads (cli 6.2 #21) must not crash
    errors = []

    def churn():
        try:
            for _ in range(3):
                miner.stop()
                miner.start()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and all(not t.is_alive() for t in threads)
    assert miner.is_mining() and len(miner_threads()) == 3      # 2 workers + rate monitor
    # stop() joins every thread (each finishes its current hash): when it returns none is
    # left.  The 10 s join is a liveness guard; how long a stop takes is a benchmark figure.
    stopper = threading.Thread(target=miner.stop)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive() and miner_threads() == [] and not miner.is_mining()
    # After stop the node can still hash and accept blocks (chain D41, cli 6.2 #14).
    tip = ctx.chainstate.tip()
    block, h = mine_block(ctx.hasher, tip.hash, tip.height + 1, MINER.pub_key_hash(),
                          ctx.chain_params)
    assert ctx.chainstate.process_new_block(block).status is BlockStatus.TIP
    assert ctx.chainstate.tip().hash == h


def test_includes_mempool_transactions_with_their_fees(tmp_path):
    chain = regtest_chain(101)
    ctx = make_ctx(tmp_path, ChainParams.regtest(), with_utxo=True)
    try:
        for block, h in chain[1:]:
            ctx.chainstate.process_new_block(block, h)
        assert ctx.chainstate.height() == 101
        coinbase1 = block_transactions(chain[1][0])[0]
        outpoint = OutPoint(coinbase1.get_hash(), 0)
        coin = ctx.utxo_set.get(outpoint)
        tx = spend(MINER, [(outpoint, coin)], [(coin.value - FEE, p2pkh(MINER))])
        txid = accept_to_memory_pool(ctx.chainstate, ctx.utxo_set, ctx.mempool, tx)
        assert ctx.mempool.size() == 1
        key = KeyPair.from_seed(bytes([9]) * 32)
        miner = ctx.miner = miner_for(ctx, 1, pub_key_hash=key.pub_key_hash())
        miner.start()
        assert wait_until(lambda: ctx.chainstate.height() >= 102, timeout=60)
        miner.stop()
        block102 = ctx.chainstate.get_block(ctx.chainstate.main_chain_hash_at(102))
        txs = block_transactions(block102)
        assert [t.get_hash() for t in txs[1:]] == [txid]
        assert txs[0].vout[0].value == ctx.chain_params.initial_reward + FEE
        assert ctx.mempool.size() == 0
        assert ctx.utxo_set.get(outpoint) is None
    finally:
        close_ctx(ctx)


def test_the_miner_hears_of_a_new_tip_after_the_mempool_dropped_what_it_confirmed(
        tmp_path, monkeypatch):
    """The order of the tip listeners the node assembly registers (mempool before
    miner, ``node/init.py``): when a block confirms a pooled transaction, the
    miner's workers are told to rebuild their template only once the mempool no
    longer holds it, so no rebuilt template spends it a second time (a block
    the chain would refuse).  The listeners run in turn on the thread that
    connected the block, so what the miner's listener sees is deterministic."""
    heard: list[tuple[int, bool]] = []
    watched: dict[str, bytes] = {}
    on_tip_changed = MiningController.on_tip_changed

    def observed(miner, new_tip, connected, disconnected):
        if "txid" in watched:
            heard.append((new_tip.height, node.ctx.mempool.exists(watched["txid"])))
        on_tip_changed(miner, new_tip, connected, disconnected)

    monkeypatch.setattr(MiningController, "on_tip_changed", observed)
    node = InProcessNode(tmp_path, "n", rpc=False).start()
    try:
        node.load(regtest_chain(101))
        ctx = node.ctx
        coinbase1 = block_transactions(regtest_chain(1)[1][0])[0]
        outpoint = OutPoint(coinbase1.get_hash(), 0)
        coin = ctx.utxo_set.get(outpoint)
        tx = spend(MINER, [(outpoint, coin)], [(coin.value - FEE, p2pkh(MINER))])
        watched["txid"] = accept_to_memory_pool(ctx.chainstate, ctx.utxo_set, ctx.mempool, tx)
        block, h = search_nonce(ctx.hasher, ctx.miner.build_template())   # holds the tx
        assert [t.get_hash() for t in block_transactions(block)[1:]] == [watched["txid"]]
        assert ctx.chainstate.process_new_block(block, h).status is BlockStatus.TIP
        assert heard == [(102, False)]
        assert ctx.mempool.size() == 0
    finally:
        node.close()


def test_mining_key_is_created_once_with_mode_0600_and_reused(tmp_path):
    key = load_or_create_mining_key(tmp_path)
    path = tmp_path / MINING_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == key.seed() and len(key.seed()) == 32
    again = load_or_create_mining_key(tmp_path)
    assert again.pub_key_hash() == key.pub_key_hash() and again.address() == key.address()
    assert not (tmp_path / (MINING_KEY_FILE + ".tmp")).exists()


def test_controller_pays_the_datadir_key_across_restarts(tmp_path):
    params = ChainParams.regtest()
    ctx = make_ctx(tmp_path, params)
    try:
        ctx.miner = miner_for(ctx, 1)              # key created in the datadir
        ctx.miner.start()
        assert wait_until(lambda: ctx.chainstate.height() >= 2, timeout=60)
        ctx.miner.stop()
    finally:
        close_ctx(ctx)
    key = load_or_create_mining_key(tmp_path)
    ctx = make_ctx(tmp_path, params)                     # "restart": same datadir
    try:
        first_height = ctx.chainstate.height()
        assert first_height >= 2
        ctx.miner = miner_for(ctx, 1)
        assert ctx.miner.pub_key_hash == key.pub_key_hash()
        ctx.miner.start()
        assert wait_until(lambda: ctx.chainstate.height() > first_height, timeout=60)
        ctx.miner.stop()
        assert_main_chain_pays(ctx, key.pub_key_hash())
    finally:
        close_ctx(ctx)


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33])
def test_wrong_size_key_file_is_refused_not_replaced(tmp_path, content):
    path = tmp_path / MINING_KEY_FILE
    path.write_bytes(content)
    with pytest.raises(MiningKeyError, match="expected 32"):
        load_or_create_mining_key(tmp_path)
    assert path.read_bytes() == content


def test_unreadable_key_path_gives_mining_key_error(tmp_path):
    (tmp_path / MINING_KEY_FILE).mkdir()               # a directory where the key should be
    with pytest.raises(MiningKeyError, match="cannot read mining key"):
        load_or_create_mining_key(tmp_path)


def test_unwritable_datadir_gives_mining_key_error():
    # /proc refuses new directories even to root
    with pytest.raises(MiningKeyError, match="cannot write mining key"):
        load_or_create_mining_key("/proc/dilithion-no-such-dir")


def test_a_miner_needs_a_chain_state(tmp_path):
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    with pytest.raises(RuntimeError, match="chainstate"):
        miner_for(ctx, 1, pub_key_hash=bytes(20))
