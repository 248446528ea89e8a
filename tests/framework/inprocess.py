"""``InProcessNode``: a node inside the test process, assembled exactly as the program does.

It is built by :class:`dilithion.node.init.NodeAssembly` (the same code
``dilithion-node`` runs), on loopback with free ports, and offers the common
:class:`TestNode` interface (RPC through its real JSON-RPC server with the
datadir's cookie, metrics from its registry) plus direct access for tests that
need the components: ``ctx``, ``chain``, ``connman``, ``load(blocks)``.

Differences from a process, by nature: several in-process nodes share one log
(``log_text`` is everything this process logged while the node ran), and
``kill`` cannot skip the shutdown code (a process cannot SIGKILL part of
itself): use :class:`ProcessNode` for crash tests.
"""
from __future__ import annotations

import threading
from pathlib import Path

from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.net.connection import TransportConfig
from dilithion.net.protocol import MsgPing, decode_payload
from dilithion.node.init import NodeAssembly, NodeConfig
from dilithion.node.log_rate_limit import LogRateLimiter
from dilithion.node.logging_setup import RateLimitedSink
from dilithion.primitives.block import Block, Uint256
from dilithion.testing.wire_peer import RawPeer

from .chains import REGTEST
from .node import MetricKey, TestNode, metric_key
from .util import wait_until

__all__ = ["InProcessNode", "raw_peer", "next_commands"]


class _ProcessLog:
    """Everything loguru writes in this process from the moment a node starts."""

    _lock = threading.Lock()

    def __init__(self, limiter: LogRateLimiter | None = None) -> None:
        self._lines: list[str] = []
        self._run_start = 0
        self._sink_id: int | None = None
        self._sink = self._write if limiter is None else RateLimitedSink(self._write, limiter)

    def new_run(self) -> None:
        with self._lock:
            self._run_start = len(self._lines)
            if self._sink_id is None:
                self._sink_id = logger.add(self._sink, level="DEBUG", format="{level}: {message}")

    def close(self) -> None:
        with self._lock:
            if self._sink_id is not None:
                logger.remove(self._sink_id)
                self._sink_id = None

    def _write(self, message) -> None:
        self._lines.append(str(message).rstrip("\n"))

    def text(self, all_runs: bool) -> str:
        lines = self._lines if all_runs else self._lines[self._run_start:]
        return "\n".join(lines) + ("\n" if lines else "")


