"""A real regtest chain, mined once per test session and shared by every test.

``regtest_chain(n)`` returns blocks 0..n as ``(block, hash)`` pairs: real RandomX
proof of work, one coinbase per block paying :data:`MINER`. The chain grows on
demand, so a 300-block chain costs its ~15 s only once per session.
"""
from __future__ import annotations

import os

from dilithion.consensus.pow import check_proof_of_work
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.template import mine_block
from dilithion.node.genesis import create_genesis_block
from dilithion.primitives.block import Block, BlockHeader, Uint256

__all__ = ["REGTEST", "MINER", "regtest_chain", "side_block"]

REGTEST = ChainParams.regtest()
#: Owns every coinbase of the session chain (the tx relay tests spend them).
MINER = KeyPair.from_seed(bytes(range(32)))

_CHAIN: list[tuple[Block, Uint256]] = []


def regtest_chain(n: int) -> list[tuple[Block, Uint256]]:
    """Blocks 0..n of the session's regtest chain as ``(block, hash)`` pairs."""
    hasher = RandomXHasher.for_key()
    if not _CHAIN:
        genesis = create_genesis_block(REGTEST)
        _CHAIN.append((genesis, genesis.get_hash(hasher)))
    while len(_CHAIN) <= n:
        height = len(_CHAIN)
        block, h = mine_block(hasher, _CHAIN[-1][1], height, MINER.pub_key_hash(), REGTEST,
                              now=REGTEST.genesis_time + 60 * height)
        _CHAIN.append((block, h))
    return _CHAIN[:n + 1]


def side_block(hasher, parent: Uint256, body: bytes, time_: int) -> tuple[Block, Uint256]:
    """A block on ``parent`` with an arbitrary opaque body and a random merkle root: a
    default-mode node (the C++ acceptance rule) checks only its proof of work."""
    header = BlockHeader(1, parent, Uint256(os.urandom(32)), time_, REGTEST.genesis_bits, 0)
    block = Block(header, body)
    while True:
        h = block.get_hash(hasher)
        if check_proof_of_work(h, header.bits, REGTEST):
            return block, h
        header.nonce += 1
