#!/usr/bin/env python3
"""What the honest side sees while hostile peers attack a real node (issue 21's report).

    .venv/bin/python contrib/bench/bench_hostile.py [--attack NAME ...] [--seconds 20]
        [--addresses 3] [--out results.json]

For every attack of the resource-budget table (``docs/P2P.md``, "Resource
budget") and then for all of them at once, a **fresh** regtest
``dilithion-node`` process (real sockets, LevelDB, RandomX in light mode) is
loaded with four blocks of 4 MiB each, then attacked for ``--seconds`` from
loopback addresses of its own (127.0.0.10, 127.0.0.11, ...; ``--addresses``
connections per attack, each from its own address, reconnecting when the node
drops them).  The honest side is on 127.0.0.1: a wire peer that, five seconds
into the attack, announces the next block (``inv``, waits for ``getdata``,
sends the block), and an operator calling RPC ``getblockcount`` every 0.25 s.

Reported per attack, against issue 21's targets:

* ``block s``: from the honest ``inv`` until RPC reports the block as the tip
  (target < 5 s);
* ``rpc max s``: the slowest operator RPC call during the attack (< 2 s);
* ``rss MiB``: the node's peak RSS minus its RSS before the attack (< 100 MiB);
* ``log MiB``, ``datadir MiB``: growth of the node's log (stdout + stderr) and
  of its datadir over the attack (< 16 MiB each).

Wall-clock figures on a shared two-core machine (the attackers run here too):
this is a benchmark, not a test; the default suite asserts the defences with
counts (``tests/test_p2p_*``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402

from dilithion.crypto.randomx_hash import RandomXHasher  # noqa: E402
from dilithion.net.protocol import (Address, Inv, InvType, MsgAddr, MsgBlock, MsgGetaddr,  # noqa: E402
                                    MsgGetblocks, MsgGetdata, MsgInv, MsgPing, MsgTx, MsgVersion)
from dilithion.primitives.block import Block, BlockHeader, Uint256  # noqa: E402
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut  # noqa: E402
from framework import REGTEST, ProcessNode, RawPeer, frame_raw, regtest_chain, side_block  # noqa: E402

MiB = 1024 * 1024
MAGIC = REGTEST.magic
BLOCK = InvType.MSG_BLOCK_INV
TX = InvType.MSG_TX_INV
#: Issue 21's targets for the honest side.
TARGETS = {"block_s": 5.0, "rpc_max_s": 2.0, "rss_mib": 100.0, "log_mib": 16.0, "datadir_mib": 16.0}
BIG_BLOCKS = 4
BIG_BODY = 4 * MiB
HONEST_AFTER_S = 5.0


# ---------------------------------------------------------------------------- material
@dataclass
class Material:
    """Blocks every run uses: the big main chain, the honest block, side blocks."""

    big: list[tuple[Block, Uint256]]
    honest: tuple[Block, Uint256]
    side: list[tuple[Block, Uint256]]

    @classmethod
    def make(cls, side_blocks: int = 24) -> "Material":
        hasher = RandomXHasher.for_key()
        genesis = regtest_chain(0)[0][1]
        t0 = REGTEST.genesis_time
        big, parent = [], genesis
        for i in range(BIG_BLOCKS):
            block = side_block(hasher, parent, os.urandom(BIG_BODY), t0 + 60 * (i + 1))
            big.append(block)
            parent = block[1]
        honest = side_block(hasher, parent, os.urandom(1024), t0 + 60 * (BIG_BLOCKS + 1))
        side = [side_block(hasher, genesis, os.urandom(MiB), t0 + 61 + i) for i in range(side_blocks)]
        return cls(big, honest, side)


# ---------------------------------------------------------------------------- attackers
def version_msg(user_agent: bytes = b"/attack:0.1/", height: int = BIG_BLOCKS) -> MsgVersion:
    return MsgVersion(timestamp=int(time.time()), nonce=random.getrandbits(63) + 1,
                      user_agent=user_agent, start_height=height)


@dataclass
class AttackStats:
    connections: int = 0
    messages: int = 0
    dropped: int = 0


class Attacker(threading.Thread):
    """One hostile connection from its own address, re-established when the node
    drops it, running ``step(peer)`` until ``stop`` is set."""

    def __init__(self, name: str, host: str, port: int, step: Callable, stop: threading.Event,
                 stats: AttackStats, handshake: bool = True, reads: bool = True,
                 rcvbuf: int | None = None) -> None:
        super().__init__(name=f"attack-{name}-{host}", daemon=True)
        self.host, self.port, self.step = host, port, step
        self.stop, self.stats = stop, stats
        self.handshake, self.reads, self.rcvbuf = handshake, reads, rcvbuf

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                peer = RawPeer(self.port, MAGIC, bind_host=self.host, rcvbuf=self.rcvbuf,
                               timeout=2.0)
            except OSError:
                self.stop.wait(0.2)
                continue
            self.stats.connections += 1
            try:
                if self.handshake:
                    peer.handshake(version_msg(), timeout=5.0)
                if self.reads:
                    threading.Thread(target=self._drain, args=(peer,), daemon=True).start()
                while not self.stop.is_set():
                    self.step(peer)
                    self.stats.messages += 1
            except (OSError, TimeoutError, ConnectionError):
                self.stats.dropped += 1
            finally:
                peer.close()
            self.stop.wait(0.2)

    def _drain(self, peer: RawPeer) -> None:
        try:
            while peer.sock.fileno() >= 0 and peer.sock.recv(1 << 20):
                pass
        except OSError:
            pass


def attacks(material: Material) -> dict[str, dict]:
    """Name -> how one attacking connection behaves (``step``, handshake, reads)."""
    big_hashes = [bytes(h) for _, h in material.big]

    def junk_tx(peer):  # spends a made-up coin with a made-up 3,309-byte "signature"
        peer.send(MsgTx(Transaction(vin=[TxIn(OutPoint(os.urandom(32), 0), os.urandom(3309))],
                                    vout=[TxOut(1000, os.urandom(25))])))

    def send(msg):
        return lambda peer: peer.send(msg)

    def junk_block(peer):
        header = BlockHeader(1, Uint256(os.urandom(32)), Uint256(os.urandom(32)),
                             int(time.time()), REGTEST.genesis_bits, random.getrandbits(32))
        peer.send(MsgBlock(Block(header, os.urandom(64 * 1024))))

    def mutated(peer):
        block, _ = random.choice(material.big)
        peer.send(MsgBlock(Block(block.header, block.vtx + os.urandom(16))))

    def side(peer):
        peer.send(MsgBlock(random.choice(material.side)[0]))

    def bad_checksum(peer):
        data = bytearray(frame_raw(MAGIC, "inv", b"\x01" + bytes(36)))
        data[20] ^= 0xFF
        peer.send_raw(bytes(data))

    def trickle(peer):
        if not getattr(peer, "announced", False):
            peer.send_raw(frame_raw(MAGIC, "block", b"", size=32 * MiB - 1)[:24])
            peer.announced = True
        peer.send_raw(os.urandom(64 * 1024))
        time.sleep(0.05)

    def huge_version(peer):
        peer.send(version_msg(b"A" * MiB))
        peer.is_closed(2.0)
        raise ConnectionError("reconnect")

    def churn(peer):
        raise ConnectionError("reconnect")

    def silent(peer):
        time.sleep(0.5)

    unknown = [Inv(BLOCK, os.urandom(32)) for _ in range(50_000)]
    return {
        "version-huge-ua": dict(step=huge_version, handshake=False),
        "ping-flood": dict(step=send(MsgPing(1))),
        "ping-trailing": dict(step=lambda p: p.send_raw(frame_raw(MAGIC, "ping", os.urandom(MiB)))),
        "getaddr": dict(step=send(MsgGetaddr())),
        "addr-50k": dict(step=send(MsgAddr([Address.from_ipv4("10.1.2.3", 8444)] * 50_000))),
        "inv-50k-blocks": dict(step=lambda p: p.send(MsgInv([Inv(BLOCK, os.urandom(32))
                                                             for _ in range(50_000)]))),
        "inv-50k-tx": dict(step=lambda p: p.send(MsgInv([Inv(TX, os.urandom(32))
                                                         for _ in range(50_000)]))),
        "getdata-unknown": dict(step=send(MsgGetdata(unknown))),
        "getdata-big-noread": dict(step=send(MsgGetdata([Inv(BLOCK, h) for h in big_hashes] * 100)),
                                   reads=False, rcvbuf=4096),
        "getblocks": dict(step=send(MsgGetblocks([bytes(32)]))),
        "junk-blocks": dict(step=junk_block),
        "mutated-copies": dict(step=mutated),
        "unrequested-side": dict(step=side),
        "tx-junk": dict(step=junk_tx),
        "unknown-cmd": dict(step=lambda p: p.send_raw(frame_raw(MAGIC, "wibble", os.urandom(MiB)))),
        "bad-checksum": dict(step=bad_checksum),
        "trickle-huge": dict(step=trickle),
        "conn-churn": dict(step=churn, handshake=False),
        "silent-slots": dict(step=silent, handshake=False),
    }


# ---------------------------------------------------------------------------- the honest side
class Operator(threading.Thread):
    """Calls ``getblockcount`` every 0.25 s and keeps the slowest call (or the failure)."""

    def __init__(self, node: ProcessNode, stop: threading.Event) -> None:
        super().__init__(name="operator", daemon=True)
        self.node, self.stop = node, stop
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                self.node.rpc("getblockcount", timeout=30.0)
                self.latencies.append(time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - a failed call is a result
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(0.25)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, stop: threading.Event) -> None:
        super().__init__(name="rss", daemon=True)
        self.proc, self.stop = psutil.Process(pid), stop
        self.peak = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self.stop.wait(0.2)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def log_bytes(node: ProcessNode) -> int:
    return sum(p.stat().st_size for p in (node.log.path, node.errlog.path) if p.exists())


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@dataclass
class Result:
    attack: str
    block_s: float | None = None
    rpc_max_s: float | None = None
    rpc_median_s: float | None = None
    rss_mib: float | None = None
    log_mib: float | None = None
    datadir_mib: float | None = None
    connections: int = 0
    messages: int = 0
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        failed = [k for k, limit in TARGETS.items()
                  if getattr(self, k) is None or getattr(self, k) >= limit]
        return "PASS" if not failed and not self.notes else "FAIL " + ",".join(failed + self.notes)


def run_one(workdir: Path, material: Material, names: list[str], addresses: int,
            seconds: float, first_host: int, node_args: list[str]) -> Result:
    """One fresh node, the named attacks at once, the honest side measured."""
    label = names[0] if len(names) == 1 else f"all ({len(names)} attacks)"
    node = ProcessNode(workdir, label.split()[0], node_args,
                       env={**os.environ, "DIL_RANDOMX": "light"})
    node.start()
    result = Result(label)
    try:
        honest = RawPeer(node.p2p_port, MAGIC, timeout=30.0)
        honest.handshake(version_msg(b"/honest:0.1/", 0))
        for block, _ in material.big:
            honest.send(MsgBlock(block))
        if not wait_for(lambda: node.height() == BIG_BLOCKS, 60):
            result.notes.append("preload failed")
            return result
        rss0 = psutil.Process(node.proc.pid).memory_info().rss
        log0, dir0 = log_bytes(node), dir_bytes(node.datadir)
        stop = threading.Event()
        stats = AttackStats()
        table = attacks(material)
        threads: list[threading.Thread] = [Operator(node, stop), RssSampler(node.proc.pid, stop)]
        host = first_host
        for name in names:
            spec = table[name]
            for _ in range(addresses):
                threads.append(Attacker(name, f"127.0.{host // 256}.{host % 256}", node.p2p_port,
                                        spec["step"], stop, stats, spec.get("handshake", True),
                                        spec.get("reads", True), spec.get("rcvbuf")))
                host += 1
        for t in threads:
            t.start()
        time.sleep(HONEST_AFTER_S)
        block, h = material.honest
        started = time.perf_counter()
        try:
            honest.send(MsgInv([Inv(BLOCK, bytes(h))]))
            honest.wait_for("getdata", 30.0)
            honest.send(MsgBlock(block))
            if wait_for(lambda: node.best_hash() == h.get_hex(), 60, 0.02):
                result.block_s = time.perf_counter() - started
            else:
                result.notes.append("honest block not connected in 60 s")
        except (OSError, TimeoutError, ConnectionError) as exc:
            result.notes.append(f"honest peer: {type(exc).__name__}")
        remaining = seconds - (time.perf_counter() - started) - HONEST_AFTER_S
        if remaining > 0:
            time.sleep(remaining)
        stop.set()
        for t in threads:
            t.join(10)
        operator, sampler = threads[0], threads[1]
        if operator.latencies:
            result.rpc_max_s = max(operator.latencies)
            result.rpc_median_s = statistics.median(operator.latencies)
        if operator.failures:
            result.notes.append(f"{len(operator.failures)} RPC failures ({operator.failures[0]})")
        result.rss_mib = max(0, sampler.peak - rss0) / MiB
        result.log_mib = (log_bytes(node) - log0) / MiB
        result.datadir_mib = (dir_bytes(node.datadir) - dir0) / MiB
        result.connections, result.messages = stats.connections, stats.messages
        if not node.is_running():
            result.notes.append("node exited")
        honest.close()
    finally:
        node.stop(check=False)
    return result


def fmt(value: float | None, spec: str = "7.2f") -> str:
    return format(value, spec) if value is not None else "      -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", action="append", help="run only these attacks (repeatable)")
    parser.add_argument("--seconds", type=float, default=20.0, help="attack duration per run")
    parser.add_argument("--addresses", type=int, default=3, help="attacking addresses per attack")
    parser.add_argument("--no-all", action="store_true", help="skip the all-at-once run")
    parser.add_argument("--only-all", action="store_true", help="run only the all-at-once run")
    parser.add_argument("--node-arg", action="append", default=[],
                        help="an extra dilithion-node argument (repeatable)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--workdir", type=Path,
                        help="keep the nodes' datadirs and logs here (default: a temporary directory)")
    args = parser.parse_args()
    print("making blocks (light-mode RandomX) ...", flush=True)
    material = Material.make()
    names = args.attack or list(attacks(material))
    unknown = set(names) - set(attacks(material))
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(sorted(unknown))}")
    runs = [] if args.only_all else [[n] for n in names]
    if args.only_all or not (args.no_all or args.attack):
        runs.append(names)
    print(f"{'attack':22} {'block s':>7} {'rpc max':>7} {'rpc p50':>7} {'rss MiB':>7} "
          f"{'log MiB':>7} {'dir MiB':>7} {'conns':>6} {'msgs':>7}  verdict", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        base = args.workdir or Path(tmp)
        for i, run in enumerate(runs):
            r = run_one(base / f"run{i}", material, run, args.addresses, args.seconds,
                        first_host=10, node_args=args.node_arg)
            results.append(r)
            print(f"{r.attack:22} {fmt(r.block_s)} {fmt(r.rpc_max_s)} {fmt(r.rpc_median_s)} "
                  f"{fmt(r.rss_mib, '7.1f')} {fmt(r.log_mib)} {fmt(r.datadir_mib)} "
                  f"{r.connections:6d} {r.messages:7d}  {r.verdict()}", flush=True)
    if args.out:
        args.out.write_text(json.dumps([asdict(r) | {"verdict": r.verdict()} for r in results],
                                       indent=2))
    return 0 if all(r.verdict() == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
