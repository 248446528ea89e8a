"""The node's shared objects, passed explicitly instead of C++ ``g_*`` globals.

Every C++ singleton (``g_chainParams``, ``g_chainstate``, ``g_network_magic``,
``g_peer_manager``, ``g_mempool``, ``g_node_state`` ...) is an attribute here, so
several nodes can live in one process (tests run three in one interpreter).
The components are built, started and stopped in one place,
:class:`dilithion.node.init.NodeAssembly`; a component that is not running
stays ``None``.  Components receive their neighbours as constructor arguments;
only the top of the program (the RPC methods, the main loop) reads them from
here.

The field types of the layers above this module (mining, RPC) are named for
the type checker only: this module never imports them at run time, so the
node layer does not depend on the layers built on it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.metrics import NULL_METRICS, Metrics

if TYPE_CHECKING:
    from dilithion.consensus.chain import ChainState
    from dilithion.mining.controller import MiningController
    from dilithion.net.added_nodes import AddedNodes
    from dilithion.net.async_broadcaster import AsyncBroadcaster
    from dilithion.net.banman import BanMan
    from dilithion.net.block_relay import BlockRelay
    from dilithion.net.net_processing import NetMessageProcessor
    from dilithion.net.net_transport import ConnectionManager
    from dilithion.net.peers import PeerManager
    from dilithion.net.pow_prefetch import PowPrefetch
    from dilithion.net.tx_relay import TxRelayManager
    from dilithion.node.blockchain_storage import BlockchainDB
    from dilithion.node.mempool import TxMemPool
    from dilithion.node.utxo_set import UTXOSet
    from dilithion.rpc.server import RPCServer

__all__ = ["NodeContext"]


@dataclass
class NodeContext:
    """One node's components, instead of the C++ globals (``g_node_state`` and the rest).

    Ownership: the fields are written only by the thread that assembles or
    stops the node (:class:`~dilithion.node.init.NodeAssembly`); every other
    thread only reads them, and each component guards its own state.
    ``shutdown_requested`` and ``fatal_reason`` are the exceptions: any thread
    may call :meth:`fatal_error` or set the event."""

    chain_params: ChainParams
    datadir: Path
    hasher: RandomXHasher = field(default_factory=RandomXHasher.for_key)
    #: ``--randomx``: ``light``, ``full`` or ``auto`` (full mode when mining).
    randomx_mode: str = "light"
    #: Stricter intended consensus rules the C++ lacks (``--strict``).
    strict: bool = False

    blockchain: BlockchainDB | None = None
    chainstate: ChainState | None = None
    utxo_set: UTXOSet | None = None
    mempool: TxMemPool | None = None
    #: :data:`NULL_METRICS` until the assembly makes the node's ``NodeMetrics``.
    metrics: Metrics = NULL_METRICS
    peer_manager: PeerManager | None = None
    #: Manual bans (persisted in ``banlist.json``) and discouraged hosts.
    banman: BanMan | None = None
    connman: ConnectionManager | None = None
    processor: NetMessageProcessor | None = None
    broadcaster: AsyncBroadcaster | None = None
    tx_relay: TxRelayManager | None = None
    block_relay: BlockRelay | None = None
    #: Hashes received blocks on spare cores before the handler needs them.
    pow_prefetch: PowPrefetch | None = None
    added_nodes: AddedNodes | None = None
    miner: MiningController | None = None
    rpc_server: RPCServer | None = None

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
