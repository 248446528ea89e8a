"""The UTXO set on a real LevelDB: framings, strict block validation, exact undo, persistence."""
from __future__ import annotations

import tempfile
from pathlib import Path

import plyvel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coins_helpers import FEE, RegtestChain, db_snapshot, fake_hash, p2pkh, spend
from dilithion.consensus.pow import calculate_block_subsidy
from dilithion.consensus.tx_validation import Coin
from dilithion.consensus.validation import (BlockValidationError, Framing, block_transactions,
                                            check_block, parse_block_transactions)
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair
from dilithion.crypto.sha3 import sha3_256
from dilithion.consensus.validation import build_merkle_root
from dilithion.mining.template import create_coinbase
from dilithion.net.serialize import SerializationError, ser_compact_size
from dilithion.node.genesis import create_genesis_block
from dilithion.node.utxo_set import (UTXOSet, UTXOStateError, UTXOStorageError, decode_coin,
                                     encode_coin)
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut


@pytest.fixture(scope="module")
def miner() -> KeyPair:
    return KeyPair.from_seed(b"\x42" * 32)


@pytest.fixture
def utxo(tmp_path):
    with UTXOSet(tmp_path / "chainstate") as u:
        yield u


@pytest.fixture
def chain(utxo, miner):
    c = RegtestChain(utxo, miner)
    c.grow(101)
    return c


def counted_block(chain: RegtestChain, txs: list[Transaction], merkle: bytes | None = None) -> Block:
    """A library-framed block on the chain tip (count prefix, merkle over txids)."""
    vtx = ser_compact_size(len(txs)) + b"".join(tx.serialize() for tx in txs)
    root = build_merkle_root([tx.get_hash() for tx in txs]) if merkle is None else merkle
    header = BlockHeader(1, chain.tip_hash, Uint256(root), chain.params.genesis_time + chain.height + 1,
                         chain.params.genesis_bits, 0)
    return Block(header, vtx)


def coinbase(chain: RegtestChain, fees: int = 0, extra: int = 0) -> Transaction:
    tx = create_coinbase(chain.height + 1, chain.miner.pub_key_hash(), fees, chain.params)
    tx.vout[0].value += extra
    return tx


# -- vtx framings -------------------------------------------------------------------

def test_framings(chain, miner):
    genesis = chain.blocks[0][0]
    assert parse_block_transactions(genesis).framing is Framing.GENESIS
    assert block_transactions(genesis) == []
    bare = chain.blocks[1][0]
    parsed = parse_block_transactions(bare)
    assert parsed.framing is Framing.BARE and parsed.txs[0].serialize() == bare.vtx
    spend_tx = spend(miner, [chain.coinbase_coin(1)], [(10**9, p2pkh(miner))])
    block = chain.make_block([(spend_tx, 1)])
    parsed = parse_block_transactions(block)
    assert parsed.framing is Framing.COUNTED
    assert [tx.get_hash() for tx in parsed.txs][1] == spend_tx.get_hash()


@pytest.mark.parametrize("vtx, message", [
    (b"", "Block has no transactions"),
    (b"\x00", "transaction count"),
    (b"\x02garbage", "neither one transaction"),
    (b"\xff" + b"\x01" * 20, "Unsupported transaction count encoding"),
])
def test_unparseable_vtx(vtx, message):
    block = Block(BlockHeader(1, Uint256(b"\1" * 32)), vtx)
    with pytest.raises(SerializationError, match=message):
        block_transactions(block)


def test_counted_form_rejects_trailing_bytes(chain):
    cb = coinbase(chain)
    with pytest.raises(SerializationError):
        block_transactions(Block(BlockHeader(1, chain.tip_hash), b"\x01" + cb.serialize() + b"\x00\x00"))
    with pytest.raises(SerializationError):  # count says two, one present
        block_transactions(Block(BlockHeader(1, chain.tip_hash), b"\x02" + cb.serialize()))


def test_same_header_valid_for_both_framings(chain):
    """chain D3: vtx = coinbase and vtx = 0x01 || coinbase share merkle root and block hash."""
    bare = chain.make_block()
    counted = Block(bare.header, b"\x01" + bare.vtx)
    assert parse_block_transactions(counted).framing is Framing.COUNTED
    assert check_block(bare, chain.height + 1, chain.utxo) == 0
    assert check_block(counted, chain.height + 1, chain.utxo) == 0


