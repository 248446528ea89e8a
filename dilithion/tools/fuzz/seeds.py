"""Seed corpora, built by code from the C++ vectors and the committed mined blocks.

The C++ testnet chain (``shared/vectors/cpp-testnet-chain.json``: the exact
``block`` messages the C++ node sent), its handshake messages
(``cpp-wire-handshake.json``) and the blocks ``dilithion-diff mine-corpus``
mined (``dilithion/testing/data/mined-blocks.json``) give real wire bytes; each
target's seeds put those bytes, or values taken from them (heights, ``nBits``,
key hashes, txids), into the layout that target's :class:`DataProvider` reads.
Nothing is copied into the repository: when the vectors are absent the seeds
built from the mined blocks alone remain (:func:`vector_seeds_available`).
"""
from __future__ import annotations

import functools
import json
import struct

from dilithion.consensus.fees import MIN_RELAY_TX_FEE
from dilithion.consensus.validation import parse_block_transactions
from dilithion.core.chainparams import TESTNET_MAGIC, ChainParams
from dilithion.crypto import mldsa
from dilithion.net.protocol import Inv, MsgGetblocks, MsgGetdata, MsgInv, MsgPing
from dilithion.net.serialize import NetMessage, SerializationError, ser_compact_size
from dilithion.primitives.block import Block, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut
from dilithion.testing.testnet_blocks import DEFAULT_VECTORS, MINED_FILE
from dilithion.tools.fuzz.targets_state import UTXO_OPERATIONS

__all__ = ["SEEDS", "framed", "vector_seeds_available", "block_payloads"]

HANDSHAKE_VECTORS = DEFAULT_VECTORS.parent / "cpp-wire-handshake.json"


def framed(raw: bytes) -> bytes:
    """``raw`` as a ``random_length_bytes`` read consumes it (one length byte first)."""
    if len(raw) > 255:
        raise ValueError(f"a framed seed field holds at most 255 bytes, not {len(raw)}")
    return bytes((len(raw),)) + raw


def vector_seeds_available() -> bool:
    return DEFAULT_VECTORS.is_file() and HANDSHAKE_VECTORS.is_file()


@functools.lru_cache(maxsize=1)
def _vector_chain() -> tuple[dict, ...]:
    return tuple(json.loads(DEFAULT_VECTORS.read_text())["blocks"]) if DEFAULT_VECTORS.is_file() else ()


@functools.lru_cache(maxsize=1)
def block_payloads() -> tuple[bytes, ...]:
    """Every known ``block`` payload: the C++ chain V0..V6, then the mined blocks."""
    vectors = [bytes.fromhex(b["block_message_payload_hex"]) for b in _vector_chain()]
    mined = [bytes.fromhex(hex_payload) for hex_payload in json.loads(MINED_FILE.read_text()).values()]
    return tuple(vectors + mined)


@functools.lru_cache(maxsize=1)
def _blocks() -> tuple[Block, ...]:
    return tuple(Block.deserialize(payload, allow_trailing=True) for payload in block_payloads())


@functools.lru_cache(maxsize=1)
def _transactions() -> tuple[Transaction, ...]:
    txs = []
    for block in _blocks():
        try:
            txs.extend(parse_block_transactions(block).txs)
        except SerializationError:
            continue            # a mined block with a deliberately bad body
    return tuple(txs)


def _key_hashes() -> list[bytes]:
    hashes = {mldsa.extract_pub_key_hash(out.script_pubkey) for tx in _transactions() for out in tx.vout}
    return sorted(h for h in hashes if h)


def _frame(command: str, payload: bytes) -> bytes:
    return NetMessage(TESTNET_MAGIC, command, payload).serialize()


def compactsize_seeds() -> list[bytes]:
    values = [0, 1, 252, 253, 254, 255, 256, 0xFFFE, 0xFFFF, 0x10000, 0xFFFFFFFE, 0xFFFFFFFF,
              2**32, 2**64 - 1]
    non_minimal = [b"", b"\xfd\xfc\x00", b"\xfe\xfc\x00\x00\x00", b"\xff\xfc" + bytes(7), b"\xfd\x00"]
    return ([ser_compact_size(v) for v in values] + non_minimal
            + [payload[80:89] for payload in block_payloads()])


def transaction_seeds() -> list[bytes]:
    encoded = [tx.serialize() for tx in _transactions()]
    return encoded + [encoded[0] + b"\x00trailing"] if encoded else encoded


def block_seeds() -> list[bytes]:
    return list(block_payloads())


def network_message_seeds() -> list[bytes]:
    seeds = [bytes.fromhex(b["block_message_raw_hex"]) for b in _vector_chain()]
    if HANDSHAKE_VECTORS.is_file():
        seeds += [bytes.fromhex(m["raw_hex"]) for m in json.loads(HANDSHAKE_VECTORS.read_text())["messages"]]
    hashes = [block.header.hash_prev_block for block in _blocks()]
    seeds += [_frame("block", payload) for payload in block_payloads()[len(_vector_chain()):]]
    seeds += [_frame("tx", tx.serialize()) for tx in _transactions()[:8]]
    seeds += [_frame("inv", MsgInv([Inv(2, h) for h in hashes[:4]]).serialize()),
              _frame("getdata", MsgGetdata([Inv(2, h) for h in hashes[:2]]).serialize()),
              _frame("ping", MsgPing(0x1122334455667788).serialize()),
              _frame("getblocks", MsgGetblocks(hashes[:3], Uint256(), 70001).serialize())]
    return seeds


