#!/usr/bin/env python3
"""Mining hash rate of the Python node through ``MiningController``.

Mines on a fresh testnet chain state in a temporary datadir (testnet bits
``0x1f060000``: about one block per 11,000 hashes, so the workers hash without
interruption) with 1, 2, ... threads and prints hashes per second for each.

    .venv/bin/python contrib/bench/bench_mining.py [--seconds=10] [--threads=1,2]

The C++ node serialises every hash behind one global RandomX lock, so its rate
does not grow with threads (``cli 6.2`` #13); here each worker has its own VM.
The CPU time the process got is printed too: on a shared machine the wall-clock
rate is bounded by the cores the scheduler grants, while hashes per CPU-second
show the per-hash cost (and that two workers really run in parallel).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.controller import MiningController
from dilithion.node.blockchain_storage import BlockchainDB
from dilithion.node.chain_loader import load_chain_state
from dilithion.node.context import NodeContext


def measure(threads: int, seconds: float, warmup: float = 2.0) -> dict:
    """Hashes per second of a controller with ``threads`` workers, after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="dil-bench-") as tmp:
        ctx = NodeContext(chain_params=ChainParams.testnet(), datadir=Path(tmp),
                          hasher=RandomXHasher.for_key())
        ctx.blockchain = BlockchainDB(str(Path(tmp) / "blocks"))
        load_chain_state(ctx)
        ctx.chainstate = ctx.chainstate
        miner = MiningController(ctx, threads, pub_key_hash=bytes(20))
        try:
            miner.start()
            time.sleep(warmup)            # VM creation per thread, first template
            h0, t0, c0 = miner.total_hashes(), time.perf_counter(), time.process_time()
            time.sleep(seconds)
            h1, t1, c1 = miner.total_hashes(), time.perf_counter(), time.process_time()
            per_worker = miner.worker_hashes()
        finally:
            miner.stop()
            ctx.blockchain.close()
    rate = (h1 - h0) / (t1 - t0)
    return {"threads": threads, "seconds": round(t1 - t0, 2), "hashes": h1 - h0,
            "hashes_per_second": round(rate, 1), "per_thread": round(rate / threads, 1),
            "cpu_cores_used": round((c1 - c0) / (t1 - t0), 2),
            "hashes_per_cpu_second": round((h1 - h0) / max(c1 - c0, 1e-9), 1),
            "blocks_found": miner.blocks_found, "worker_hashes_total": per_worker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    results = [measure(int(n), args.seconds) for n in args.threads.split(",")]
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    print(f"CPU: {os.cpu_count()} logical; RandomX light mode (cache only), one VM per thread")
    base = results[0]["hashes_per_second"]
    for r in results:
        print(f"threads={r['threads']}: {r['hashes_per_second']:8.1f} H/s "
              f"({r['per_thread']:.1f} per thread, {r['hashes']} hashes in {r['seconds']} s, "
              f"x{r['hashes_per_second'] / base:.2f} vs 1 thread; "
              f"{r['cpu_cores_used']} CPU cores busy, {r['hashes_per_cpu_second']} H per CPU-s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
