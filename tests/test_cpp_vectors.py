"""The bytes the C++ node really produced (``../shared/vectors``) against our codecs.

Every block the C++ node served and every handshake message it sent must parse,
re-serialize to the identical bytes, and hash/check exactly as the C++ did.
"""
from __future__ import annotations

import pytest

from dilithion.consensus.pow import check_proof_of_work, compact_to_big
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.sha3 import sha3_256
from dilithion.net.protocol import MsgBlock, MsgPong, MsgVerack, MsgVersion, decode_payload
from dilithion.net.serialize import (MESSAGE_HEADER_SIZE, NetMessage, SerializationError,
                                     calculate_checksum)
from dilithion.node.genesis import create_genesis_block, is_genesis_block
from dilithion.primitives.block import Block, Uint256
from dilithion.primitives.transaction import Transaction


def _parsed_blocks(cpp_chain):
    magic = int(cpp_chain["magic"], 16)
    out = []
    for entry in cpp_chain["blocks"]:
        raw = bytes.fromhex(entry["block_message_raw_hex"])
        msg = NetMessage.deserialize(raw, magic)
        out.append((entry, raw, msg, MsgBlock.deserialize(msg.payload).block))
    return out


def test_vector_file_describes_testnet(cpp_chain, testnet):
    assert cpp_chain["network"] == "testnet"
    assert int(cpp_chain["magic"], 16) == testnet.magic == 0xDAB5BFFA
    assert cpp_chain["randomx_key"] == "Dilithion"
    assert [b["height"] for b in cpp_chain["blocks"]] == list(range(7))


def test_every_block_message_round_trips_byte_for_byte(cpp_chain):
    for entry, raw, msg, block in _parsed_blocks(cpp_chain):
        payload = bytes.fromhex(entry["block_message_payload_hex"])
        assert msg.command == "block"
        assert msg.payload == payload
        assert raw[:MESSAGE_HEADER_SIZE] == msg.header.serialize()
        assert msg.header.checksum == calculate_checksum(payload)
        assert block.serialize() == payload, entry["height"]
        assert MsgBlock(block).to_net_message(int(cpp_chain["magic"], 16)).serialize() == raw
        assert isinstance(decode_payload("block", payload), MsgBlock)


def test_header_fields_equal_the_decoded_json(cpp_chain):
    for entry, _raw, _msg, block in _parsed_blocks(cpp_chain):
        h, want = block.header, entry["header"]
        assert h.version == want["nVersion"]
        assert h.hash_prev_block.get_hex() == want["hashPrevBlock"]
        assert h.hash_merkle_root.get_hex() == want["hashMerkleRoot"]
        assert h.time == want["nTime"]
        assert h.bits == int(want["nBits"], 16)
        assert h.nonce == want["nNonce"]


def test_hashes_merkle_roots_and_links(cpp_chain, hasher):
    prev_hash = Uint256.ZERO
    for entry, _raw, _msg, block in _parsed_blocks(cpp_chain):
        block_hash = block.get_hash(hasher)
        assert block_hash.get_hex() == entry["hash"], entry["height"]
        assert block.header.hash_prev_block == prev_hash
        assert block.header.hash_merkle_root == sha3_256(block.vtx)
        prev_hash = block_hash


def test_mined_blocks_carry_one_bare_coinbase(cpp_chain):
    """``chain`` 1.5: node-mined ``vtx`` is one coinbase, no count; root == txid."""
    for entry, _raw, _msg, block in _parsed_blocks(cpp_chain)[1:]:
        tx = Transaction.from_bytes(block.vtx)
        assert tx.serialize() == block.vtx
        assert tx.is_coinbase()
        assert tx.vin[0].script_sig == f"Block {entry['height']} mined by Dilithion".encode()
        assert tx.get_value_out() == 50 * 100_000_000
        assert tx.txid == block.header.hash_merkle_root


