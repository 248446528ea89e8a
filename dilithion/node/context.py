"""The node's shared objects, passed explicitly instead of C++ ``g_*`` globals.

Every C++ singleton (``g_chainParams``, ``g_chainstate``, ``g_network_magic``,
``g_peer_manager``, ``g_mempool``, ``g_node_state`` ...) is an attribute here, so
several nodes can live in one process (tests run three in one interpreter).
Components are filled in by :mod:`dilithion.node.dilithion_node` in start-up
order; a component that is not running stays ``None``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher

__all__ = ["NodeContext"]


@dataclass
class NodeContext:
    """Ownership: the context itself is written only during start-up and
    shutdown by the main thread; each component guards its own state."""

    chain_params: ChainParams
    datadir: Path
    hasher: RandomXHasher = field(default_factory=RandomXHasher.for_key)
    #: Stricter intended consensus rules the C++ lacks (``--strict``).
    strict: bool = False

    blockchain: Any = None         # dilithion.node.blockchain_storage.BlockchainDB
    chainstate: Any = None         # dilithion.consensus.chain.ChainState
    utxo_set: Any = None           # dilithion.node.utxo_set.UTXOSet
    mempool: Any = None            # dilithion.node.mempool.TxMemPool
    peer_manager: Any = None       # dilithion.net.peers.PeerManager
    connman: Any = None            # dilithion.net.net.ConnectionManager
    broadcaster: Any = None        # dilithion.net.async_broadcaster.AsyncBroadcaster
    tx_relay: Any = None           # dilithion.net.tx_relay.TxRelayManager
    added_nodes: Any = None        # dilithion.net.added_nodes.AddedNodes
    miner: Any = None              # dilithion.mining.controller.MiningController
    rpc_server: Any = None         # dilithion.rpc.server.RPCServer
    metrics: Any = None            # dilithion.node.metrics.NodeMetrics

    #: Set to ask every thread of this node to finish (signal, RPC ``stop``).
    shutdown_requested: threading.Event = field(default_factory=threading.Event)
    #: Why the node is stopping on its own (a failed disk write); ``None`` otherwise.
    fatal_reason: str | None = None

    def fatal_error(self, reason: str) -> None:
        """Stop the node because it cannot go on safely (e.g. the disk is full).

        Callers use this only after a write failed atomically, so nothing that
        was stored is lost; the process then exits with status 1.
        """
        if self.fatal_reason is None:
            self.fatal_reason = reason
            logger.critical(f"FATAL: {reason}; shutting down (already stored data is intact)")
        self.shutdown_requested.set()

    @property
    def magic(self) -> int:
        """The P2P magic in force (the C++ ``g_network_magic``)."""
        return self.chain_params.magic
