"""The harness's one node-process wrapper (``dilithion/testing/node_process.py``, ``cpp_node.py``).

The Python side runs real ``dilithion-node`` processes: start, RPC with the
cookie, metrics, log lines per run, restart on the same ports, kill, a start
that fails and says why, a port taken by another program.  The C++ side has no
binary here, so what it needs no process for is tested: the binary check, its
command line, and the tip read from its log on the C++ node's own log lines
(``shared/spec/mining-rpc-cli.md`` 5.3, the hashes of the C++ vector chain).
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dilithion.testing.cpp_node import CppNode, check_binary, cpp_tip_from_log, cpp_tip_updates
from dilithion.testing.node_process import PORT_IN_USE, READY_LINE, PythonNode, TargetError
from framework import payee


@pytest.fixture
def python_nodes(tmp_path):
    """``make(name, extra_args=(), **kw)`` -> a harness ``PythonNode`` (regtest, dialling
    nobody, not started); every one killed after the test."""
    made: list[PythonNode] = []

    def make(name: str, extra_args=(), **kw) -> PythonNode:
        node = PythonNode(name, tmp_path, extra_args, connect=[], **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        node.kill()


def listening_on(port: int) -> socket.socket:
    """Another program's listener on ``127.0.0.1:port``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_started_node_answers_rpc_metrics_and_its_log_then_stops_cleanly(python_nodes):
    node = python_nodes("a").start()
    assert node.rpc("getblockcount") == 0
    before = node.metric_samples()[("blocks_connected_total", ())]
    [block] = node.rpc("generatetoaddress", [1, payee("a")], timeout=120)
    assert node.tip() == (block, 1)
    assert node.metric_samples()[("blocks_connected_total", ())] == before + 1
    assert len(node.log_lines(READY_LINE)) == 1
    assert node.stop() == 0 and not node.killed_on_stop
    assert "Dilithion node stopped cleanly" in node.log_text()


def test_restart_keeps_the_ports_and_the_log_is_split_by_run(python_nodes):
    node = python_nodes("a").start()
    ports = (node.p2p_port, node.rpc_port, node.metrics_port)
    node.rpc("generatetoaddress", [2, payee("a")], timeout=120)
    node.restart()
    assert (node.p2p_port, node.rpc_port, node.metrics_port) == ports
    assert node.rpc("getblockcount") == 2                     # same datadir
    assert len(node.log_lines(READY_LINE)) == 1               # this run
    assert len(node.log_lines(READY_LINE, all_runs=True)) == 2
    assert "stopped cleanly" not in node.log_text()           # the first run's end


def test_kill_ends_the_process_without_its_shutdown(python_nodes):
    node = python_nodes("a").start()
    assert node.kill() == -signal.SIGKILL
    assert not node.is_running()
    assert "stopped cleanly" not in node.log_text()
    node.wait_for_log(READY_LINE)                               # the log stays readable
    with pytest.raises(TargetError, match="not logged before the node exited"):
        node.wait_for_log("never printed", timeout=5)


def test_a_start_that_fails_says_why_with_the_log_tail(python_nodes):
    node = python_nodes("bad", ["--no-such-flag"])
    with pytest.raises(TargetError) as failure:
        node.start()
    message = str(failure.value)
    assert "node bad failed to start (exit 1)" in message
    assert "log tail:" in message and "--no-such-flag" in message


def test_a_port_taken_by_another_program_is_started_again_on_new_ports(python_nodes):
    node = python_nodes("a")
    taken = node.rpc_port
    with listening_on(taken):
        node.start()
        assert node.rpc_port != taken
        assert node.rpc("getblockcount") == 0
    assert PORT_IN_USE in node.log_text(all_runs=True)        # the first attempt's exit


