#!/usr/bin/env python3
"""Block propagation along a 3-node line, and a fresh node's catch-up, per RandomX mode.

    .venv/bin/python contrib/bench/bench_propagation.py [--randomx=light|full]
        [--blocks=50] [--catchup=1000]

Three in-process regtest nodes A - B - C on loopback (real sockets, real
LevelDB, real RandomX; one process, so they share one RandomX dataset in full
mode).  Each block is mined outside the nodes and handed to A as its miner
would (``process_new_block`` with the hash known); every node's tip listener
stamps the moment the block connected there.  Reported: hop A->B, hop B->C and
A->C (p50, p95, max), each hop being inv -> getdata -> block -> one RandomX
verification -> store -> next inv; and, first, the time of one RandomX hash on
one thread in the same mode (the floor under every hop: a node verifies the
block's proof of work before it relays it).  Then ``--catchup`` blocks are loaded into A
and a fresh node D dials it: the time from the dial until D's tip is A's tip.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from loguru import logger  # noqa: E402

from dilithion.consensus.block_index import connected_indexes  # noqa: E402
from dilithion.crypto.randomx_hash import RandomXHasher  # noqa: E402
from dilithion.mining.template import mine_block  # noqa: E402
from framework import MINER, REGTEST, InProcessNode, regtest_chain, wait_until  # noqa: E402


class ConnectTimes:
    """Tip listener: ``perf_counter()`` when each block hash connected on one node.

    Written by the node's handler (or the caller's) thread, read by the
    benchmark thread; ``_lock`` guards ``times`` and ``arrived``.
    """

    def __init__(self) -> None:
        self.times: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self.arrived = threading.Condition(self._lock)

    def __call__(self, new_tip, connected, disconnected) -> None:
        now = time.perf_counter()
        with self._lock:
            for index in connected_indexes(new_tip, connected):
                self.times.setdefault(bytes(index.hash), now)
            self.arrived.notify_all()

    def wait_for(self, block_hash: bytes, timeout: float = 30.0) -> float:
        with self._lock:
            if not self.arrived.wait_for(lambda: block_hash in self.times, timeout):
                raise TimeoutError("block did not arrive")
            return self.times[block_hash]


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):7.2f} ms  p95 {p95:7.2f} ms  max {ms[-1]:7.2f} ms"


def one_hash(hasher: RandomXHasher, count: int) -> None:
    """Print the time of one hash on one thread (fresh headers, as a hop sees them)."""
    times = []
    for nonce in range(count):
        header = struct.pack("<76sI", b"hop floor", nonce)
        started = time.perf_counter()
        hasher.hash(header)
        times.append(time.perf_counter() - started)
    print(f"one hash  {percentiles(times)}", flush=True)


def line_propagation(workdir: Path, hasher: RandomXHasher, blocks: int) -> None:
    a, b, c = (InProcessNode(workdir, name, rpc=False).start() for name in "abc")
    try:
        b.dial(a)
        c.dial(b)
        stamps = {}
        for node in (a, b, c):
            stamps[node.name] = ConnectTimes()
            node.chain.add_tip_listener(stamps[node.name])
        hops_ab, hops_bc, ends = [], [], []
        for _ in range(blocks):
            tip = a.chain.tip()
            block, block_hash = mine_block(hasher, tip.hash, tip.height + 1,
                                           MINER.pub_key_hash(), REGTEST,
                                           now=REGTEST.genesis_time + 60 * (tip.height + 1))
            a.chain.process_new_block(block, block_hash=block_hash)
            key = bytes(block_hash)
            t_a = stamps["a"].wait_for(key)
            t_b = stamps["b"].wait_for(key)
            t_c = stamps["c"].wait_for(key)
            hops_ab.append(t_b - t_a)
            hops_bc.append(t_c - t_b)
            ends.append(t_c - t_a)
            time.sleep(0.05)                 # one block at a time, as the network sees them
        print(f"hop A->B  {percentiles(hops_ab)}")
        print(f"hop B->C  {percentiles(hops_bc)}")
        print(f"per hop   {percentiles(hops_ab + hops_bc)}")
        print(f"A->C      {percentiles(ends)}", flush=True)
    finally:
        for node in (c, b, a):
            node.close()


def catch_up(workdir: Path, count: int) -> None:
    chain = regtest_chain(count)
    server = InProcessNode(workdir, "server", rpc=False).start()
    fresh = InProcessNode(workdir, "fresh", rpc=False).start()
    try:
        server.load(chain[1:])
        target = bytes(chain[count][1])
        done = ConnectTimes()
        fresh.chain.add_tip_listener(done)
        started = time.perf_counter()
        fresh.connman.connect("127.0.0.1", server.p2p_port)
        finished = done.wait_for(target, timeout=600)
        wait_until(lambda: fresh.height() == count, timeout=10)
        seconds = finished - started
        print(f"catch-up  {count} blocks in {seconds:.2f} s "
              f"({count / seconds:.0f} blocks/s, {seconds / count * 1000:.2f} ms per block)",
              flush=True)
    finally:
        fresh.close()
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--randomx", choices=("light", "full"), default="full")
    parser.add_argument("--blocks", type=int, default=50, help="blocks sent along the line")
    parser.add_argument("--catchup", type=int, default=1000, help="blocks for the catch-up")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    hasher = RandomXHasher.for_key()
    if args.randomx == "full":
        build = hasher.start_full_mode()
        build.done.wait()
        if build.state != "ready":
            print(f"full mode unavailable: {build.reason}")
            return 1
    print(f"RandomX mode: {hasher.mode}", flush=True)
    one_hash(hasher, 200 if hasher.mode == "full" else 30)
    regtest_chain(args.catchup)      # mined before any timing (cached for the process)
    with tempfile.TemporaryDirectory(prefix="dil-bench-prop-") as tmp:
        line_propagation(Path(tmp) / "line", hasher, args.blocks)
        if args.catchup:
            catch_up(Path(tmp) / "catchup", args.catchup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
