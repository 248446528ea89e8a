"""Block templates and the nonce search.

The C++ node builds its template inline in ``main`` (``BuildMiningTemplate``,
``cli`` 2.2): version 1, the tip as parent, the current time (the node's miner
uses :func:`template_time`, never before the median time past + 1), the genesis
``nBits`` (its difficulty never adjusts, ``chain D12``), and a ``vtx`` that is
one bare coinbase whose txid is the merkle root.  This module builds exactly
that when there are no transactions to include, so C++ peers see the same
blocks.  With mempool transactions it uses the library form (CompactSize count,
then the transactions; merkle root over the txids, ``chain`` 1.5), which C++
nodes accept unexamined and which the UTXO set can apply.
"""
from __future__ import annotations

import time as _time
from dataclasses import dataclass
from threading import Event
from typing import Iterable

from dilithion.consensus.pow import (calculate_block_subsidy, compact_to_big, get_median_time_past,
                                     get_next_work_required, hash_less_than)
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import create_script_pub_key
from dilithion.consensus.validation import build_merkle_root
from dilithion.crypto.sha3 import sha3_256
from dilithion.net.serialize import ser_compact_size
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

__all__ = ["BlockTemplate", "create_coinbase", "next_work_bits", "template_time",
           "create_block_template", "search_nonce", "mine_block", "mine_chain"]


@dataclass
class BlockTemplate:
    """A block to grind, its target and its height (``CBlockTemplate``)."""

    block: Block
    target: int
    height: int


def create_coinbase(height: int, pub_key_hash: bytes, fees: int = 0,
                    params: ChainParams | None = None) -> Transaction:
    """The node's coinbase: scriptSig ``Block <H> mined by Dilithion``, one P2PKH output.

    C++: ``CreateCoinbaseTransaction``.
    """
    subsidy = (calculate_block_subsidy(height, params.initial_reward, params.halving_interval)
               if params else calculate_block_subsidy(height))
    return Transaction(
        version=1,
        vin=[TxIn(OutPoint(), f"Block {height} mined by Dilithion".encode("ascii"))],
        vout=[TxOut(subsidy + fees, create_script_pub_key(pub_key_hash))],
        lock_time=0)


def next_work_bits(tip, params: ChainParams, strict: bool = False) -> int:
    """The ``nBits`` to mine on top of ``tip``.

    By default the C++ node's effective rule: always the genesis bits
    (``chain D12``).  ``strict`` applies the intended retarget walk.
    """
    if strict:
        return get_next_work_required(tip, params)
    return params.genesis_bits


def template_time(tip, now: int) -> int:
    """The ``nTime`` to mine on top of ``tip`` (a ``BlockIndex``) at clock ``now``:
    ``max(now, median time past + 1)``, as Core's ``UpdateTime``, in both modes.

    The C++ node stamps ``now`` (``cli`` 2.2): on a fast chain (regtest, or a
    burst of blocks) that can be at or before the median of the last 11 blocks,
    which ``--strict`` peers reject as ``time-invalid``.  Every C++ rule accepts
    either value, so this changes no default-mode decision.
    """
    return max(now, get_median_time_past(tip) + 1)


def create_block_template(tip_hash: Uint256, height: int, bits: int, pub_key_hash: bytes,
                          params: ChainParams, transactions: Iterable[tuple[Transaction, int]] = (),
                          now: int | None = None) -> BlockTemplate:
    """A template on ``tip_hash`` at ``height``; ``transactions`` are (tx, fee) pairs."""
    txs = list(transactions)
    coinbase = create_coinbase(height, pub_key_hash, sum(fee for _, fee in txs), params)
    if txs:
        all_txs = [coinbase] + [tx for tx, _ in txs]
        vtx = ser_compact_size(len(all_txs)) + b"".join(tx.serialize() for tx in all_txs)
        merkle = build_merkle_root([tx.get_hash() for tx in all_txs])
    else:
        vtx = coinbase.serialize()
        merkle = sha3_256(vtx)
    header = BlockHeader(version=1, hash_prev_block=tip_hash, hash_merkle_root=Uint256(merkle),
                         time=int(_time.time()) if now is None else now, bits=bits, nonce=0)
    return BlockTemplate(Block(header, vtx), compact_to_big(bits), height)


def search_nonce(hasher, template: BlockTemplate, start_nonce: int = 0, step: int = 1,
                 max_hashes: int | None = None, stop: Event | None = None,
                 on_hash=None) -> tuple[Block, Uint256] | None:
    """Grind nonces ``start, start+step, ...`` until a hash meets the target.

    Returns the solved block (a copy) and its hash, or ``None`` when
    ``max_hashes`` is used up or ``stop`` is set.  ``on_hash`` is called after
    every hash (statistics).  Also does the job of ``MineGenesisBlock``.
    """
    header = BlockHeader(**vars(template.block.header))
    nonce = start_nonce & 0xFFFFFFFF
    done = 0
    while (max_hashes is None or done < max_hashes) and not (stop and stop.is_set()):
        header.nonce = nonce
        digest = hasher.hash(header.serialize())
        done += 1
        if on_hash:
            on_hash()
        if hash_less_than(digest, template.target):
            return Block(header, template.block.vtx), Uint256(digest)
        nonce = (nonce + step) & 0xFFFFFFFF
    return None


def mine_block(hasher, tip_hash: Uint256, height: int, pub_key_hash: bytes,
               params: ChainParams, bits: int | None = None, now: int | None = None,
               transactions: Iterable[tuple[Transaction, int]] = ()) -> tuple[Block, Uint256]:
    """Build and solve one block in the calling thread (tests, tools, regtest)."""
    template = create_block_template(tip_hash, height,
                                     params.genesis_bits if bits is None else bits,
                                     pub_key_hash, params, transactions, now)
    found = search_nonce(hasher, template)
    assert found is not None  # unbounded search only returns a solution
    return found


def mine_chain(hasher, parent_hash: Uint256, parent_height: int, count: int, pub_key_hash: bytes,
               params: ChainParams, time_of=None) -> list[tuple[Block, Uint256]]:
    """``count`` blocks on ``parent_hash``, each on the previous one (regtest tools, tests).

    ``time_of(height)`` gives each block's ``nTime`` (default: now), so callers
    can build reproducible chains and distinct branches.
    """
    blocks = []
    for height in range(parent_height + 1, parent_height + count + 1):
        block, block_hash = mine_block(hasher, parent_hash, height, pub_key_hash, params,
                                       now=time_of(height) if time_of else None)
        blocks.append((block, block_hash))
        parent_hash = block_hash
    return blocks