def test_cpp_testnet_chain_connects_strictly(tmp_path, cpp_chain):
    """The C++ node's own blocks (genesis text, bare coinbases) pass the strict rules."""
    with UTXOSet(tmp_path / "chainstate") as utxo:
        for entry in cpp_chain["blocks"]:
            block = Block.deserialize(bytes.fromhex(entry["block_message_payload_hex"]))
            utxo.connect_block(block, entry["height"], Uint256.from_hex(entry["hash"]), strict=True)
        stats = utxo.stats()
        last = cpp_chain["blocks"][-1]
        assert (stats.count, stats.total_amount) == (6, 6 * 50 * 10**8)
        assert stats.height == last["height"] and stats.best_hash.get_hex() == last["hash"]
        assert all(coin.is_coinbase and coin.value == 50 * 10**8 for _, coin in utxo.coins())
        assert utxo.verify_consistency()


# -- record formats -------------------------------------------------------------------

def test_record_layout(chain):
    """Coins use the C++ value layout under their own prefix; see docs/TRANSACTIONS.md."""
    outpoint, coin = chain.coinbase_coin(1)
    records = dict(db_snapshot(chain.utxo))
    key = b"c" + outpoint.hash + b"\0\0\0\0"
    assert records[key] == (bytes.fromhex("01000000" "01" "00f2052a01000000" "19000000")
                            + p2pkh(chain.miner))
    assert decode_coin(records[key]) == coin == Coin(50 * 10**8, p2pkh(chain.miner), 1, True)
    assert records[b"V"] == b"\x01"
    assert records[b"B"] == chain.tip_hash + (101).to_bytes(4, "little")
    assert records[b"s"] == (101).to_bytes(8, "little") + (101 * 50 * 10**8).to_bytes(16, "little")
    assert b"U" + chain.tip_hash in records
    kinds = {k[:1] for k in records}
    assert kinds == {b"c", b"U", b"s", b"B", b"V"}
    assert all(len(k) == 37 for k in records if k[:1] == b"c")
    assert all(len(k) == 33 for k in records if k[:1] == b"U")


@pytest.mark.parametrize("data", [b"", b"\0" * 16, encode_coin(Coin(1, b"ab", 1, False)) + b"x",
                                  encode_coin(Coin(1, b"ab", 1, False))[:-1]])
def test_decode_coin_rejects_bad_lengths(data):
    with pytest.raises(SerializationError):
        decode_coin(data)


# -- connect / disconnect -------------------------------------------------------------

def test_spend_connect_and_disconnect_exact(chain, miner):
    before = db_snapshot(chain.utxo)
    outpoint, coin = chain.coinbase_coin(1)
    tx = spend(miner, [(outpoint, coin)], [(coin.value - FEE - 10**8, p2pkh(miner)), (10**8, b"\x76")])
    block = chain.add_block([(tx, FEE)])
    assert chain.utxo.get(outpoint) is None
    assert chain.utxo.get(OutPoint(tx.get_hash(), 1)) == Coin(10**8, b"\x76", 102, False)
    cb = block_transactions(block)[0]
    assert chain.utxo.get(OutPoint(cb.get_hash(), 0)).value == calculate_block_subsidy(102) + FEE
    stats = chain.utxo.stats()
    assert stats.count == 101 - 1 + 2 + 1 and stats.height == 102
    assert stats.total_amount == 102 * 50 * 10**8  # the fee moved to the coinbase
    assert chain.utxo.verify_consistency()
    chain.disconnect()
    assert db_snapshot(chain.utxo) == before


def test_chain_unwinds_to_empty(utxo, miner):
    empty = db_snapshot(utxo)
    assert dict(empty) == {b"V": b"\x01", b"s": bytes(24)}
    c = RegtestChain(utxo, miner)
    c.grow(5)
    while c.blocks:
        c.disconnect()
    assert db_snapshot(utxo) == empty and utxo.best_block() is None


def test_strict_allows_spending_an_output_of_the_same_block(chain, miner):
    """Deviation from chain D31: later transactions see earlier ones of the block."""
    outpoint, coin = chain.coinbase_coin(1)
    first = spend(miner, [(outpoint, coin)], [(coin.value - FEE, p2pkh(miner))])
    second = spend(miner, [(OutPoint(first.get_hash(), 0), Coin(coin.value - FEE, p2pkh(miner), 102, False))],
                   [(coin.value - 2 * FEE, p2pkh(miner))])
    before = db_snapshot(chain.utxo)
    chain.add_block([(first, FEE), (second, FEE)])
    assert chain.utxo.get(OutPoint(first.get_hash(), 0)) is None
    assert chain.utxo.get(OutPoint(second.get_hash(), 0)).value == coin.value - 2 * FEE
    chain.disconnect()
    assert db_snapshot(chain.utxo) == before  # chain D26: nothing resurrected


