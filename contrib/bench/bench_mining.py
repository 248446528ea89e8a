#!/usr/bin/env python3
"""Mining hash rate: light and full RandomX mode, the raw library, and the C++ node.

    .venv/bin/python contrib/bench/bench_mining.py [--seconds=10] [--rounds=3]
        [--threads=1,2] [--modes=light,full] [--cpp-seconds=60]

For each mode (light first: once the process has the dataset it hashes in full
mode for good) and each thread count it measures, alternating ``--rounds``
times and reporting the medians (the shared machine's speed drifts by 10-20 %
between consecutive windows):

* **raw**: threads calling the RandomX VM directly on 80-byte headers (the
  binding's own rate, no node code; ``bench_randomx.hash_rate``);
* **node**: the node's ``MiningController`` mining a fresh testnet chain in a
  temporary datadir (testnet bits ``0x1f060000``: a block about every 11,000
  hashes, so templates are rebuilt now and then, as in real mining), rate from
  its own hash counters;

and, when ``DILITHION_CPP_NODE`` names a built C++ ``dilithion-node``, the C++
node mining testnet with the same thread counts in the same run (its own
``getmininginfo`` hash rate, sampled every second after a warm-up; it hashes
in light mode behind one global lock).  Memory: the process's RSS and huge-page
use after each mode.  The machine is shared, so every figure is a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

from bench_randomx import hash_rate
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.blockchain_storage import BlockchainDB
from dilithion.node.chain_loader import load_chain_state
from dilithion.node.context import NodeContext
from dilithion.node.init import miner_for
from dilithion.rpc.client import RPCClientError
from dilithion.testing.cpp_node import CppNode

#: Issue #14's targets for 2 threads in full mode.
TARGET_VS_CPP = 15.0
TARGET_VS_RAW = 0.90


def node_rate(mode: str, threads: int, seconds: float, warmup: float = 3.0) -> float:
    """Hashes per second of a ``MiningController`` with ``threads`` workers, after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="dil-bench-") as tmp:
        ctx = NodeContext(chain_params=ChainParams.testnet(), datadir=Path(tmp),
                          hasher=RandomXHasher.for_key(), randomx_mode=mode)
        ctx.blockchain = BlockchainDB(str(Path(tmp) / "blocks"))
        ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                          utxo_set=ctx.utxo_set)
        miner = miner_for(ctx, threads, pub_key_hash=bytes(20))
        try:
            miner.start()
            time.sleep(warmup)            # VM creation per thread, first template
            h0, t0 = miner.total_hashes(), time.perf_counter()
            time.sleep(seconds)
            h1, t1 = miner.total_hashes(), time.perf_counter()
        finally:
            miner.stop()
            ctx.blockchain.close()
    return (h1 - h0) / (t1 - t0)


def cpp_rate(binary: str, threads: int, seconds: float, warmup: float = 15.0) -> float:
    """The C++ node's mean ``getmininginfo`` hash rate over ``seconds`` after ``warmup``
    (counted from the moment it is ready)."""
    samples: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dil-bench-cpp-") as tmp:
        # Alone on loopback (its --connect goes to a closed port), mining with ``threads``.
        node = CppNode("cpp", Path(tmp), Path(binary), ["--mine", f"--threads={threads}"])
        try:
            node.start()
            started = time.monotonic()
            while time.monotonic() < started + warmup + seconds and node.is_running():
                time.sleep(1.0)
                try:
                    reply = node.rpc("getmininginfo", [])
                except RPCClientError:
                    continue
                if isinstance(reply, dict) and time.monotonic() >= started + warmup:
                    samples.append(float(reply.get("hashrate", 0)))
        finally:
            node.stop()
    if not samples:
        raise RuntimeError(f"the C++ node at {binary} reported no hash rate")
    return statistics.fmean(samples)


def memory() -> dict:
    """This process's resident memory and huge pages (``/proc/self/status``), MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "HugetlbPages"):
            fields[name] = round(int(value.split()[0]) / 1024)
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw/node measurements alternated per case (medians reported)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--modes", default="light,full", help="light, full or both")
    parser.add_argument("--cpp-seconds", type=float, default=60.0,
                        help="per C++ measurement (after a 15 s warm-up)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    thread_counts = [int(n) for n in args.threads.split(",")]
    modes = [m for m in ("light", "full") if m in args.modes.split(",")]
    hasher = RandomXHasher.for_key()
    results: dict = {"cpu_count": os.cpu_count(), "rates": {}, "memory": {}}

    for mode in modes:
        if mode == "full":
            build = hasher.start_full_mode()
            build.done.wait()
            if build.state != "ready":
                print(f"full mode unavailable: {build.reason}")
                break
            results["dataset"] = {"seconds": round(build.seconds, 1), "pages": build.pages}
            print(f"dataset built in {build.seconds:.1f} s ({build.pages})", flush=True)
        for n in thread_counts:
            # Raw and node alternate, so a slow spell of the shared machine hits both.
            raws, nodes = [], []
            for _ in range(args.rounds):
                raws.append(hash_rate(hasher, n, args.seconds))
                nodes.append(node_rate(mode, n, args.seconds))
            raw, node = statistics.median(raws), statistics.median(nodes)
            results["rates"][f"{mode}/{n}"] = {"raw": round(raw, 1), "node": round(node, 1)}
            print(f"{mode:5} threads={n}: raw library {raw:7.1f} H/s, node {node:7.1f} H/s "
                  f"({node / raw:.2f} of raw)", flush=True)
        results["memory"][mode] = memory()
        print(f"{mode:5} memory: {results['memory'][mode]} MiB", flush=True)

    binary = os.environ.get("DILITHION_CPP_NODE")
    if binary:
        for n in thread_counts:
            rate = cpp_rate(binary, n, args.cpp_seconds)
            results["rates"][f"cpp/{n}"] = {"node": round(rate, 1)}
            print(f"C++   threads={n}: node {rate:7.1f} H/s (light mode, one shared VM)",
                  flush=True)

    summarise(results, max(thread_counts))
    if args.json:
        print(json.dumps(results))
    return 0


def summarise(results: dict, threads: int) -> None:
    """The issue's two targets for ``threads`` threads in full mode, where measured."""
    rates = results["rates"]
    full = rates.get(f"full/{threads}")
    if full is None:
        return
    cpp = rates.get(f"cpp/{threads}")
    checks = [("full_vs_raw", "node/raw", full["raw"], TARGET_VS_RAW)]
    if cpp:
        checks.append(("full_vs_cpp", "node/C++", cpp["node"], TARGET_VS_CPP))
    for key, label, base, target in checks:
        results[key] = round(full["node"] / base, 3)
        print(f"full mode, {threads} threads: {label} = {results[key]:.2f}x (target >= {target}x)")
    light = rates.get(f"light/{threads}")
    if light:
        print(f"full vs light, {threads} threads: {full['node'] / light['node']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
