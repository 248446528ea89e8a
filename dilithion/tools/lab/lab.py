"""The running lab: nodes, the proxies on their links, scripted peers, a
resource sampler, and the propagation measurement.  :meth:`Lab.close` stops
everything it started, whatever happened (errors, Ctrl+C).

Propagation of a block = from the moment its miner connected it to the moment
each other node connected it, read from each node's ``getblockpropagation``
record (wall-clock times; all nodes share this machine's clock).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair
from dilithion.rpc.client import RPCCallError, RPCClientError
from dilithion.testing.ports import free_port
from dilithion.testing.swarm import PeerSwarm
from dilithion.tools.lab.labnode import START_TIMEOUT_S, LabError, LabNode, check_port_free
from dilithion.tools.lab.proxy import FaultProxy

__all__ = ["Lab", "BlockRecord", "SAMPLED_METRICS", "total"]

#: Metrics sampled over time (name in the node's exposition -> results key).
SAMPLED_METRICS = {"message_queue_depth": "queue_depth",
                   "send_timeout_errors_total": "send_timeouts",
                   "socket_errors_total": "socket_errors",
                   "bytes_sent_total": "bytes_sent",
                   "block_broadcast_failures_total": "broadcast_failures",
                   "connected_peers_count": "peers",
                   "randomx_vms": "randomx_vms",      # the leak verdict subtracts VMs
                   "chain_height": "height"}          # ... and the chain's own growth


def total(values) -> float | None:
    """The sum of sampled figures, or None ("missing", never 0) when there is none or
    one of them is missing: a node that exports nothing must not read as a clean one."""
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def payee(name: str) -> str:
    """A distinct coinbase address per node, so two sides of a partition fork."""
    return KeyPair.from_seed(hashlib.sha3_256(f"lab-{name}".encode()).digest()).address()


@dataclass
class BlockRecord:
    hash: str
    miner: str
    mined_at: float                       # wall clock when the miner connected it
    connected: dict[str, float] = field(default_factory=dict)
    miner_peers: list = field(default_factory=list)   # the miner's per-peer record
    #: Wall clock when the miner's ``generatetoaddress`` returned (last block of a call
    #: only): how long the mining side was held after the block connected.
    returned_at: float | None = None

    def to_json(self, nodes: list[str], parents: dict[str, str]) -> dict:
        prop = {n: round(t - self.mined_at, 4) for n, t in self.connected.items() if n != self.miner}
        others = [n for n in nodes if n != self.miner]
        complete = all(n in prop for n in others)
        hops = {n: round(self.connected[n] - self.connected[p], 4) for n, p in parents.items()
                if n in self.connected and p in self.connected}
        return {"hash": self.hash, "miner": self.miner, "mined_at": self.mined_at,
                "propagation_s": prop,   # "to all" = to all of ``nodes``, the ones judged
                "to_all_s": max(prop[n] for n in others) if complete and others else None,
                "complete": complete, "hops_s": hops, "miner_peers": self.miner_peers,
                "miner_held_s": (round(self.returned_at - self.mined_at, 4)
                                 if self.returned_at is not None else None)}


def _plain(value):
    """RPC JSON (decimals) -> floats, for results.json."""
    return json.loads(json.dumps(value, default=float))


class Lab:
    """Owns every process, proxy and thread of one scenario run."""

    def __init__(self, out: Path, *, network: str = "regtest", base_port: int | None = None,
                 node_args: list[str] | None = None, sample_interval: float = 2.0,
                 node_program: list[str] | None = None) -> None:
        self.out = out
        #: The program every node runs (None: the real ``dilithion-node``; the tests
        #: give a defective node here, see ``tests/defective_node.py``).
        self.node_program = node_program
        self.network = network
        self.base_port = base_port
        self.node_args = list(node_args or [])
        self.nodes: list[LabNode] = []
        self.proxies: dict[tuple[str, str], FaultProxy] = {}
        self.light: list[PeerSwarm] = []
        #: Other processes the lab stops on close (the C++ nodes of ``mixed``).
        self.foreign: list = []
        self.sample_interval = sample_interval
        self.samples: list[dict] = []
        #: Samples of a serving node that could not be read (each: t, node, error):
        #: a gap in the evidence, recorded instead of skipped.
        self.sample_failures: list[dict] = []
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self.magic = {"regtest": ChainParams.regtest, "testnet": ChainParams.testnet}[network]().magic

    # -- building ------------------------------------------------------------------
    def add_node(self, env: dict | None = None) -> LabNode:
        """A node on three ports of the harness's allocator, which nobody else can take
        before the node binds them (:mod:`dilithion.testing.ports`); with ``--base-port``
        on the operator's ports, checked free now: a clash there is an error that asks
        for another base port, since the lab may not move a node the operator placed."""
        i = len(self.nodes)
        if self.base_port is not None:
            ports = tuple(self.base_port + 3 * i + k for k in range(3))
            for p in ports:
                check_port_free(p)
        else:
            ports = (free_port(), free_port(), free_port())
        node = LabNode(f"n{i}", self.out / "nodes", ports, self.network, self.node_args, env,
                       node_program=self.node_program)
        self.nodes.append(node)
        return node

    def link(self, a: LabNode, b: LabNode, rcvbuf: int | None = None) -> FaultProxy:
        """``a`` dials ``b`` through a new fault proxy (``rcvbuf``: see :class:`FaultProxy`)."""
        proxy = FaultProxy(("127.0.0.1", b.p2p_port), name=f"{a.name}-{b.name}", rcvbuf=rcvbuf,
                           magic=self.magic)
        self.proxies[(a.name, b.name)] = proxy
        a.connect.append(proxy.address)
        return proxy

    def proxy(self, a: LabNode, b: LabNode) -> FaultProxy:
        return self.proxies.get((a.name, b.name)) or self.proxies[(b.name, a.name)]

    def neighbours(self, node: LabNode) -> list[str]:
        return [b if a == node.name else a for a, b in self.proxies if node.name in (a, b)]

    def start(self) -> None:
        for node in self.nodes:
            node.launch()
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in self.nodes:
            node.wait_running(deadline)
        self._sampler = threading.Thread(target=self._sample_loop, name="lab-sampler", daemon=True)
        self._sampler.start()

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Every node has a handshaken peer on each of its links."""
        self.wait_for(lambda: all(self.peer_count(n) >= len(self.neighbours(n)) for n in self.nodes),
                      timeout, "the nodes did not connect to each other")

    def peer_count(self, node: LabNode) -> int:
        return len(node.rpc("getpeerinfo"))

    def add_light_peers(self, count: int) -> PeerSwarm:
        swarm = PeerSwarm(self.magic, [("127.0.0.1", n.p2p_port) for n in self.nodes], count)
        self.light.append(swarm.start())
        return swarm

    def add_fetching_peers(self, per_node: int) -> PeerSwarm:
        """``per_node`` scripted peers on every node, each from its own loopback address,
        each fetching every block it is told about."""
        swarm = PeerSwarm(self.magic, [("127.0.0.1", n.p2p_port) for n in self.nodes],
                          per_node * len(self.nodes), fetch=True, hosts=True)
        self.light.append(swarm.start())
        return swarm

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Poll (bounded) until ``predicate()``; RPC errors of a starting node are retried."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (RPCClientError, OSError):
                pass
            time.sleep(0.2)
        raise LabError(f"{what} within {timeout:g} s")

    # -- mining and measuring ---------------------------------------------------------
    def mine(self, node: LabNode, n: int = 1) -> list[BlockRecord]:
        hashes = node.rpc("generatetoaddress", [n, payee(node.name)], timeout=120 + 2 * n)
        returned = time.time()
        records = []
        for h in hashes:
            rec = node.rpc("getblockpropagation", [h])
            records.append(BlockRecord(h, node.name, float(rec["connected"])))
        if records:
            records[-1].returned_at = returned
        return records

    def collect(self, blocks: list[BlockRecord], timeout: float, nodes: list[LabNode] | None = None,
                tick=None) -> None:
        """Fill each block's connect time per node (bounded by ``timeout``)."""
        nodes = nodes or self.nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = 0
            for b in blocks:
                for node in nodes:
                    if node.name in b.connected or not node.is_running():
                        continue
                    try:
                        rec = node.rpc("getblockpropagation", [b.hash], timeout=10)
                    except RPCCallError:
                        pending += 1
                        continue
                    except (RPCClientError, OSError):
                        continue
                    b.connected[node.name] = float(rec["connected"])
            if tick:
                tick()
            if not pending and all(len(b.connected) >= len(nodes) for b in blocks):
                break
            time.sleep(0.2)
        for b in blocks:            # the miner's per-peer record, complete by now
            miner = next((n for n in self.nodes if n.name == b.miner), None)
            if miner is not None and miner.is_running():
                try:
                    b.miner_peers = _plain(miner.rpc("getblockpropagation", [b.hash])["peers"])
                except (RPCClientError, OSError):
                    pass

    def tips(self) -> dict[str, str]:
        return {n.name: n.rpc("getbestblockhash") for n in self.nodes if n.is_running()}

    def converged(self) -> bool:
        return len(set(self.tips().values())) == 1

    # -- sampling -------------------------------------------------------------------------
    def _sample_loop(self) -> None:
        """A sample as soon as the nodes serve, then one per interval: the sampled span
        starts before the scenario's clock does, so a ``load --duration 3600`` covers
        its hour (waiting an interval first left it a few seconds short)."""
        self.sample_now()
        while not self._stop.wait(self.sample_interval):
            self.sample_now()

    def sample_now(self) -> None:
        """One sample per serving node.  A metric the node does not export is recorded
        as None and named in the row's ``missing`` (never read as 0); a sample that
        fails on a node that still runs is recorded in :attr:`sample_failures`
        (a node stopped or killed meanwhile is not sampled, and is no failure)."""
        t = time.time()
        for node in self.nodes:
            if not (node.is_running() and node.serving):
                continue
            try:
                row = {"t": t, "node": node.name, **node.resources()}
                m = node.metrics()
            except Exception as exc:   # noqa: BLE001 - recorded, judged by the gate
                if node.is_running() and node.serving:
                    self.sample_failures.append({"t": t, "node": node.name,
                                                 "error": str(exc)[:200]})
                else:
                    logger.debug(f"{node.name} stopped while sampled: {exc}")
                continue
            missing = [key for key in SAMPLED_METRICS if key not in m]
            for key, name in SAMPLED_METRICS.items():
                row[name] = m.get(key)
            if missing:
                row["missing"] = missing
            self.samples.append(row)

    def counters(self) -> dict[str, dict[str, float | None]]:
        """The last sampled counters per node (send timeouts, socket errors, bytes
        sent...); None where the node did not export the metric."""
        last: dict[str, dict] = {}
        for row in self.samples:
            last[row["node"]] = row
        return {n: {k: row.get(k) for k in SAMPLED_METRICS.values()} for n, row in last.items()}

    def close(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        for swarm in self.light:
            swarm.stop()
        for node in [*self.nodes, *self.foreign]:
            try:
                node.stop()
            except Exception:   # noqa: BLE001 - keep stopping the others
                node.kill()
        for proxy in self.proxies.values():
            proxy.stop()