def _strict_cases(chain: RegtestChain, miner: KeyPair, other: KeyPair):
    op1, c1 = chain.coinbase_coin(1)
    op2, c2 = chain.coinbase_coin(3)  # 99 confirmations at height 102
    good = spend(miner, [(op1, c1)], [(c1.value - FEE, p2pkh(miner))])
    double = spend(miner, [(op1, c1)], [(c1.value - 2 * FEE, p2pkh(miner))])
    bad_sig = spend(miner, [(op1, c1)], [(c1.value - FEE, p2pkh(miner))])
    bad_sig.vout[0].value -= 1
    immature = spend(miner, [(op2, c2)], [(c2.value - FEE, p2pkh(miner))])
    wrong_key = spend(other, [(op1, c1)], [(c1.value - FEE, p2pkh(other))])
    fee_high = spend(miner, [(op1, c1)], [(c1.value - 10_000_001, p2pkh(miner))])
    bare = chain.make_block()
    return {
        "Merkle root mismatch": counted_block(chain, [coinbase(chain, FEE), good], merkle=b"\1" * 32),
        "bare merkle": Block(BlockHeader(1, chain.tip_hash, Uint256(b"\2" * 32)), bare.vtx),
        "First transaction is not coinbase": counted_block(chain, [good]),
        "Multiple coinbase transactions": counted_block(chain, [coinbase(chain), coinbase(chain, extra=-1)]),
        "Duplicate transaction": counted_block(chain, [coinbase(chain, 2 * FEE), good, good]),
        "Double spend in block": counted_block(chain, [coinbase(chain, 2 * FEE), good, double]),
        "exceeds subsidy \\+ fees": counted_block(chain, [coinbase(chain, FEE, extra=1), good]),
        "Dilithium signature verification failed": counted_block(chain, [coinbase(chain, FEE + 1), bad_sig]),
        "not mature": counted_block(chain, [coinbase(chain, FEE), immature]),
        "Public key hash does not match": counted_block(chain, [coinbase(chain, FEE), wrong_key]),
        "Fee too high": counted_block(chain, [coinbase(chain, 10_000_001), fee_high]),
        "Invalid coinbase: .*value must be positive": counted_block(chain, [coinbase(chain, extra=-50 * 10**8)]),
        "Failed to deserialize transactions": Block(BlockHeader(1, chain.tip_hash, Uint256(sha3_256(b"zz"))), b"zz"),
        "Block has no transactions": Block(BlockHeader(1, chain.tip_hash), b""),
        "Invalid block version": Block(BlockHeader(0, chain.tip_hash, bare.header.hash_merkle_root), bare.vtx),
        "Block size exceeds maximum": Block(BlockHeader(1, chain.tip_hash), b"\1" * 1_000_001),
    }


def test_strict_rejections_write_nothing(chain, miner):
    other = KeyPair.from_seed(b"\x43" * 32)
    cases = _strict_cases(chain, miner, other)
    before = db_snapshot(chain.utxo)
    for reason, block in cases.items():
        expected = "Merkle root mismatch" if reason == "bare merkle" else reason
        with pytest.raises(BlockValidationError, match=expected):
            chain.utxo.connect_block(block, chain.height + 1, fake_hash(block), strict=True)
        assert db_snapshot(chain.utxo) == before, reason


def test_default_mode_accepts_what_strict_rejects(chain, miner):
    """The C++ node accepts any vtx: default mode never raises and still undoes exactly."""
    other = KeyPair.from_seed(b"\x43" * 32)
    for reason, block in _strict_cases(chain, miner, other).items():
        before = db_snapshot(chain.utxo)
        chain.connect(block, strict=False)
        assert chain.utxo.verify_consistency(), reason
        chain.disconnect()
        assert db_snapshot(chain.utxo) == before, reason


def test_default_mode_unparseable_vtx_changes_no_coins(chain):
    coins = list(chain.utxo.coins())
    block = Block(BlockHeader(1, chain.tip_hash, Uint256.ZERO), b"\x02not a transaction")
    block_hash = chain.connect(block, strict=False)
    assert list(chain.utxo.coins()) == coins
    assert chain.utxo.best_block().hash == block_hash and chain.utxo.has_undo(block_hash)


