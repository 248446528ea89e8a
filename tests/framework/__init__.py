"""The test framework: nodes, wire peers, networks and waiting, in one vocabulary.

Plays the role of Bitcoin Core's ``test/functional/test_framework``. Tests import
from here; the fixtures ``network``, ``process_node`` and ``test_peer`` in
``tests/conftest.py`` build on it.

* :class:`TestNode` - the node interface (``ProcessNode``: a real process;
  ``InProcessNode``: the same interface inside pytest, assembled by the same
  ``NodeAssembly`` as the program, with direct access to its components);
* :class:`NodeFactory` - transport-only nodes for the P2P transport tests;
* :func:`regtest_chain` - a real regtest chain mined once per session;
* :class:`TestPeer` - the harness's wire peer (:mod:`dilithion.testing.wire_peer`)
  with its reader thread; ``RawPeer`` (the same peer in blocking mode), ``frame``,
  ``frame_raw`` for byte-level tests;
* :func:`wait_until`, :func:`sync_blocks`, :func:`sync_heights` - waiting that
  fails with the state that matters;
* :func:`free_port`, :func:`port_is_free` - the harness's port allocator
  (:mod:`dilithion.testing.ports`), which the tools and benchmarks use too.
"""
from dilithion.testing.ports import free_port, port_is_free
from dilithion.testing.wire_peer import REGTEST_MAGIC, RawPeer, TestPeer, frame, frame_raw

from .chains import MINER, REGTEST, regtest_chain, side_block
from .clock import FakeClock
from .inprocess import InProcessNode, next_commands, raw_peer
from .network import TOPOLOGIES, Nodes, connect_topology
from .node import TestNode, payee
from .process_node import NODE_BIN, ProcessNode, run_node
from .transport import NodeFactory, transport_metric
from .util import (CONVERGE_TIMEOUT, LoopbackServer, best_hashes, chain_states, converged,
                   heights, sync_blocks, sync_heights, wait_until)

__all__ = [
    "CONVERGE_TIMEOUT", "FakeClock", "MINER", "NODE_BIN", "REGTEST", "REGTEST_MAGIC", "TOPOLOGIES",
    "InProcessNode", "LoopbackServer", "NodeFactory", "Nodes", "ProcessNode", "RawPeer", "TestNode", "TestPeer",
    "next_commands", "raw_peer", "regtest_chain", "side_block", "transport_metric",
    "best_hashes", "chain_states", "connect_topology", "converged", "frame", "frame_raw",
    "free_port", "heights", "payee", "port_is_free", "run_node", "sync_blocks", "sync_heights",
    "wait_until",
]
