"""Our node against the real C++ node (WillBarton888/dilithion at 0b7ac867).

Runs only when ``DILITHION_CPP_NODE`` names a built ``dilithion-node`` binary.
The C++ node is started on loopback in testnet mode with ``--connect`` to our
node only, so it dials nothing else.  What is checked:

* the handshake in both directions (it dials us; we dial it);
* catch-up of a fresh C++ node: our node announces the vector chain from
  height 1 in ascending batches (it advertises start height 0, ``net D-08``),
  the C++ fetches it and reaches height 6 with every block connected and no
  orphan ever stored (``chain D21``);
* (slow) a fresh Python node catching up from a mining C++ node, which only
  ever announces its newest block: our node walks back through the C++ node's
  ``getdata`` service until the chain connects.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import CPP_USER_AGENT, Inv, InvType, MsgInv, MsgVersion
from dilithion.primitives.block import Block, Uint256
from dilithion.testing.cpp_node import CppNode, check_binary
from framework import RawPeer, free_port
from framework import InProcessNode, wait_until

CPP_NODE = os.environ.get("DILITHION_CPP_NODE", "")
if not CPP_NODE or not os.access(CPP_NODE, os.X_OK):
    pytest.skip("DILITHION_CPP_NODE does not name a built C++ dilithion-node binary",
                allow_module_level=True)

pytestmark = pytest.mark.cpp
TESTNET = ChainParams.testnet()
#: liveness guards for what the C++ node prints (a testnet block takes it minutes)
CATCH_UP_TIMEOUT = 180
MINING_TIMEOUT = 900


@pytest.fixture
def vector_chain(cpp_chain) -> list[tuple[Block, Uint256]]:
    return [(Block.deserialize(bytes.fromhex(b["block_message_payload_hex"]), allow_trailing=True),
             Uint256.from_hex(b["hash"])) for b in cpp_chain["blocks"]]


@pytest.fixture
def py_node(tmp_path):
    node = InProcessNode(tmp_path, "py", coins=False, rpc=False, params=TESTNET).start()
    yield node
    node.close()


@pytest.fixture
def cpp_factory(tmp_path):
    """``start(connect_port, mine=False)`` -> a started harness ``CppNode`` dialling only
    ``127.0.0.1:connect_port``; all stopped after the test."""
    started: list[CppNode] = []

    def start(connect_port: int, mine: bool = False) -> CppNode:
        cpp = CppNode(f"cpp{len(started)}", tmp_path, check_binary(CPP_NODE),
                      ["--mine", "--threads=1"] if mine else [],
                      connect=f"127.0.0.1:{connect_port}")
        started.append(cpp)
        return cpp.start()

    yield start
    for cpp in started:
        cpp.stop(timeout=5)


def cpp_peers(node: InProcessNode) -> list:
    return [p for p in node.connman.peer_manager.handshake_complete_peers() if p.is_cpp()]


def test_handshake_both_ways_and_cpp_catches_up_the_vector_chain(py_node, cpp_factory,
                                                                 vector_chain):
    py_node.load(vector_chain[1:])
    assert py_node.height() == 6
    cpp = cpp_factory(py_node.p2p_port)
    # It dials us (inbound here) ...
    assert wait_until(lambda: any(p.inbound for p in cpp_peers(py_node)), timeout=180), \
        cpp.log_tail()
    # ... and we dial it.
    peer_id = None
    deadline = time.monotonic() + 60
    while peer_id is None and time.monotonic() < deadline:
        pid = py_node.connman.connect("127.0.0.1", cpp.p2p_port)
        if pid is not None and py_node.connman.wait_for_handshake(pid, 10):
            peer_id = pid
        else:
            time.sleep(1)
    assert peer_id is not None
    assert py_node.connman.peer_manager.get_peer(peer_id).user_agent == CPP_USER_AGENT

    cpp.wait_for_log("Updated best block to height 6", timeout=CATCH_UP_TIMEOUT)
    out = cpp.log_text()
    assert "Cannot find parent block" not in out      # nothing stored unconnectable (chain D21)
    assert "invalid PoW" not in out

    # It has all six: an inv of them is answered with the echo only (net D-14), no getdata.
    with RawPeer(cpp.p2p_port, TESTNET.magic, timeout=30) as probe:
        probe.handshake(MsgVersion(timestamp=int(time.time()), user_agent=b"/probe:0.1/"),
                        timeout=30)
        probe.send(MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(h)) for _, h in vector_chain[1:]]))
        echoed = []
        while len(echoed) < 6:
            msg = probe.read_message(30)
            assert msg is not None
            assert msg.command != "getdata", "the C++ node lacks a block"
            if msg.command == "block":
                echoed.append(Block.deserialize(msg.payload, allow_trailing=True)
                              .header.serialize())
        assert echoed == [b.header.serialize() for b, _ in vector_chain[1:]]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_python_node_catches_up_from_a_mining_cpp_node(tmp_path, py_node, cpp_factory):
    """The C++ mines from scratch with one thread (~3 min per testnet block); we
    connect once it has found a block, and when it announces its next one we
    must fetch it and walk back through its getdata service to its tip."""
    helper = InProcessNode(tmp_path, "listener", coins=False, rpc=False, params=TESTNET).start()   # something for --connect to reach
    try:
        cpp = cpp_factory(helper.p2p_port, mine=True)
        cpp.wait_for_log("BLOCK FOUND", timeout=MINING_TIMEOUT)
        pid = None
        for _ in range(30):
            pid = py_node.connman.connect("127.0.0.1", cpp.p2p_port)
            if pid is not None and py_node.connman.wait_for_handshake(pid, 10):
                break
            time.sleep(1)
        assert pid is not None
        # Wait for the next block it finds: announced to us, fetched, walked back.
        hashes_before = len(cpp.log_lines(r"Block hash: [0-9a-f]{64}"))
        cpp.wait_for_log(r"(?s)" + r"Block hash: [0-9a-f]{64}.*" * (hashes_before + 1),
                         timeout=MINING_TIMEOUT, regex=True)
        found = re.findall(r"Block hash: ([0-9a-f]{64})", cpp.log_text())
        assert wait_until(lambda: py_node.height() >= len(found), timeout=120)
        assert py_node.chain.main_chain_hash_at(len(found)).get_hex() == found[len(found) - 1]
    finally:
        helper.close()


def test_cli_getmininginfo_against_the_cpp_node(tmp_path, cpp_factory):
    """``dilithion-cli`` speaks the C++ RPC dialect (one write, ``[{...}]`` params, no cookie)."""
    cpp = cpp_factory(free_port())      # dials a closed port: it stays alone on loopback
    cpp.wait_for_log("RPC server listening on port", timeout=60)
    cli = Path(sys.executable).parent / "dilithion-cli"
    empty_datadir = tmp_path / "no-cookie"
    empty_datadir.mkdir()
    out = subprocess.run([str(cli), "--testnet", f"--datadir={empty_datadir}",
                          f"--rpcport={cpp.rpc_port}", "getmininginfo"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["mining"] is False and info["hashrate"] == 0 and info["threads"] >= 1