def test_default_mode_skips_missing_and_double_spends(chain, miner):
    """chain D25: the second spend of an outpoint inside one block is skipped, not applied twice."""
    op1, c1 = chain.coinbase_coin(1)
    missing = Transaction(1, [TxIn(OutPoint(b"\5" * 32, 0))], [TxOut(7, b"m")])
    first = Transaction(1, [TxIn(op1)], [TxOut(1, b"a")])
    again = Transaction(1, [TxIn(op1)], [TxOut(2, b"b")])
    before = db_snapshot(chain.utxo)
    chain.connect(counted_block(chain, [coinbase(chain), missing, first, again]), strict=False)
    assert chain.utxo.get(op1) is None
    assert chain.utxo.get(OutPoint(missing.get_hash(), 0)) == Coin(7, b"m", 102, False)
    assert chain.utxo.get(OutPoint(again.get_hash(), 0)) == Coin(2, b"b", 102, False)
    stats = chain.utxo.stats()
    assert stats.count == 101 - 1 + 4 and chain.utxo.verify_consistency()
    chain.disconnect()
    assert db_snapshot(chain.utxo) == before


def test_repeated_txid_overwrite_is_undone(chain):
    """A transaction identical to an unspent one overwrites its outputs; undo brings the old ones back."""
    tx = Transaction(1, [TxIn(OutPoint(b"\6" * 32, 0))], [TxOut(5, b"x")])
    chain.connect(counted_block(chain, [coinbase(chain), tx]), strict=False)
    before = db_snapshot(chain.utxo)
    chain.connect(counted_block(chain, [coinbase(chain), tx]), strict=False)
    assert chain.utxo.get(OutPoint(tx.get_hash(), 0)).height == 103
    chain.disconnect()
    assert db_snapshot(chain.utxo) == before
    assert chain.utxo.get(OutPoint(tx.get_hash(), 0)).height == 102


def test_stats_survive_huge_values_in_default_mode(chain):
    """Non-strict blocks can carry outputs of any 64-bit value; the total is kept exactly."""
    tx = Transaction(1, [TxIn(OutPoint(b"\6" * 32, 0))], [TxOut(2**64 - 1, b"x"), TxOut(2**64 - 1, b"y")])
    chain.connect(counted_block(chain, [coinbase(chain), tx]), strict=False)
    assert chain.utxo.stats().total_amount == 102 * 50 * 10**8 + 2 * (2**64 - 1)
    assert chain.utxo.verify_consistency()


# -- caller errors, persistence ---------------------------------------------------------

def test_state_errors(chain):
    block = chain.make_block()
    stray = Block(BlockHeader(1, Uint256(b"\x09" * 32), block.header.hash_merkle_root), block.vtx)
    with pytest.raises(UTXOStateError, match="does not extend"):
        chain.utxo.connect_block(stray, chain.height + 1, fake_hash(stray))
    with pytest.raises(UTXOStateError, match="is not the UTXO set's best block"):
        chain.utxo.disconnect_block(chain.blocks[-2][0], chain.height - 1, chain.blocks[-2][1])
    tip_block, tip_hash = chain.blocks[-1]
    wrong_parent = Block(BlockHeader(1, Uint256(b"\x09" * 32)), tip_block.vtx)
    with pytest.raises(UTXOStateError, match="undo record restores"):
        chain.utxo.disconnect_block(wrong_parent, chain.height, tip_hash)
    # connecting the tip's parent-sibling with the tip's hash: already connected
    twin = Block(BlockHeader(1, chain.tip_hash), b"")
    chain.connect(twin, strict=False)
    with pytest.raises(UTXOStateError):
        chain.utxo.connect_block(twin, chain.height + 1, chain.tip_hash)


def test_reopen_keeps_everything(tmp_path, miner):
    path = tmp_path / "chainstate"
    with UTXOSet(path) as utxo:
        c = RegtestChain(utxo, miner)
        c.grow(3)
        snapshot, best = db_snapshot(utxo), utxo.best_block()
    with UTXOSet(path) as utxo:
        assert db_snapshot(utxo) == snapshot and utxo.best_block() == best
        assert best.height == 3 and best.hash == c.tip_hash
        c.utxo = utxo
        c.disconnect()
        assert utxo.best_block().height == 2


def test_second_open_is_refused(utxo):
    with pytest.raises(UTXOStorageError, match="locked"):
        UTXOSet(utxo.path)