class InProcessNode(TestNode):
    """One node in this process.  ``extra_args`` understands the node program's
    ``--connect=``, ``--addnode=``, ``--mine``, ``--threads=``, ``--strict`` and
    ``--randomx=``;
    ``coins=False`` makes a relay-only node without UTXO set and mempool;
    ``log_limiter`` puts this node's captured log behind that
    :class:`LogRateLimiter` (the node program's sinks have one by default; the
    captured log of other in-process nodes stays unlimited);
    further keyword arguments are :class:`TransportConfig` limits and timers."""

    def __init__(self, workdir: Path, name: str, extra_args=(), *, datadir: Path | None = None,
                 params: ChainParams = REGTEST, coins: bool = True, rpc: bool = True,
                 broadcaster_options: dict | None = None,
                 log_limiter: LogRateLimiter | None = None, **transport_kw) -> None:
        self.name = name
        self.datadir = Path(datadir or Path(workdir) / name)
        self.extra_args = list(extra_args)
        self.params = params
        self.coins = coins
        self.rpc_enabled = rpc
        self.broadcaster_options = dict(broadcaster_options or {})
        self.transport_kw = transport_kw
        self.p2p_port = 0             # a free port at the first start, kept for restarts
        self.rpc_port = 0
        self.assembly: NodeAssembly | None = None
        self._log = _ProcessLog(log_limiter)

    # ---- lifecycle ---------------------------------------------------------------
    def _config(self) -> NodeConfig:
        config = NodeConfig(network=self.params.get_network_name(), datadir=self.datadir,
                            p2p_port=self.p2p_port, rpc_port=self.rpc_port if self.rpc_port else 0,
                            bind="127.0.0.1", rpc=self.rpc_enabled, coins=self.coins,
                            broadcaster_options=self.broadcaster_options, process_metrics=False,
                            transport=TransportConfig(**self.transport_kw) if self.transport_kw else None)
        for arg in self.extra_args:
            flag, _, value = arg.partition("=")
            if flag == "--connect":
                config.connect_nodes.append(value)
            elif flag == "--addnode":
                config.add_nodes.append(value)
            elif flag == "--mine":
                config.start_mining = True
            elif flag == "--threads":
                config.mining_threads = int(value)
            elif flag == "--strict":
                config.strict = True
            elif flag == "--randomx":
                config.randomx = value
            else:
                raise ValueError(f"InProcessNode does not understand {arg!r}")
        if config.start_mining and not config.mining_threads:
            config.mining_threads = 1
        return config

    def start(self) -> "InProcessNode":
        self._log.new_run()
        self.assembly = NodeAssembly(self._config())
        try:
            self.assembly.start()
        except BaseException:
            self.assembly.stop(quiet=True)
            self.assembly = None
            raise
        self.p2p_port = self.ctx.connman.listen_port
        if self.ctx.rpc_server is not None:
            self.rpc_port = self.ctx.rpc_server.port
        return self

    def stop(self) -> None:
        if self.assembly is not None:
            self.assembly.stop(quiet=True)
            self.assembly = None

    def kill(self) -> None:
        """The clean stop: a process cannot SIGKILL part of itself (see the module docstring)."""
        self.stop()

    def close(self) -> None:
        """Stop the node and stop capturing the log."""
        self.stop()
        self._log.close()

    def is_running(self) -> bool:
        return self.assembly is not None

    # ---- the TestNode primitives -----------------------------------------------------
    def metric_samples(self) -> dict[MetricKey, float]:
        return {metric_key(sample.name, sample.labels): sample.value
                for family in self.ctx.metrics.registry.collect() for sample in family.samples}

    def log_text(self, all_runs: bool = False) -> str:
        return self._log.text(all_runs)

    # ---- in-process access -----------------------------------------------------------
    @property
    def ctx(self):
        if self.assembly is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.assembly.ctx

    @property
    def chain(self):
        return self.ctx.chainstate

    @property
    def connman(self):
        return self.ctx.connman

    def height(self) -> int:
        return self.chain.height()

    def best_hash(self) -> str:
        return self.chain.tip().hash.get_hex()

    def peers(self) -> list[dict]:
        """``getpeerinfo``'s answer, read from the transport (works with ``rpc=False``)."""
        return self.connman.peer_info()

    def load(self, blocks: list[tuple[Block, Uint256]]) -> None:
        """Connect known blocks directly (hash given, so no RandomX work), as test
        set-up: returns once the broadcaster has finished announcing them, so a
        peer that connects afterwards is not sent a stale tip ``inv``."""
        for block, h in blocks:
            if self.chain.get_index(h) is None:
                self.chain.process_new_block(block, block_hash=h)
        self.wait_for_broadcasts()

    def wait_for_broadcasts(self, timeout: float = 10.0) -> None:
        """Until every queued announcement is resolved (sent or given up)."""
        diag = self.ctx.broadcaster.diagnostics
        wait_until(lambda: (lambda d: d["tasks_done"] + d["tasks_failed"] == d["tasks_queued"]
                            and not d["pending_retries"])(diag()), timeout)

    def dial(self, other: TestNode, timeout: float = 5.0) -> int:
        """Dial ``other`` on the transport; our peer id once both handshakes are done."""
        before = other._handshaken_inbound_ids()
        peer_id = self.connman.connect("127.0.0.1", other.p2p_port)
        assert peer_id is not None
        assert self.connman.wait_for_handshake(peer_id, timeout)
        wait_until(lambda: other._handshaken_inbound_ids() - before, timeout)
        return peer_id

    def peer_id_of(self, raw: RawPeer) -> int:
        """Our id for the connection a ``RawPeer`` made to us."""
        port = raw.sock.getsockname()[1]
        for p in self.connman.peer_manager.get_connected_peers():
            if p.port == port:
                return p.id
        raise LookupError(f"no peer from port {port}")


def raw_peer(node: InProcessNode, agent: bytes = b"/p2p_util:0.1/", start_height: int = 0,
             relay: bool = True, rcvbuf: int | None = None) -> RawPeer:
    """A raw test peer that finished the handshake with ``node``."""
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    peer = RawPeer(node.p2p_port, node.params.magic, rcvbuf=rcvbuf, user_agent=agent)
    peer.handshake(start_height=start_height, relay=relay, nonce=7)
    wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return peer


def next_commands(peer: RawPeer, until: str = "pong", timeout: float = 5.0) -> list:
    """Decoded messages up to (excluding) the first ``until``; a ping sent first
    makes the node's pong the end marker, so silence is observable."""
    peer.send(MsgPing(99))
    out = []
    while True:
        msg = peer.read_message(timeout)
        assert msg is not None, "connection closed"
        if msg.command == until:
            return out
        if msg.command != "ping":
            out.append((msg.command, decode_payload(msg.command, msg.payload)))
