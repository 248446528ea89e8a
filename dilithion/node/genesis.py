"""Genesis blocks (``src/node/genesis.{h,cpp}``).

A genesis ``vtx`` is the raw coinbase message, not a transaction, and its merkle
root is ``SHA3-256(message)`` (``chain D2``).  Neither the mainnet nor the
testnet genesis meets its own target, and nothing checks it; the genesis hash is
whatever RandomX makes of the header, never the stale ``genesisHash`` string.
"""
from __future__ import annotations

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.sha3 import sha3_256
from dilithion.primitives.block import Block, BlockHeader, Uint256

__all__ = ["VERSION", "create_genesis_block", "is_genesis_block"]

VERSION = 1


def create_genesis_block(params: ChainParams) -> Block:
    msg = params.genesis_coinbase_msg
    header = BlockHeader(version=VERSION, hash_prev_block=Uint256.ZERO,
                         hash_merkle_root=Uint256(sha3_256(msg)), time=params.genesis_time,
                         bits=params.genesis_bits, nonce=params.genesis_nonce)
    return Block(header, msg)


def is_genesis_block(block: Block, params: ChainParams) -> bool:
    """``IsGenesisBlock``: version, null parent, time, bits and merkle root (not the nonce)."""
    g = create_genesis_block(params).header
    h = block.header
    return (h.version == g.version and h.hash_prev_block.is_null() and h.time == g.time
            and h.bits == g.bits and h.hash_merkle_root == g.hash_merkle_root)
