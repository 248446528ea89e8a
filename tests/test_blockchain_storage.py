"""The blocks database: C++ byte formats, atomic batches, and every failure as one clear StorageError."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import plyvel
import pytest

from dilithion.consensus.chain import BlockStatus
from dilithion.consensus.pow import check_proof_of_work
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.sha3 import sha3_256
from dilithion.mining.template import create_coinbase, mine_block
from dilithion.consensus.block_index import STATUS_STORED_BLOCK, STATUS_STORED_GENESIS
from dilithion.node.blockchain_storage import (BEST_BLOCK_KEY, BlockchainDB, IndexRecord, StorageError,
                                               block_key, decode_block_record, decode_index_record,
                                               encode_block_record, encode_index_record, index_key)
from dilithion.node.chain_loader import load_chain_state
from dilithion.node.context import NodeContext
from dilithion.node.genesis import create_genesis_block
from dilithion.primitives.block import Block, BlockHeader, Uint256

GENESIS_HEX = "924bdb80469e1185814407147bc763a62425cc400bc902ce37d73ffbc3524475"
BLOCK1_HEX = "00005c33d931b61d8e66fadeb9fe2e8340ff7eccfcbb0bed7c9f24df84eb8af3"

# chain.md 4.9, verbatim (spaces removed).
GENESIS_BLOCK_RECORD = (
    "01000000a9000000"
    "01000000" + "00" * 32 +
    "0e84be70e43d0f03321e7b3e38e241737ddb26dc671cf8cd2c9c750da52b0a08"
    "80b41d670000061ff238e90455000000"
    "44696c697468696f6e20546573746e65742047656e65736973202d2054657374696e6720"
    "706f73742d7175616e74756d2063727970746f63757272656e6379206265666f7265206d"
    "61696e6e6574206c61756e6368"
    "4a310000")
GENESIS_INDEX_RECORD = (
    "010000005c000000"
    "000000000c00000080b41d670000061ff238e9040100000000000000"
    + GENESIS_HEX.encode().hex() + "5d140000")
BLOCK1_COINBASE = (
    "0100000001" + "00" * 32 + "ffffffff1a426c6f636b2031206d696e65642062792044696c697468696f6e"
    "ffffffff0100f2052a010000001976a914000102030405060708090a0b0c0d0e0f1011121388ac00000000")
BLOCK1_RECORD = (
    "01000000c3000000"
    "01000000754452c3fb3fd737ce02c90b40cc2524a663c77b1407448185119e4680db4b92"
    "713280815830c5f25a2634a2cb400102280b88d5838a7f8a24ad6dade36772f2"
    "70b51d670000061f120600006f000000" + BLOCK1_COINBASE + "65340000")
BLOCK1_INDEX_RECORD = (
    "010000005c000000"
    "01000000080000007" "0b51d670000061f120600000100000000000000"
    + BLOCK1_HEX.encode().hex() + "25150000")


class _Fields:
    """The scalar fields an index record stores, without a chain around them."""

    def __init__(self, height, status, header):
        self.height, self.status = height, status
        self.time, self.bits, self.nonce, self.version = header.time, header.bits, header.nonce, header.version


def block1() -> Block:
    testnet = ChainParams.testnet()
    coinbase = create_coinbase(1, bytes(range(20)), params=testnet).serialize()
    assert coinbase.hex() == BLOCK1_COINBASE
    header = BlockHeader(1, Uint256.from_hex(GENESIS_HEX), Uint256(sha3_256(coinbase)),
                         1730000240, 0x1F060000, 1554)
    return Block(header, coinbase)


# ----------------------------------------------------------------------------- formats

def test_genesis_records_match_cpp_reference_bytes():
    genesis = create_genesis_block(ChainParams.testnet())
    gh = Uint256.from_hex(GENESIS_HEX)
    assert block_key(gh) == b"b" + GENESIS_HEX.encode()
    assert index_key(gh) == b"i" + GENESIS_HEX.encode()
    assert encode_block_record(genesis).hex() == GENESIS_BLOCK_RECORD
    assert encode_index_record(gh, _Fields(0, STATUS_STORED_GENESIS, genesis.header)).hex() == GENESIS_INDEX_RECORD
    assert decode_block_record(bytes.fromhex(GENESIS_BLOCK_RECORD)) == genesis


def test_height1_records_match_cpp_reference_bytes(hasher):
    block = block1()
    assert block.get_hash(hasher).get_hex() == BLOCK1_HEX
    assert encode_block_record(block).hex() == BLOCK1_RECORD
    h = Uint256.from_hex(BLOCK1_HEX)
    assert encode_index_record(h, _Fields(1, STATUS_STORED_BLOCK, block.header)).hex() == BLOCK1_INDEX_RECORD
    assert decode_index_record(bytes.fromhex(BLOCK1_INDEX_RECORD)) == IndexRecord(
        h, 1, 8, 1730000240, 0x1F060000, 1554, 1, 0)


def test_cpp_datadir_records_reencode_byte_for_byte(tmp_path, vectors_dir, cpp_chain):
    shutil.unpack_archive(vectors_dir / "cpp-testnet-datadir.tar.gz", tmp_path)
    with BlockchainDB(tmp_path / "blocks", create_if_missing=False) as db:
        raw = dict(db._db.iterator())
        hashes = [Uint256.from_hex(b["hash"]) for b in cpp_chain["blocks"]]
        assert len(raw) == 2 * len(hashes) + 1
        for h in hashes:
            block = db.read_block(h)
            record = db.read_block_index(h)
            assert encode_block_record(block) == raw[block_key(h)]
            assert encode_index_record(h, record) == raw[index_key(h)]
            assert record.status == (STATUS_STORED_GENESIS if record.height == 0 else STATUS_STORED_BLOCK)
        assert db.read_best_block() == hashes[-1]
        assert raw[BEST_BLOCK_KEY] == hashes[-1].get_hex().encode()


def test_round_trip_and_missing_records(tmp_path):
    db = BlockchainDB(tmp_path / "deep" / "er" / "blocks")       # parents are created
    block = block1()
    h = Uint256.from_hex(BLOCK1_HEX)
    assert db.read_block(h) is None and db.read_block_index(h) is None
    assert db.read_best_block() is None and not db.block_exists(h)
    with db.batch(sync=True) as batch:
        batch.write_block(h, block)
        batch.write_block_index(h, _Fields(1, 8, block.header))
        batch.write_best_block(h)
    assert db.read_block(h) == block and db.block_exists(h)
    assert db.read_block_index(h).height == 1
    assert db.read_best_block() == h
    assert [x for x, _ in db.iter_blocks()] == [h]            # 'bestblock' is not a block key
    db.erase_block(h)
    assert not db.block_exists(h)
    db.close()


def test_failed_batch_writes_nothing(tmp_path):
    db = BlockchainDB(tmp_path / "blocks")
    h = Uint256.from_hex(BLOCK1_HEX)
    with pytest.raises(RuntimeError):
        with db.batch() as batch:
            batch.write_block(h, block1())
            batch.write_best_block(h)
            raise RuntimeError("interrupted")
    assert not db.block_exists(h) and db.read_best_block() is None
    db.close()


# ----------------------------------------------------------------------------- corruption

def _corrupt(value: bytes, how: str) -> bytes:
    if how == "checksum":
        return value[:-1] + bytes([value[-1] ^ 1])
    if how == "data-byte":
        return value[:20] + bytes([value[20] ^ 0x40]) + value[21:]
    if how == "version":
        return b"\x02" + value[1:]
    if how == "length":
        return value[:4] + (int.from_bytes(value[4:8], "little") + 1).to_bytes(4, "little") + value[8:]
    if how == "truncated":
        return value[:-5]
    if how == "short":
        return value[:7]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["checksum", "data-byte", "version", "length", "truncated", "short"])
@pytest.mark.parametrize("kind", ["block", "index"])
def test_corrupt_record_raises_naming_the_key(tmp_path, how, kind):
    h = Uint256.from_hex(BLOCK1_HEX)
    key = block_key(h) if kind == "block" else index_key(h)
    good = bytes.fromhex(BLOCK1_RECORD if kind == "block" else BLOCK1_INDEX_RECORD)
    raw = plyvel.DB(str(tmp_path), create_if_missing=True)
    raw.put(key, _corrupt(good, how))
    raw.close()
    with BlockchainDB(tmp_path) as db:
        with pytest.raises(StorageError, match=str(key)[2:40]):
            db.read_block(h) if kind == "block" else db.read_block_index(h)
        with pytest.raises(StorageError, match=str(key)[2:40]):
            list(db.iter_blocks() if kind == "block" else db.iter_block_indexes())
        # nothing was repaired or overwritten behind our back
        assert db._db.get(key) == _corrupt(good, how)


def test_block_record_with_inconsistent_vtx_length(tmp_path):
    data = bytes.fromhex(BLOCK1_RECORD)[8:-4]
    bad = data[:80] + (len(data) - 84 + 3).to_bytes(4, "little") + data[84:]
    value = (1).to_bytes(4, "little") + len(bad).to_bytes(4, "little") + bad + (sum(bad) & 0xFFFFFFFF).to_bytes(4, "little")
    with pytest.raises(StorageError, match="vtx length"):
        decode_block_record(value, b"bX")


def test_index_record_whose_hash_differs_from_its_key(tmp_path):
    h = Uint256.from_hex(BLOCK1_HEX)
    other = Uint256.from_hex(GENESIS_HEX)
    raw = plyvel.DB(str(tmp_path), create_if_missing=True)
    raw.put(index_key(other), bytes.fromhex(BLOCK1_INDEX_RECORD))
    raw.close()
    with BlockchainDB(tmp_path) as db:
        with pytest.raises(StorageError, match=f"i{GENESIS_HEX}.*holds hash {h}"):
            db.read_block_index(other)
        with pytest.raises(StorageError, match="holds hash"):
            list(db.iter_block_indexes())


@pytest.mark.parametrize("value", [b"xyz", b"Z" * 64, GENESIS_HEX.upper().encode()])
def test_bad_bestblock_text(tmp_path, value):
    raw = plyvel.DB(str(tmp_path), create_if_missing=True)
    raw.put(BEST_BLOCK_KEY, value)
    raw.close()
    with BlockchainDB(tmp_path) as db:
        with pytest.raises(StorageError, match="bestblock"):
            db.read_best_block()


# ----------------------------------------------------------------------------- open failures

def test_locked_by_this_process(tmp_path):
    with BlockchainDB(tmp_path / "blocks"):
        with pytest.raises(StorageError, match="locked by another process"):
            BlockchainDB(tmp_path / "blocks")


def test_locked_by_another_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, plyvel
            db = plyvel.DB({str(tmp_path / 'blocks')!r}, create_if_missing=True)
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageError) as err:
            BlockchainDB(tmp_path / "blocks")
        assert "locked by another process" in str(err.value) and str(tmp_path) in str(err.value)
    finally:
        holder.stdin.close()
        holder.wait(10)
    BlockchainDB(tmp_path / "blocks").close()       # free again once the holder is gone


def test_directory_is_a_file(tmp_path):
    (tmp_path / "datadir").write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create block database directory"):
        BlockchainDB(tmp_path / "datadir" / "blocks")


def test_missing_directory_without_create(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        BlockchainDB(tmp_path / "nothing", create_if_missing=False)


def test_closed_database_raises_storage_error(tmp_path):
    db = BlockchainDB(tmp_path)
    db.close()
    with pytest.raises(StorageError):
        db.read_best_block()


# ----------------------------------------------------------------------------- disk full

@pytest.fixture
def small_disk(tiny_tmpfs):
    return tiny_tmpfs("256k")


def _fill(path: Path) -> None:
    """Write a file until the filesystem has no space left."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_disk_full_is_clear_and_the_stored_chain_survives(small_disk, hasher):
    params = ChainParams.regtest()
    ctx = NodeContext(params, small_disk, hasher=hasher)
    ctx.blockchain = BlockchainDB(small_disk / "blocks")
    chain = ctx.chainstate = load_chain_state(params, ctx.blockchain, hasher)
    for height in range(1, 6):
        block, h = mine_block(hasher, chain.tip().hash, height, bytes(20), params,
                              now=params.genesis_time + 240 * height)
        assert chain.process_new_block(block, h).status is BlockStatus.TIP
    tip = chain.tip()
    _fill(small_disk / "filler")
    # A block with a big vtx cannot fit; the header still commits to it (SHA3 root is not checked).
    big = Block(BlockHeader(1, tip.hash, Uint256.ZERO, params.genesis_time + 6 * 240, params.genesis_bits, 0),
                os.urandom(64 * 1024))
    while not check_proof_of_work(h := big.get_hash(hasher), big.header.bits, params):
        big.header.nonce += 1
    with pytest.raises(StorageError) as err:
        chain.process_new_block(big, h)
    assert "disk full" in str(err.value) and "No space left on device" in str(err.value)
    assert chain.tip() is tip and chain.get_index(h) is None       # memory follows the disk
    with pytest.raises(StorageError, match="refuses writes after an earlier write error"):
        ctx.blockchain.write_best_block(h)
    ctx.blockchain.close()

    (small_disk / "filler").unlink()
    ctx.blockchain = BlockchainDB(small_disk / "blocks")
    reloaded = ctx.chainstate = load_chain_state(params, ctx.blockchain, hasher)
    assert reloaded.tip().hash == tip.hash
    assert reloaded.height() == 5
    assert reloaded.get_block(h) is None
    ctx.blockchain.close()
