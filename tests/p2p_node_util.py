"""Real in-process nodes for the relay tests: LevelDB chain state, transport,
broadcaster and P2P handlers, on loopback.

``regtest_chain(n)`` mines a real regtest chain once per test session (the
chain is extended on demand and shared by every test module), so a 300-block
chain costs its ~15 s only once.
"""
from __future__ import annotations

import time
from pathlib import Path

from dilithion.consensus.chain import ChainState
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.template import mine_block
from dilithion.net.connection import TransportConfig
from dilithion.net.protocol import MsgPing, MsgVersion, decode_payload
from dilithion.node.genesis import create_genesis_block
from dilithion.node.init import NodeAssembly, NodeConfig
from dilithion.primitives.block import Block, Uint256
from p2p_util import RawPeer, wait_until  # noqa: F401  (re-exported for the relay tests)

REGTEST = ChainParams.regtest()
#: Owns every coinbase of the session chain (the tx relay tests spend them).
MINER = KeyPair.from_seed(bytes(range(32)))

_CHAIN: list[tuple[Block, Uint256]] = []


def regtest_chain(n: int) -> list[tuple[Block, Uint256]]:
    """Blocks 0..n of the session's regtest chain as ``(block, hash)`` pairs."""
    hasher = RandomXHasher.for_key()
    if not _CHAIN:
        genesis = create_genesis_block(REGTEST)
        _CHAIN.append((genesis, genesis.get_hash(hasher)))
    while len(_CHAIN) <= n:
        height = len(_CHAIN)
        block, h = mine_block(hasher, _CHAIN[-1][1], height, MINER.pub_key_hash(), REGTEST,
                              now=REGTEST.genesis_time + 60 * height)
        _CHAIN.append((block, h))
    return _CHAIN[:n + 1]


class Node:
    """One Python node in this process, assembled exactly as the node program does
    (:class:`NodeAssembly`), on loopback with a free port and no RPC server."""

    def __init__(self, datadir: Path, params: ChainParams = REGTEST, with_mempool: bool = False,
                 broadcaster_kw: dict | None = None, **transport_kw) -> None:
        config = NodeConfig(network=params.get_network_name(), datadir=datadir, p2p_port=0,
                            bind="127.0.0.1", rpc=False, coins=with_mempool,
                            broadcaster_options=broadcaster_kw or {}, process_metrics=False,
                            transport=TransportConfig(**transport_kw) if transport_kw else None)
        self.assembly = NodeAssembly(config)
        self.ctx = self.assembly.ctx
        try:
            self.assembly.start()
        except BaseException:
            self.assembly.stop(quiet=True)
            raise
        self.connman = self.ctx.connman

    @property
    def port(self) -> int:
        return self.connman.listen_port

    @property
    def chain(self) -> ChainState:
        return self.ctx.chainstate

    def height(self) -> int:
        return self.chain.height()

    def load(self, blocks: list[tuple[Block, Uint256]]) -> None:
        """Connect known blocks (hash given, so no RandomX work)."""
        for block, h in blocks:
            if self.chain.get_index(h) is None:
                self.chain.process_new_block(block, block_hash=h)

    def connect_to(self, other: "Node", timeout: float = 5.0) -> int:
        """Dial ``other``; returns our peer id once both sides finished the handshake."""
        peer_id = self.connman.connect("127.0.0.1", other.port)
        assert peer_id is not None
        assert self.connman.wait_for_handshake(peer_id, timeout)
        assert wait_until(lambda: len(other.connman.peer_manager.handshake_complete_peers())
                          >= 1, timeout)
        return peer_id

    def peer_id_of(self, raw) -> int:
        """Our id for the connection a ``RawPeer`` made to us."""
        port = raw.sock.getsockname()[1]
        for p in self.connman.peer_manager.get_connected_peers():
            if p.port == port:
                return p.id
        raise LookupError(f"no peer from port {port}")

    def metric(self, name: str, labels: dict | None = None) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def close(self) -> None:
        self.assembly.stop(quiet=True)


def raw_peer(node: Node, agent: bytes = b"/p2p_util:0.1/", start_height: int = 0,
             relay: bool = True, rcvbuf: int | None = None) -> RawPeer:
    """A raw test peer that finished the handshake with ``node``."""
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    peer = RawPeer(node.port, REGTEST.magic, rcvbuf=rcvbuf)
    peer.handshake(MsgVersion(timestamp=int(time.time()), nonce=7, user_agent=agent,
                              start_height=start_height, relay=relay))
    assert wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return peer


def next_commands(peer: RawPeer, until: str = "pong", timeout: float = 5.0) -> list:
    """Decoded messages up to (excluding) the first ``until``; a ping sent first
    makes the node's pong the end marker, so silence is observable."""
    peer.send(MsgPing(99))
    out = []
    while True:
        msg = peer.recv_message(timeout)
        assert msg is not None, "connection closed"
        if msg.command == until:
            return out
        if msg.command != "ping":
            out.append((msg.command, decode_payload(msg.command, msg.payload)))
