"""uint256, headers, blocks and transactions (``chain`` 1, ``net`` 2.4/3.9/3.10)."""
from __future__ import annotations

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.sha3 import sha3_256
from dilithion.net.serialize import DataStream, SerializationError, ser_compact_size
from dilithion.node.genesis import create_genesis_block
from dilithion.primitives.block import HEADER_SIZE, MAX_BLOCK_VTX_SIZE, Block, BlockHeader, Uint256
from dilithion.primitives.transaction import (MAX_SCRIPT_SIZE, MAX_TX_INPUTS, MAX_TX_OUTPUTS,
                                              OutPoint, Transaction, TxIn, TxOut)

# chain 1.10: the example testnet block at height 1 (pubkey hash 00..13, nonce 1554).
EXAMPLE_COINBASE = bytes.fromhex(
    "01000000" "01" + "00" * 32 + "ffffffff" "1a"
    "426c6f636b2031206d696e65642062792044696c697468696f6e" "ffffffff"
    "01" "00f2052a01000000" "19" "76a914000102030405060708090a0b0c0d0e0f1011121388ac" "00000000")
EXAMPLE_TXID_HEX = "f27267e3ad6dad248a7f8a83d5880b28020140cba234265af2c5305881803271"
TESTNET_GENESIS_RAW = "754452c3fb3fd737ce02c90b40cc2524a663c77b1407448185119e4680db4b92"


def example_coinbase() -> Transaction:
    return Transaction(1, [TxIn(OutPoint(), b"Block 1 mined by Dilithion")],
                       [TxOut(50 * 100_000_000, b"\x76\xa9\x14" + bytes(range(20)) + b"\x88\xac")])


# -- uint256 -----------------------------------------------------------------------
def test_uint256_text_form_is_reversed_raw_bytes():
    raw = bytes(range(32))
    u = Uint256(raw)
    assert u.get_hex() == raw[::-1].hex() and str(u) == u.get_hex()
    assert Uint256.from_hex(u.get_hex()) == u
    assert u.to_int() == int.from_bytes(raw, "little")
    assert Uint256.from_int(u.to_int()) == u
    assert u.short() == u.get_hex()[:16]
    assert Uint256.ZERO.is_null() and not u.is_null()
    assert repr(u).startswith("Uint256(1f1e")


def test_uint256_order_is_memcmp_not_numeric():
    """``chain D5``: byte 0 (least significant) decides first."""
    small_numeric = Uint256(b"\x02" + bytes(31))
    big_numeric = Uint256(b"\x01" + bytes(30) + b"\xff")
    assert big_numeric < small_numeric
    assert big_numeric.to_int() > small_numeric.to_int()


@pytest.mark.parametrize("text", ["", "00", "0" * 63, "0" * 65, "zz" * 32, "0x" + "0" * 62])
def test_uint256_from_hex_rejects_anything_but_64_hex_digits(text):
    with pytest.raises(ValueError):
        Uint256.from_hex(text)


def test_uint256_must_be_32_bytes():
    with pytest.raises(ValueError):
        Uint256(b"\x00" * 33)


# -- header and block -----------------------------------------------------------------
def test_header_layout_is_80_le_bytes():
    h = BlockHeader(-1, Uint256(b"\x11" * 32), Uint256(b"\x22" * 32), 0x01020304, 0x1F060000, 0xFFFFFFFF)
    raw = h.serialize()
    assert len(raw) == HEADER_SIZE
    assert raw == (b"\xff" * 4 + b"\x11" * 32 + b"\x22" * 32 + bytes.fromhex("04030201")
                   + bytes.fromhex("0000061f") + b"\xff" * 4)
    assert BlockHeader.deserialize(raw) == h
    assert not h.is_null() and BlockHeader().is_null()
    h.set_null()
    assert h.is_null() and h.serialize() == bytes(80)


def test_header_holds_uint256_even_when_given_plain_bytes():
    h = BlockHeader(hash_prev_block=b"\x01" * 32, hash_merkle_root=bytearray(32))
    assert isinstance(h.hash_prev_block, Uint256) and isinstance(h.hash_merkle_root, Uint256)
    assert h.hash_prev_block.get_hex() == "01" * 32
    with pytest.raises(ValueError):
        BlockHeader(hash_prev_block=b"\x01" * 31)


def test_header_deserialize_errors():
    raw = BlockHeader(bits=1).serialize()
    with pytest.raises(SerializationError, match="wanted 32 bytes for header hashMerkleRoot at offset 36, 1 remain"):
        BlockHeader.deserialize(raw[:37])
    with pytest.raises(SerializationError, match="1 unexpected trailing bytes after block header at offset 80"):
        BlockHeader.deserialize(raw + b"\x00")