def sha3_seeds() -> list[bytes]:
    seeds = [b""]
    for payload in block_payloads()[:8]:
        seeds.append(framed(payload[:80]) + framed(payload[4:36]) + framed(payload[36:68]) + payload)
    return seeds


def subsidy_seeds() -> list[bytes]:
    heights = [0, 1, 6, 209_999, 210_000, 210_001, 419_999, 420_000, 6_719_999, 6_720_000,
               13_440_000, 2**31 - 1, -1, -(2**31)]
    return [struct.pack(">iI", h, step) for h in heights for step in (0, 1, 210_000)]


def difficulty_seeds() -> list[bytes]:
    seeds = []
    header_bits = sorted({block.header.bits for block in _blocks()})
    for index, params in enumerate((ChainParams.mainnet(), ChainParams.testnet(), ChainParams.regtest())):
        span = params.difficulty_adjustment * params.block_time
        for bits in [params.genesis_bits, params.pow_min_bits, params.pow_max_bits] + header_bits:
            for actual in (span, span // 4 - 1, span * 4 + 1, span * 8, 0, -span, span // 2):
                seeds.append(bytes((index,)) + struct.pack(">IqI", bits, actual, span))
    return seeds


def merkle_seeds() -> list[bytes]:
    txids = [tx.get_hash() for tx in _transactions()]
    lists = [[], txids[:1], txids[:2], txids[:3], txids[:3] + txids[2:3], txids[:5], txids]
    return [struct.pack(">H", len(leaves)) + b"".join(leaves) + struct.pack(">H", 1) for leaves in lists]


def address_seeds() -> list[bytes]:
    seeds = []
    for pkh in _key_hashes()[:6]:
        address = mldsa.pub_key_hash_to_address(pkh).encode("ascii")
        payload = bytes((mldsa.ADDRESS_VERSION,)) + pkh
        seeds.append(framed(address) + framed(payload) + b"\x00\x05\x07")
    seeds.append(framed(b"11" + mldsa.encode_base58_check(b"\0\0dil").encode()[2:])
                 + framed(b"\0\0dil") + b"\x00\x00\x01")
    seeds.append(framed(b"") + framed(b"") + b"\x00\x00\x00")
    return seeds


def _coin_record(value: int, height: int, coinbase: bool) -> bytes:
    return struct.pack(">QI?", value, height, coinbase)


def tx_validation_seeds() -> list[bytes]:
    """Each coinbase as is, and spends of a coin that is mature, immature, or not coinbase."""
    seeds = [b"\x00" + tx.serialize() for tx in _transactions()[:6]]
    coinbases = [tx for tx in _transactions() if tx.is_coinbase()]
    for coinbase in coinbases[:3]:
        spend = Transaction(1, [TxIn(OutPoint(coinbase.get_hash(), 0), b"sig", 0xFFFFFFFF)],
                            [TxOut(coinbase.vout[0].value - MIN_RELAY_TX_FEE * 2, coinbase.vout[0].script_pubkey)])
        value = coinbase.vout[0].value
        for coin_height, is_coinbase, height in ((1000, True, 1100), (1000, True, 1050), (1000, False, 1001)):
            seeds.append(b"\x00" + spend.serialize() + _coin_record(value, coin_height, is_coinbase)
                         + struct.pack(">I", height))
    return seeds


def utxo_seeds() -> list[bytes]:
    """Operation lists (connects, disconnects, a stray block, a reopen) over vector bytes."""
    code = {name: UTXO_OPERATIONS.index(name) for name in UTXO_OPERATIONS}
    plans = [["connect", "connect", "disconnect", "connect"],
             ["connect", "reopen", "connect", "connect-out-of-order", "disconnect", "disconnect"],
             ["connect-out-of-order", "connect", "connect", "connect", "reopen"],
             ["disconnect", "connect"]]
    filler = b"".join(block_payloads())[:4000] or bytes(range(256)) * 8
    return [framed(bytes(code[name] for name in plan)) + filler[i * 97:] for i, plan in enumerate(plans)]


def template_seeds() -> list[bytes]:
    """Templates on the vector chain's own tips, empty and with mempool transactions."""
    testnet = ChainParams.testnet()
    pkh = (_key_hashes() or [bytes(20)])[0]
    seeds = []
    for block in _blocks()[:8]:
        height = 1 + len(seeds) % 7
        head = (bytes((1,)) + struct.pack(">II", height - 1, block.header.bits - testnet.pow_min_bits)
                + pkh + bytes(block.header.hash_prev_block or Uint256(b"\x01" * 32))
                + struct.pack(">I", block.header.time))
        txs = b"".join(block.header.hash_merkle_root + b"sigbytes" + struct.pack(">QQ", 5 * 10**8, 10**6)
                       for _ in range(len(seeds) % 4))
        seeds.append(head + bytes((len(seeds) % 4,)) + txs)
    # After the subsidy has ended (33 halvings), without fees: the chain D32 case.
    seeds.append(bytes((1,)) + struct.pack(">II", 7_000_000 - 1, 0) + pkh + b"\x01" * 32
                 + struct.pack(">I", 1_800_000_000) + b"\x00")
    return seeds


#: Target name -> the function that builds its seeds.
SEEDS = {
    "address": address_seeds, "block": block_seeds, "compactsize": compactsize_seeds,
    "difficulty": difficulty_seeds, "merkle": merkle_seeds, "network_message": network_message_seeds,
    "sha3": sha3_seeds, "subsidy": subsidy_seeds, "template": template_seeds,
    "transaction": transaction_seeds, "tx_validation": tx_validation_seeds, "utxo": utxo_seeds,
}
