#!/usr/bin/env python3
"""Chain benchmark: blocks connected per second and chain reload time.

Usage: ``python contrib/bench/bench_chain.py [N ...]`` (default ``1000``; e.g. ``1000 10000``).

Regtest blocks are mined once with real RandomX and cached in
``$TMPDIR/dilithion-bench-regtest-chain.pickle`` (the cache only grows, so the 1,000
case is a prefix of the 10,000 case; mining 10,000 blocks takes about 8 minutes
on one core).  For each N the script then measures, in fresh temporary datadirs:

* connect: ``ChainState.process_new_block`` for every block, hash supplied as the
  miner supplies it (LevelDB writes, one synced batch per block), without and
  with a UTXO set attached;
* reload: opening the datadir again and ``load_chain_state`` (reads every block
  and index record; RandomX-hashes only the genesis);
* reload with UTXO set: the same when the UTXO set is already at the tip.
"""
from __future__ import annotations

import pickle
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

from dilithion.consensus.chain import BlockStatus
from dilithion.node.chain_loader import close_chain_state, open_chain_state
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.template import mine_block
from dilithion.node.genesis import create_genesis_block
from dilithion.primitives.block import Block, Uint256

CACHE = Path(tempfile.gettempdir()) / "dilithion-bench-regtest-chain.pickle"
PARAMS = ChainParams.regtest()


def mined_chain(hasher, count: int) -> list[tuple[Block, Uint256]]:
    """The first ``count`` blocks of the cached chain, mining (and saving) what is missing."""
    stored: list[tuple[bytes, bytes]] = pickle.loads(CACHE.read_bytes()) if CACHE.exists() else []
    parent = Uint256(stored[-1][1]) if stored else create_genesis_block(PARAMS).get_hash(hasher)
    started = time.monotonic()
    while len(stored) < count:
        height = len(stored) + 1
        block, h = mine_block(hasher, parent, height, bytes(20), PARAMS,
                              now=PARAMS.genesis_time + 240 * height)
        stored.append((block.serialize(), bytes(h)))
        parent = h
        if height % 500 == 0 or height == count:
            CACHE.write_bytes(pickle.dumps(stored))
            print(f"  mined {height} blocks ({time.monotonic() - started:.0f} s)", flush=True)
    return [(Block.deserialize(payload), Uint256(h)) for payload, h in stored[:count]]


def bench(hasher, blocks, utxo: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        datadir = Path(tmp)
        ctx = open_chain_state(PARAMS, datadir, hasher, utxo=utxo)
        started = time.perf_counter()
        for block, h in blocks:
            assert ctx.chainstate.process_new_block(block, h).status is BlockStatus.TIP
        connect = time.perf_counter() - started
        close_chain_state(ctx)
        started = time.perf_counter()
        ctx = open_chain_state(PARAMS, datadir, hasher, utxo=utxo)
        reload = time.perf_counter() - started
        assert ctx.chainstate.height() == len(blocks)
        close_chain_state(ctx)
    return {"blocks/s": len(blocks) / connect, "connect s": connect, "reload s": reload}


def main(counts: list[int]) -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    hasher = RandomXHasher.for_key()
    hasher.hash(b"warm-up")
    print(f"{'blocks':>7} {'UTXO':>5} {'connect blocks/s':>17} {'connect s':>10} {'reload s':>9}")
    for count in counts:
        blocks = mined_chain(hasher, count)
        for utxo in (False, True):
            r = bench(hasher, blocks, utxo)
            print(f"{count:>7} {('yes' if utxo else 'no'):>5} {r['blocks/s']:>17.0f} "
                  f"{r['connect s']:>10.2f} {r['reload s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000])