def test_block_payload_is_header_then_compact_vtx():
    vtx = b"\xab" * 300
    block = Block(BlockHeader(bits=0x1F060000), vtx)
    payload = block.serialize()
    assert payload[:80] == block.header.serialize()
    assert payload[80:83] == b"\xfd\x2c\x01" and payload[83:] == vtx
    assert Block.deserialize(payload) == block


def test_block_vtx_is_carried_verbatim_even_with_noncanonical_length():
    """``net D-33``: ``vtx`` is opaque; only its own bytes matter, not their framing."""
    header = BlockHeader(bits=0x1F060000).serialize()
    block = Block.deserialize(header + b"\xfd\x03\x00abc")
    assert block.vtx == b"abc"
    assert block.serialize() == header + b"\x03abc"


def test_block_bad_input():
    header = BlockHeader(bits=1).serialize()
    with pytest.raises(SerializationError, match="wanted 1 bytes for length of block vtx at offset 80"):
        Block.deserialize(header)
    with pytest.raises(SerializationError, match="wanted 10 bytes for block vtx at offset 81, 2 remain"):
        Block.deserialize(header + b"\x0a\x00\x00")
    too_big = MAX_BLOCK_VTX_SIZE + 1
    with pytest.raises(SerializationError, match=f"block vtx length {too_big} at offset 80 exceeds limit"):
        Block.deserialize(header + ser_compact_size(too_big))
    with pytest.raises(SerializationError, match="exceeds limit"):
        Block.deserialize(header + b"\xff" + b"\xff" * 8)
    with pytest.raises(SerializationError, match="trailing bytes after block vtx at offset 81"):
        Block.deserialize(header + b"\x00" + b"\x00")
    assert Block.deserialize(header + b"\x00" + b"\x00", allow_trailing=True).vtx == b""


def test_block_vtx_of_exactly_four_mebibytes_is_accepted():
    header = BlockHeader(bits=1).serialize()
    vtx = bytes(MAX_BLOCK_VTX_SIZE)
    assert len(Block.deserialize(header + ser_compact_size(len(vtx)) + vtx).vtx) == MAX_BLOCK_VTX_SIZE


# -- transactions ------------------------------------------------------------------------
def test_example_coinbase_bytes_and_txid():
    tx = example_coinbase()
    assert tx.serialize() == EXAMPLE_COINBASE and len(EXAMPLE_COINBASE) == 111
    assert tx.get_serialized_size() == 111
    assert Uint256(tx.txid).get_hex() == EXAMPLE_TXID_HEX
    assert tx.is_coinbase() and tx.get_value_out() == 5_000_000_000
    assert Transaction.from_bytes(EXAMPLE_COINBASE) == tx


def test_example_block_one_header_and_hash(hasher):
    """``chain`` 1.10: the node-template block 1 on the testnet genesis, nonce 1554."""
    genesis_hash = create_genesis_block(ChainParams.testnet()).get_hash(hasher)
    assert genesis_hash.hex() == TESTNET_GENESIS_RAW
    header = BlockHeader(1, genesis_hash, Uint256(sha3_256(EXAMPLE_COINBASE)), 1730000240,
                         0x1F060000, 1554)
    assert header.serialize().hex() == (
        "01000000" + TESTNET_GENESIS_RAW + Uint256.from_hex(EXAMPLE_TXID_HEX).hex()
        + "70b51d67" "0000061f" "12060000")
    block = Block(header, EXAMPLE_COINBASE)
    assert block.get_hash(hasher).get_hex() == (
        "00005c33d931b61d8e66fadeb9fe2e8340ff7eccfcbb0bed7c9f24df84eb8af3")


def test_example_coinbase_matches_the_template_builder():
    from dilithion.mining.template import create_coinbase
    assert create_coinbase(1, bytes(range(20))).serialize() == EXAMPLE_COINBASE


def test_outpoint_defaults_and_order():
    assert OutPoint().is_null() and not OutPoint(bytes(32), 0).is_null()
    assert OutPoint(b"\x01" + bytes(31), 5) < OutPoint(b"\x02" + bytes(31), 0)
    assert OutPoint(b"\x01" * 32, 0) < OutPoint(b"\x01" * 32, 1)