def test_foreign_database_is_refused(tmp_path):
    """A C++ CUTXOSet directory (keys 'u'...) or any unmarked database is not silently reused."""
    db = plyvel.DB(str(tmp_path / "cpp"), create_if_missing=True)
    db.put(b"utxo_stats", b"\0" * 20)
    db.close()
    with pytest.raises(UTXOStorageError, match="without a format marker"):
        UTXOSet(tmp_path / "cpp")
    db = plyvel.DB(str(tmp_path / "future"), create_if_missing=True)
    db.put(b"V", b"\x02")
    db.close()
    with pytest.raises(UTXOStorageError, match="format 02"):
        UTXOSet(tmp_path / "future")


# -- property: connect then disconnect is the identity ------------------------------------

_BASE_OUTPOINTS = 6


def _base_set(path: Path) -> tuple[UTXOSet, list[OutPoint], Uint256]:
    utxo = UTXOSet(path)
    genesis = create_genesis_block(ChainParams.regtest())
    utxo.connect_block(genesis, 0, fake_hash(genesis))
    seed = Transaction(1, [TxIn(OutPoint(), b"seed")],
                       [TxOut(10**8 * (n + 1), bytes([n])) for n in range(_BASE_OUTPOINTS)])
    block = Block(BlockHeader(1, fake_hash(genesis)), seed.serialize())
    utxo.connect_block(block, 1, fake_hash(block))
    return utxo, [OutPoint(seed.get_hash(), n) for n in range(_BASE_OUTPOINTS)], fake_hash(block)


@st.composite
def random_block_body(draw, base: list[OutPoint]) -> bytes:
    txs: list[Transaction] = []
    for _ in range(draw(st.integers(1, 5))):
        created = [OutPoint(t.get_hash(), n) for t in txs for n in range(len(t.vout))]
        spendable = st.sampled_from(base + created) if created else st.sampled_from(base)
        missing = st.builds(OutPoint, st.binary(min_size=32, max_size=32), st.integers(0, 3))
        vin = [TxIn(op) for op in draw(st.lists(st.one_of(spendable, missing), max_size=3))]
        if draw(st.booleans()) and txs:
            txs.append(txs[-1])  # repeated transaction (same txid)
            continue
        vout = draw(st.lists(st.builds(TxOut, st.integers(0, 2**64 - 1), st.binary(max_size=3)),
                             min_size=1, max_size=3))
        txs.append(Transaction(1, vin, vout, draw(st.integers(0, 3))))
    framing = draw(st.sampled_from(["counted", "bare", "garbage"]))
    if framing == "bare":
        return txs[0].serialize()
    if framing == "garbage":
        return draw(st.binary(max_size=40))
    return ser_compact_size(len(txs)) + b"".join(tx.serialize() for tx in txs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_connect_then_disconnect_restores_database_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        utxo, base, tip = _base_set(Path(tmp) / "chainstate")
        try:
            snapshots, blocks = [], []
            for height in range(2, 2 + data.draw(st.integers(1, 3))):
                snapshots.append(db_snapshot(utxo))
                body = data.draw(random_block_body(base))
                block = Block(BlockHeader(1, tip, Uint256.ZERO, height, 0, 0), body)
                tip = fake_hash(block)
                utxo.connect_block(block, height, tip)
                assert utxo.verify_consistency()
                blocks.append((block, height, tip))
                base = base + [op for op, _ in utxo.coins() if op not in base][:4]
            for (block, height, block_hash), snapshot in zip(reversed(blocks), reversed(snapshots)):
                utxo.disconnect_block(block, height, block_hash)
                assert db_snapshot(utxo) == snapshot
        finally:
            utxo.close()


def test_a_corrupt_coin_record_is_a_storage_error_naming_the_outpoint(tmp_path, miner):
    """Damage in our own database must not look like bad input from a peer (a ValueError)."""
    path = tmp_path / "chainstate"
    with UTXOSet(path) as u:
        c = RegtestChain(u, miner)
        c.grow(1)
        coinbase_txid = block_transactions(c.blocks[-1][0])[0].get_hash()
    outpoint = OutPoint(coinbase_txid, 0)
    db = plyvel.DB(str(path))
    try:
        keys = [k for k, _ in db.iterator() if coinbase_txid in k]
        assert len(keys) == 1
        db.put(keys[0], b"\x01\x02")                        # truncated coin record
    finally:
        db.close()
    with UTXOSet(path) as u:
        with pytest.raises(UTXOStorageError, match=f"corrupt coin record for {coinbase_txid[::-1].hex()}:0"):
            u.get(outpoint)
