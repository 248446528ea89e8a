"""Per-peer state is released when a peer goes: after rounds of peers that
connect, get blocks announced and disconnect, every per-peer table, the
selector and the thread count are back where they started (counts, no clocks).

The lab's load run keeps its 50 peers for the whole run, so it cannot see a
per-connection leak; this test is where such a leak would show."""
from __future__ import annotations

import threading

import pytest

from framework import InProcessNode, raw_peer, regtest_chain, wait_until

ROUNDS, PEERS = 3, 8


@pytest.fixture
def node(tmp_path):
    n = InProcessNode(tmp_path, "n", coins=False, rpc=False).start()
    yield n
    n.close()


def per_peer_sizes(node) -> dict[str, int]:
    ctx = node.ctx
    relay, dl = ctx.block_relay, ctx.block_relay.download
    return {"peer table": len(ctx.peer_manager.get_all_peers()),
            "connections": len(ctx.connman._conns),
            "selector": len(ctx.connman._selector.get_map()),
            "block relay peers": relay.peer_count(),
            "download by peer": len(dl._by_peer), "download in flight": len(dl._peer_flight),
            "download progress": len(dl._progress),
            "broadcaster peer stats": len(ctx.broadcaster._peers),
            "pow prefetch waiting": ctx.pow_prefetch.peers_tracked(),
            "threads": threading.active_count()}


def test_peers_that_come_and_go_leave_nothing_behind(node):
    chain = regtest_chain(ROUNDS + 1)
    node.load(chain[:1])
    baseline = per_peer_sizes(node)
    for r in range(ROUNDS):
        peers = [raw_peer(node) for _ in range(PEERS)]
        # Block relay registers a peer on the handler thread once the handshake is done,
        # which may be just after our side has read the verack.
        wait_until(lambda: per_peer_sizes(node)["block relay peers"]
                   == baseline["block relay peers"] + PEERS, 30,
                   message=lambda: f"round {r}: {per_peer_sizes(node)}")
        node.load(chain[r + 1:r + 2])         # announced to every peer
        for p in peers:
            p.close()
        wait_until(lambda: not node.connman.peer_info(), 30)
        wait_until(lambda: per_peer_sizes(node) == baseline, 30,
                   message=lambda: f"round {r}: {per_peer_sizes(node)} != {baseline}")
    assert node.height() == ROUNDS