def test_coinbase_predicate_and_null():
    assert not Transaction().is_coinbase() and Transaction().is_null()
    spend = Transaction(vin=[TxIn(OutPoint(b"\x01" * 32, 0))], vout=[TxOut(1, b"")])
    assert not spend.is_coinbase() and not spend.is_null()
    two_null_inputs = Transaction(vin=[TxIn(), TxIn()])
    assert not two_null_inputs.is_coinbase()
    assert TxOut().is_null() and not TxOut(1).is_null()
    spend.set_null()
    assert spend.is_null() and spend == Transaction()


def test_value_out_overflow():
    tx = Transaction(vout=[TxOut(2**63), TxOut(2**63)])
    with pytest.raises(OverflowError):
        tx.get_value_out()


def test_negative_version_round_trips():
    tx = Transaction(version=-5, lock_time=0xFFFFFFFF)
    assert tx.serialize()[:4] == b"\xfb\xff\xff\xff"
    assert Transaction.from_bytes(tx.serialize()) == tx


def test_noncanonical_tx_gets_the_canonical_txid():
    """``chain D4``: the txid is over the re-serialization, not the received bytes."""
    canonical = Transaction(vin=[], vout=[TxOut(7, b"\x51")]).serialize()
    odd = canonical[:4] + b"\xfd\x00\x00" + canonical[5:]
    tx = Transaction.from_bytes(odd)
    assert tx.serialize() == canonical and tx.txid == sha3_256(canonical) != sha3_256(odd)


def test_txid_is_not_cached():
    """``chain D6``: mutating a transaction changes its txid immediately."""
    tx = example_coinbase()
    before = tx.txid
    tx.vout[0].value -= 1
    assert tx.txid != before


def test_deserialize_with_trailing_reports_consumed():
    tx, consumed = Transaction.deserialize(EXAMPLE_COINBASE + b"rest", allow_trailing=True)
    assert consumed == 111 and tx == example_coinbase()
    with pytest.raises(SerializationError, match="4 unexpected trailing bytes after transaction at offset 111"):
        Transaction.deserialize(EXAMPLE_COINBASE + b"rest")


@pytest.mark.parametrize("cut", range(0, 111, 7))
def test_every_truncation_of_a_transaction_fails(cut):
    with pytest.raises(SerializationError, match="read past end|needs at least"):
        Transaction.from_bytes(EXAMPLE_COINBASE[:cut])


def test_transaction_limits():
    version = b"\x01\x00\x00\x00"
    with pytest.raises(SerializationError, match=f"input count {MAX_TX_INPUTS + 1} at offset 4 exceeds limit"):
        Transaction.from_bytes(version + ser_compact_size(MAX_TX_INPUTS + 1))
    with pytest.raises(SerializationError, match=f"output count {MAX_TX_OUTPUTS + 1} at offset 5 exceeds limit"):
        Transaction.from_bytes(version + b"\x00" + ser_compact_size(MAX_TX_OUTPUTS + 1))
    with pytest.raises(SerializationError, match="input count 1152921504606846976 at offset 4"):
        Transaction.from_bytes(version + b"\xff" + (2**60).to_bytes(8, "little"))
    with pytest.raises(SerializationError, match="input count 2 at offset 4 needs at least 82 bytes"):
        Transaction.from_bytes(version + b"\x02" + bytes(50))
    prevout = bytes(32) + b"\xff" * 4
    with pytest.raises(SerializationError, match=f"scriptSig length {MAX_SCRIPT_SIZE + 1} at offset 41 exceeds limit"):
        Transaction.from_bytes(version + b"\x01" + prevout + ser_compact_size(MAX_SCRIPT_SIZE + 1)
                               + bytes(10))
    out_prefix = version + b"\x00\x01" + bytes(8)
    with pytest.raises(SerializationError, match=f"scriptPubKey length {MAX_SCRIPT_SIZE + 1} at offset 14 exceeds"):
        Transaction.from_bytes(out_prefix + ser_compact_size(MAX_SCRIPT_SIZE + 1))


def test_scripts_of_exactly_the_limit_are_accepted():
    tx = Transaction(vin=[TxIn(OutPoint(b"\x01" * 32, 0), b"s" * MAX_SCRIPT_SIZE)],
                     vout=[TxOut(1, b"p" * MAX_SCRIPT_SIZE)])
    assert Transaction.from_bytes(tx.serialize()) == tx


def test_transaction_reads_from_a_shared_stream():
    s = DataStream(EXAMPLE_COINBASE + EXAMPLE_COINBASE)
    assert Transaction.deserialize_from(s) == Transaction.deserialize_from(s) == example_coinbase()
    assert s.eof()
