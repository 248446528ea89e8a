#!/usr/bin/env python3
"""Block-announcement benchmark on loopback (run on demand, not in the test suite).

    .venv/bin/python contrib/bench/bench_broadcast.py [--peers 125] [--stalled 25] [--rounds 20]

Measures, for a real node (transport + AsyncBroadcaster) with ``--peers`` raw
peers of which ``--stalled`` never read (their send queues are filled first):

1. how long ``broadcast_block`` takes to return (the mining thread's cost);
2. how long until every healthy peer has the ``inv`` in its socket;
3. how many messages per second one peer connection carries (node → peer,
   small ``inv`` messages, queue refusals retried).
"""
from __future__ import annotations

import argparse
import selectors
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from loguru import logger  # noqa: E402

from dilithion.net.protocol import Inv, InvType, MsgInv  # noqa: E402
from framework import InProcessNode, raw_peer  # noqa: E402


def fill(node: InProcessNode, peer_id: int) -> None:
    big = MsgInv([Inv(InvType.MSG_TX_INV, i.to_bytes(32, "little")) for i in range(1000)])
    small = MsgInv([Inv(InvType.MSG_TX_INV, bytes(32))])
    for _ in range(50):
        accepted = 0
        for msg in (big, small):
            while node.connman.send_message(peer_id, msg):
                accepted += 1
        if not accepted:
            return
        time.sleep(0.1)


def wait_all(sel: selectors.BaseSelector, peers: list, needle: bytes, timeout: float) -> float:
    """Read every healthy peer until each has ``needle``; returns when the last did."""
    missing = set(range(len(peers)))
    deadline = time.perf_counter() + timeout
    while missing and time.perf_counter() < deadline:
        for key, _ in sel.select(0.05):
            i = key.data
            raw = peers[i]
            raw.buf += raw.sock.recv(1 << 16)
            if needle in raw.buf:
                missing.discard(i)
                raw.buf = raw.buf[raw.buf.rindex(needle) + len(needle):]
    if missing:
        raise TimeoutError(f"{len(missing)} peers never got the inv")
    return time.perf_counter()


def bench_fanout(tmp: Path, n_peers: int, n_stalled: int, rounds: int) -> dict:
    # A long send deadline keeps the stalled peers connected (and stalled) for the whole run.
    node = InProcessNode(tmp, "fanout", coins=False, rpc=False, max_peers=n_peers + 5,
                         send_queue_cap=1 << 20, send_timeout_ms=600_000).start()
    try:
        healthy = [raw_peer(node) for _ in range(n_peers - n_stalled)]
        stalled = [raw_peer(node, rcvbuf=4096) for _ in range(n_stalled)]
        for raw in stalled:
            fill(node, node.peer_id_of(raw))
        sel = selectors.DefaultSelector()
        for i, raw in enumerate(healthy):
            raw.sock.setblocking(False)
            sel.register(raw.sock, selectors.EVENT_READ, i)
        returns, everyone = [], []
        for r in range(rounds):
            h = (0xB0000000 + r).to_bytes(4, "little") + b"\xcd" * 28
            t0 = time.perf_counter()
            node.ctx.broadcaster.broadcast_block(h)
            returns.append(time.perf_counter() - t0)
            everyone.append(wait_all(sel, healthy, h, 10.0) - t0)
        b = node.ctx.broadcaster
        deadline = time.monotonic() + 10
        while b.diagnostics()["pending_retries"] and time.monotonic() < deadline:
            time.sleep(0.05)
        diag = b.diagnostics()
        return {"return_ms": [x * 1000 for x in returns],
                "all_healthy_ms": [x * 1000 for x in everyone],
                "retried": diag["tasks_retried"],
                "given_up": node.metric("block_broadcast_failures_total"),
                "still_connected": node.connman.connected_count()}
    finally:
        node.close()


def bench_one_connection(tmp: Path, messages: int) -> float:
    node = InProcessNode(tmp, "pipe", coins=False, rpc=False).start()
    try:
        raw = raw_peer(node)
        pid = node.peer_id_of(raw)
        msg = MsgInv([Inv(InvType.MSG_BLOCK_INV, b"\x11" * 32)])
        frame_len = 24 + 1 + 36
        raw.sock.setblocking(True)
        t0 = time.perf_counter()
        sent = received = 0
        raw.sock.settimeout(0.001)
        while received < messages * frame_len:
            while sent < messages and node.connman.send_message(pid, msg):
                sent += 1
            try:
                received += len(raw.sock.recv(1 << 20))
            except (TimeoutError, BlockingIOError):
                pass
        return messages / (time.perf_counter() - t0)
    finally:
        node.close()


def summary(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values):.3f}  p90 {values[int(0.9 * (len(values) - 1))]:.3f}"
            f"  max {values[-1]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=125)
    ap.add_argument("--stalled", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fan = bench_fanout(tmp, args.peers, args.stalled, args.rounds)
        print(f"peers={args.peers} stalled={args.stalled} rounds={args.rounds}")
        print(f"broadcast_block return time (ms):      {summary(fan['return_ms'])}")
        print(f"until every healthy peer has inv (ms): {summary(fan['all_healthy_ms'])}")
        print(f"retries scheduled: {fan['retried']}, per-peer deliveries given up: "
              f"{fan['given_up']:.0f}, peers still connected: {fan['still_connected']}")
        rate = bench_one_connection(tmp, args.messages)
        print(f"one connection, node -> peer: {rate:,.0f} messages/s (61-byte inv)")


if __name__ == "__main__":
    main()