def test_proof_of_work_of_mined_blocks_and_not_of_genesis(cpp_chain, hasher, testnet):
    """Blocks 1..6 meet 0x1f060000; genesis does not meet its own target (``chain`` 1.10)."""
    blocks = _parsed_blocks(cpp_chain)
    genesis = blocks[0][3]
    assert not check_proof_of_work(genesis.get_hash(hasher), genesis.header.bits, testnet)
    for entry, _raw, _msg, block in blocks[1:]:
        block_hash = block.get_hash(hasher)
        assert check_proof_of_work(block_hash, block.header.bits, testnet), entry["height"]
        assert block_hash.to_int() < compact_to_big(0x1F060000)


def test_testnet_genesis_from_params_is_block_zero(cpp_chain, testnet, hasher):
    entry = cpp_chain["blocks"][0]
    genesis = create_genesis_block(testnet)
    assert genesis.serialize() == bytes.fromhex(entry["block_message_payload_hex"])
    assert genesis.get_hash(hasher).get_hex() == entry["hash"]
    assert is_genesis_block(_parsed_blocks(cpp_chain)[0][3], testnet)
    assert not is_genesis_block(_parsed_blocks(cpp_chain)[1][3], testnet)


@pytest.mark.parametrize("index, cls", [(0, MsgVersion), (1, MsgVerack), (2, MsgPong)])
def test_handshake_messages_parse_verify_and_round_trip(cpp_handshake, index, cls):
    magic = int(cpp_handshake["magic"], 16)
    entry = cpp_handshake["messages"][index]
    raw = bytes.fromhex(entry["raw_hex"])
    msg = NetMessage.deserialize(raw, magic)            # verifies magic, size and checksum
    assert msg.command == entry["command"] == cls.command
    assert msg.payload == bytes.fromhex(entry["payload_hex"])
    assert msg.header.checksum.hex() == entry["checksum_hex"]
    assert msg.serialize() == raw
    decoded = cls.deserialize(msg.payload)
    assert decoded.serialize() == msg.payload
    assert decoded.to_net_message(magic).serialize() == raw


def test_cpp_version_message_fields(cpp_handshake):
    """``net`` 3.1 / D-08: 51 bytes, nonce 0, start height 0, relay 1, C++ agent."""
    payload = bytes.fromhex(cpp_handshake["messages"][0]["payload_hex"])
    assert len(payload) == 51
    v = MsgVersion.deserialize(payload)
    assert (v.version, v.services, v.nonce, v.start_height, v.relay) == (70001, 1, 0, 0, True)
    assert v.user_agent == b"/Dilithion:0.1.0/"


def test_cpp_pong_echoes_the_ping_nonce(cpp_handshake):
    pong = MsgPong.deserialize(bytes.fromhex(cpp_handshake["messages"][2]["payload_hex"]))
    assert pong.nonce == 0x1122334455667788


def test_mainnet_genesis_merkle_root_and_header():
    """Mainnet genesis (``chain`` 1.10): merkle root and RandomX hash."""
    mainnet = ChainParams.mainnet()
    genesis = create_genesis_block(mainnet)
    assert len(genesis.vtx) == 157
    assert genesis.header.hash_merkle_root.hex() == (
        "64d0d171d6abee5e8e4ded527a1b6efa2f2d5ab6503476092deff0dff1a444d2")
    assert genesis.header.serialize()[68:].hex() == "00b95569ffff001e00000000"


def test_mainnet_genesis_hash(hasher):
    genesis = create_genesis_block(ChainParams.mainnet())
    assert genesis.get_hash(hasher).get_hex() == (
        "c45672963ebe10c4e9f47deb23f358adab7064a5840124d23c1f6b73a8af1807")
    assert not check_proof_of_work(genesis.get_hash(hasher), genesis.header.bits,
                                   ChainParams.mainnet())


def test_block_deserialize_rejects_what_the_vectors_do_not_contain(cpp_chain):
    payload = bytes.fromhex(cpp_chain["blocks"][1]["block_message_payload_hex"])
    assert Block.deserialize(payload + b"\x00", allow_trailing=True).serialize() == payload
    with pytest.raises(SerializationError, match="trailing"):
        Block.deserialize(payload + b"\x00")
