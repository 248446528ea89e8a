#!/usr/bin/env python3
"""RandomX throughput of :class:`dilithion.crypto.randomx_hash.RandomXHasher`.

Run on demand (it is not a pytest file)::

    .venv/bin/python contrib/bench/bench_randomx.py --seconds 10 --reps 2 --threads 1 2

It measures the time to build the 256 MiB light-mode cache for the key
``Dilithion``, then hashes 80-byte headers (a fresh nonce per hash, like the
miner) for ``--seconds`` per case with 1, 2, ... threads, each thread on its own
VM, and reports the best of ``--reps`` repetitions plus the scaling ratio
against one thread.  The machine is shared, so numbers are a lower bound.
"""
from __future__ import annotations

import argparse
import struct
import threading
import time

from dilithion.crypto.randomx_hash import RANDOMX_KEY, RandomXHasher


def time_cache_init(key: bytes) -> tuple[float, RandomXHasher]:
    started = time.perf_counter()
    hasher = RandomXHasher(key)          # a private instance: really builds a new cache
    return time.perf_counter() - started, hasher


def hash_rate(hasher: RandomXHasher, threads: int, seconds: float) -> float:
    """Hashes per second summed over ``threads`` threads hashing for ``seconds``."""
    counts = [0] * threads
    vms_ready = threading.Barrier(threads + 1)
    go = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        header = bytearray(80)
        header[0] = index
        hasher.hash(bytes(header))       # creates this thread's VM before timing starts
        vms_ready.wait()
        go.wait()                        # the deadline is set between the two barriers
        nonce, end = 0, deadline[0]
        while time.perf_counter() < end:
            struct.pack_into("<I", header, 76, nonce)
            hasher.hash(bytes(header))
            nonce += 1
        counts[index] = nonce

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    vms_ready.wait()
    started = time.perf_counter()
    deadline[0] = started + seconds
    go.wait()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of one case")
    parser.add_argument("--reps", type=int, default=2, help="repetitions per case (best is kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    init_times = []
    hasher = None
    for _ in range(args.reps):
        seconds, hasher = time_cache_init(RANDOMX_KEY)
        init_times.append(seconds)
    print(f"cache init (key {RANDOMX_KEY.decode()}, light mode): best {min(init_times):.2f} s "
          f"of {', '.join(f'{t:.2f}' for t in init_times)}")

    best = {}
    for threads in args.threads:
        rates = [hash_rate(hasher, threads, args.seconds) for _ in range(args.reps)]
        best[threads] = max(rates)
        print(f"{threads} thread(s): best {best[threads]:.1f} H/s "
              f"(runs: {', '.join(f'{r:.1f}' for r in rates)}; "
              f"{best[threads] / threads:.1f} H/s per thread)")
    base = best.get(1)
    if base:
        for threads, rate in best.items():
            if threads != 1:
                print(f"scaling {threads} vs 1 thread: {rate / base:.2f}x "
                      f"(ideal {threads:.0f}x)")


if __name__ == "__main__":
    main()
