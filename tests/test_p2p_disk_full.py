"""A full disk while blocks arrive from a peer: one clear error, the node stops, nothing stored is lost."""
from __future__ import annotations

import subprocess

import pytest

from dilithion.net.protocol import MsgBlock
from dilithion.node.init import NodeStartupError
from framework import InProcessNode, raw_peer, regtest_chain, wait_until


def test_full_disk_while_receiving_blocks_stops_the_node_cleanly(tiny_tmpfs):
    disk = tiny_tmpfs("96k")
    chain = regtest_chain(300)       # the session chain the sync tests mine anyway
    node = InProcessNode(disk, "node", coins=False, rpc=False).start()
    try:
        peer = raw_peer(node)
        for block, _ in chain[1:]:
            peer.send(MsgBlock(block))
            if node.ctx.shutdown_requested.is_set():
                break
        assert wait_until(node.ctx.shutdown_requested.is_set, 30), "the disk never filled"
        assert "cannot store block" in node.ctx.fatal_reason
        assert "No space left on device" in node.ctx.fatal_reason
        stored_height = node.height()
        stored_tip = node.chain.tip().hash
    finally:
        node.close()
    # Still full: reopening is refused with the same clear reason.
    with pytest.raises(NodeStartupError) as refused:
        InProcessNode(disk, "node", coins=False, rpc=False).start()
    assert "disk full" in "\n".join(refused.value.lines)
    # With room again the datadir reopens at the last block the node reported connected.
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    reopened = InProcessNode(disk, "node", coins=False, rpc=False).start()
    try:
        assert reopened.height() == stored_height and reopened.chain.tip().hash == stored_tip
        assert stored_tip == chain[stored_height][1]
    finally:
        reopened.close()
