"""The framework in use: a three-node relay, a scripted peer, and waiting that fails loudly.

Read this file first when writing a process test: ``network`` builds and wires
nodes, ``sync_blocks`` waits for agreement, ``test_peer`` speaks the wire protocol.
"""
from __future__ import annotations

import pytest

from dilithion.net.protocol import InvType

from framework import TestPeer, sync_blocks, sync_heights, wait_until


def test_three_nodes_in_a_line_relay_mined_blocks(network):
    nodes = network(3, "line")
    hashes = nodes[0].mine(3)
    sync_blocks(nodes)
    assert [node.height() for node in nodes] == [3, 3, 3]
    assert nodes[2].best_hash() == hashes[-1]
    assert [node.peer_count() for node in nodes] == [1, 2, 1]


class InvRecorder(TestPeer):
    """Keeps every block hash announced to it (the ``on_<command>`` callback style)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.announced: list[str] = []

    def on_inv(self, msg) -> None:
        self.announced += [item.hash.get_hex() for item in msg.inv
                           if item.type == InvType.MSG_BLOCK_INV]


def test_test_peer_handshakes_counts_and_hears_a_mined_block(process_node, test_peer):
    node = process_node("A", ["--connect=none"], start=True)
    peer = test_peer(node, cls=InvRecorder, bind_host="127.0.0.10", start_height=0)
    assert peer.message_count["version"] == 1 and peer.message_count["verack"] == 1
    assert peer.last_message["version"].start_height == 0
    peer.sync_with_ping()
    assert peer.message_count["pong"] == 1
    [mine_in] = [p for p in node.peers() if p["inbound"]]
    assert mine_in["addr"].startswith("127.0.0.10:") and mine_in["handshake"]

    block = node.mine(1)[0]
    peer.wait_until(lambda: block in peer.announced)
    assert peer.message_count["inv"] >= 1 and peer.is_connected and not peer.errors

    peer.close()
    wait_until(lambda: node.peer_count() == 0, message=node.peers)


def test_wait_until_raises_with_the_message():
    with pytest.raises(AssertionError, match="timed out after 0.2 s") as failure:
        wait_until(lambda: False, timeout=0.2, message="the answer never came")
    assert "the answer never came" in str(failure.value)
    assert "test_framework_example.py" in str(failure.value)       # where the predicate is
    with pytest.raises(AssertionError, match="ConnectionRefusedError"):
        wait_until(lambda: _refused(), timeout=0.2)                  # transient errors: polled on


def _refused() -> bool:
    raise ConnectionRefusedError("nobody listens")


@pytest.mark.parametrize("topology, peer_counts", [
    ("ring", [2, 2, 2, 2]), ("star", [3, 1, 1, 1]), ("mesh", [3, 3, 3, 3])])
def test_topologies_wire_the_expected_peers(network, topology, peer_counts):
    nodes = network(4, topology)
    assert [node.peer_count() for node in nodes] == peer_counts
    nodes[3].mine(1)
    sync_blocks(nodes)


def test_restart_keeps_the_chain_and_the_log_helpers_see_each_run(network):
    a, b = network(2)
    a.mine(2)
    sync_heights([a, b], 2)
    b.disconnect_all()
    wait_until(lambda: a.peer_count() == 0, message=a.peers)
    b.restart(["--connect=none"])
    assert b.height() == 2
    b.wait_for_log("Node Status: RUNNING")
    assert b.log_lines(r"\[OK\] Loaded chain state") == b.log_lines(r"\[OK\].*\(height 2\)")
    assert len(b.log_lines(r"\[OK\] Loaded chain state")) == 1                # this run only
    assert len(b.log_lines(r"Node Status: RUNNING", all_runs=True)) == 2
    assert b.metric("chain_height") == 2 and b.metric("no_such_metric") == 0.0
    a.mine(1)                                       # b is alone now: sync fails, saying why
    with pytest.raises(AssertionError, match=r"(?s)node0: height=3 best=\w+\nnode1: height=2"):
        sync_blocks([a, b], timeout=1)
    b.assert_no_traceback()


@pytest.mark.parametrize("kind", ["inprocess", "process"])
def test_one_test_runs_on_both_node_kinds(network, kind):
    """The same ten lines drive nodes in this process (assembled by the node's own
    NodeAssembly) or real ``dilithion-node`` processes."""
    nodes = network(3, "line", kind=kind)
    hashes = nodes[0].mine(3)
    sync_blocks(nodes)
    assert [node.height() for node in nodes] == [3, 3, 3]
    assert nodes[2].best_hash() == hashes[-1]
    assert nodes[2].metric("chain_height") == 3
    assert nodes[2].log_lines(r"Updated best block to height 3")
