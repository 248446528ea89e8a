"""Shared fixtures: the C++ vectors, chain parameters and the RandomX hasher."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher

# Every node the suite starts, in this process or as a child process, hashes in
# RandomX light mode unless its test asks otherwise: the suite must not need a
# 2080 MiB dataset per node (tests/test_randomx_modes.py covers full mode).
os.environ["DIL_RANDOMX"] = "light"

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = REPO_ROOT.parent / "shared" / "vectors"


def load_vector(name: str):
    path = VECTORS_DIR / name
    if not path.exists():
        pytest.fail(f"C++ vector {path} is missing: the repository must sit beside shared/")
    return json.loads(path.read_text()) if name.endswith(".json") else path


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR


@pytest.fixture(scope="session")
def cpp_chain() -> dict:
    return load_vector("cpp-testnet-chain.json")


@pytest.fixture(scope="session")
def cpp_handshake() -> dict:
    return load_vector("cpp-wire-handshake.json")


@pytest.fixture(scope="session")
def hasher() -> RandomXHasher:
    return RandomXHasher.for_key()


@pytest.fixture
def testnet() -> ChainParams:
    return ChainParams.testnet()


@pytest.fixture
def regtest() -> ChainParams:
    return ChainParams.regtest()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """``mount(size)`` -> a fresh tmpfs of that size (e.g. ``"160k"``), unmounted afterwards.

    Full-disk tests use it to run out of space for real; it skips where mounting
    is not permitted (not root, no mount command).
    """
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no mount command")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def nodes(tmp_path):
    """Transport-only nodes (``framework.NodeFactory``), all stopped after the test."""
    from framework import NodeFactory

    factory = NodeFactory(tmp_path)
    yield factory
    factory.stop_all()


# ---------------------------------------------------------------------------
# the test framework (tests/framework): nodes, networks, scripted peers
# ---------------------------------------------------------------------------
collect_ignore = ["framework"]      # a library, not tests


@pytest.fixture
def framework_nodes(tmp_path):
    """The per-test ``framework.Nodes`` registry; every node it made is stopped afterwards."""
    from framework import Nodes

    registry = Nodes(tmp_path)
    yield registry
    registry.close()


@pytest.fixture
def inprocess_nodes(framework_nodes):
    """``make(name=None, extra_args=(), *, coins=False, rpc=False, chain=None, **kw)`` -> a
    started ``InProcessNode`` (relay-only, no RPC server unless asked; ``chain``: blocks
    loaded once it runs; other keywords go to ``InProcessNode``); all closed afterwards."""
    def make(name: str | None = None, extra_args=(), *, coins: bool = False, rpc: bool = False,
             chain=None, **kw):
        node = framework_nodes.inprocess_node(name, extra_args, start=True, coins=coins, rpc=rpc,
                                              **kw)
        if chain is not None:
            node.load(chain)
        return node

    return make


@pytest.fixture
def process_node(framework_nodes):
    """``process_node(name=None, extra_args=(), start=False, **kw)`` -> ``ProcessNode``."""
    return framework_nodes.process_node


@pytest.fixture
def network(framework_nodes):
    """``network(n, topology="line", kind="process", **node_kw)`` -> started, wired nodes.

    Topologies: ``line``, ``ring``, ``star`` (hub is node 0), ``mesh``.
    """
    return framework_nodes.network


@pytest.fixture
def test_peer():
    """``test_peer(node, cls=TestPeer, bind_host="127.0.0.1", handshake=True, **handshake_kw)``
    -> a connected ``TestPeer`` (handshake done unless ``handshake=False``); all closed afterwards."""
    from framework import TestPeer

    peers = []

    def make(node, cls=TestPeer, bind_host: str = "127.0.0.1", handshake: bool = True,
             **handshake_kw):
        peer = cls(bind_host=bind_host)
        peers.append(peer)
        host = node.p2p_address.rsplit(":", 1)[0]
        peer.connect(node.p2p_port, host)
        if handshake:
            peer.handshake(**handshake_kw)
        return peer

    yield make
    for peer in peers:
        peer.close()