def test_a_port_the_caller_placed_is_not_moved(python_nodes):
    """The lab's ``--base-port`` places ports: a clash there is the caller's to solve."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    with probe:
        placed = probe.getsockname()[1]
        probe.listen()
        node = python_nodes("a", rpc_port=placed)
        with pytest.raises(TargetError, match=PORT_IN_USE):
            node.start()
    assert node.rpc_port == placed


# ---- the C++ node, without its binary ----------------------------------------------------
def test_check_binary_says_why_a_path_cannot_be_used(tmp_path):
    with pytest.raises(TargetError, match="no C.. node: give --cpp PATH or set DILITHION_CPP_NODE"):
        check_binary(None)
    with pytest.raises(TargetError, match="no such file"):
        check_binary(str(tmp_path / "missing"))
    plain = tmp_path / "dilithion-node"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(TargetError, match="not executable"):
        check_binary(str(plain))
    plain.chmod(0o755)
    assert check_binary(str(plain)) == plain
    with pytest.raises(TargetError, match="no such file"):
        check_binary(str(tmp_path))                             # a directory is no binary


def test_the_cpp_node_runs_on_testnet_and_dials_only_a_closed_loopback_port(tmp_path):
    node = CppNode("cpp", tmp_path, Path("/opt/cpp/dilithion-node"), ["--mine"])
    command = node.command()
    assert command[:2] == ["/opt/cpp/dilithion-node", "--testnet"]
    assert f"--port={node.p2p_port}" in command and f"--rpcport={node.rpc_port}" in command
    [connect] = [a for a in command if a.startswith("--connect=")]
    host, port = connect.removeprefix("--connect=").rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.socket() as s:                                   # nothing listens there
        assert s.connect_ex(("127.0.0.1", int(port))) != 0
    assert not any(a.startswith("--metrics-port") for a in command) and command[-1] == "--mine"
    with pytest.raises(TargetError, match="serves no metrics"):
        node.metric_samples()


def cpp_log(chain: list[str]) -> str:
    """What the C++ node prints (spec 5.3) when it receives blocks 1 and 2, an orphan
    that does not move its tip, then reorganises onto block 3 of ``chain``."""
    genesis, b1, b2, b3 = chain[:4]
    return "\n".join([
        "Loading genesis block...", "  Network: testnet", f"  Genesis hash: {genesis}",
        "  [OK] Genesis block verified", "Node Status: RUNNING",
        f"[P2P] Received block from peer 1: {b1[:16]}...", "[P2P] Block saved to database",
        "[P2P] Block index created (height 1)", "[P2P] Block activated successfully",
        "[P2P] Updated best block to height 1",
        f"[P2P] Received block from peer 1: {b2[:16]}...", "[P2P] Block activated successfully",
        "[P2P] Updated best block to height 2",
        f"[P2P] Received block from peer 2: {b3[:16]}...",
        f"[P2P] ERROR: Cannot find parent block {b1[:16]}...",
        "  This is an orphan block - need to download more blocks",
        "[P2P] ⚠️  CHAIN REORGANIZATION occurred!", f"  New tip: {b3[:16]} (height 3)",
        "[P2P] Block activated successfully", ""])


def test_the_cpp_tip_is_followed_in_its_log_lines(cpp_chain, tmp_path):
    chain = [b["hash"] for b in cpp_chain["blocks"]]
    text = cpp_log(chain)
    assert list(cpp_tip_updates(text)) == [(chain[0], 0), (chain[1][:16], 1),
                                           (chain[2][:16], 2), (chain[3][:16], 3)]
    names = {h[:16]: h for h in chain}
    assert cpp_tip_from_log(text, names) == (chain[3], 3)
    assert cpp_tip_from_log(text, {}) == (chain[3][:16] + "...", 3)    # an unknown block
    assert cpp_tip_from_log(text.split("[P2P] Received")[0], names) == (chain[0], 0)
    assert cpp_tip_from_log("", names) == ("", -1)                    # nothing printed yet

    node = CppNode("cpp", tmp_path, Path("/opt/cpp/dilithion-node"))
    node.log_path.write_text("an earlier run\nNew tip: " + "ab" * 8 + " (height 9)\n")
    node.log.new_run()                                           # the tip of this run only
    with open(node.log_path, "a") as log:
        log.write(text)
    assert node.tip(names) == (chain[3], 3)


def test_cpp_binary_from_env_names_the_variable_in_its_error(tmp_path, monkeypatch):
    from dilithion.testing.cpp_node import cpp_binary_from_env

    monkeypatch.delenv("DILITHION_CPP_NODE", raising=False)
    assert cpp_binary_from_env() is None
    monkeypatch.setenv("DILITHION_CPP_NODE", str(tmp_path / "gone"))
    with pytest.raises(TargetError, match="DILITHION_CPP_NODE: C.. node .*gone: no such file"):
        cpp_binary_from_env()


def test_the_harness_needs_none_of_the_lab_extra():
    """``psutil``, ``matplotlib`` and ``tqdm`` are the lab's extra: a plain install that
    runs the diff or the tests' node processes imports the harness without them."""
    code = ("import sys, dilithion.testing.node_process, dilithion.testing.cpp_node;"
            "print(sorted(m for m in ('psutil', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.strip() == "[]"
