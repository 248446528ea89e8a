"""Hostile peers against ``getdata`` and the send side: each attacker connects from its
own loopback address (127.0.0.10, 127.0.0.11, ...), the honest peer from 127.0.0.1,
and the tests assert what the honest side experiences, with counts: block reads
from the store (a counting wrapper around the real LevelDB store), INFO log
lines, bytes queued per peer and node-wide (``SendQueue.peak_bytes``,
``ByteBudget.peak``).

Big blocks are real: regtest blocks with a 1 MiB opaque ``vtx`` (default rules
check only the proof of work), mined once per module.  Every wait is a liveness
guard, never a speed bound.
"""
from __future__ import annotations

import time

import pytest

from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.net import block_serve
from dilithion.net.protocol import CPP_USER_AGENT, Inv, InvType, MsgGetdata, MsgPing, MsgVersion
from dilithion.net.serialize import MESSAGE_HEADER_SIZE
from dilithion.net.socket import BULK_MESSAGE_BYTES
from framework import (REGTEST, InProcessNode, RawPeer, next_commands, regtest_chain, side_block,
                       wait_until)
from test_p2p_download_attacks import deliver_honestly

BLOCK = InvType.MSG_BLOCK_INV
HONEST = "127.0.0.1"
BIG_BODY = 1 << 20              # 1 MiB of opaque vtx per big block
BIG_BLOCKS = 8              # 8 MiB per requester: more than a kernel send buffer takes (tcp_wmem max 4 MiB)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def big_chain():
    """``regtest_chain(1)`` extended by eight 1 MiB blocks (mined once per module)."""
    base = regtest_chain(1)
    hasher = RandomXHasher.for_key()
    blocks, parent = [], base[-1][1]
    for i in range(BIG_BLOCKS):
        block, h = side_block(hasher, parent, bytes([i + 1]) * BIG_BODY,
                              REGTEST.genesis_time + 120 + i)
        blocks.append((block, h))
        parent = h
    return base + blocks


class BlockReads:
    """Counts the node's block reads from its LevelDB store (the real store does the reads)."""

    def __init__(self, node: InProcessNode) -> None:
        self.count = 0
        store = node.chain.db
        real = store.read_block

        def counting(block_hash):
            self.count += 1
            return real(block_hash)

        store.read_block = counting


def attacker(node: InProcessNode, index: int, agent: bytes = b"/attack:0.1/",
             rcvbuf: int | None = None) -> RawPeer:
    """A handshaken raw peer from 127.0.0.<10 + index>, level with the node."""
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    peer = RawPeer(node.p2p_port, node.params.magic, bind_host=f"127.0.0.{10 + index}",
                   rcvbuf=rcvbuf, timeout=10.0)
    peer.handshake(MsgVersion(timestamp=int(time.time()), nonce=7, user_agent=agent,
                              start_height=node.height()))
    assert wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return peer


def honest_peer(node: InProcessNode) -> RawPeer:
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    peer = RawPeer(node.p2p_port, node.params.magic, bind_host=HONEST, timeout=10.0)
    peer.handshake(MsgVersion(timestamp=int(time.time()), nonce=8, user_agent=b"/honest:0.1/",
                              start_height=node.height()))
    assert wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return peer


def info_lines(node: InProcessNode) -> int:
    """Lines the node's real log (INFO and above) holds so far."""
    return sum(1 for line in node.log_text().splitlines() if not line.startswith("DEBUG:"))


def until_pong(peer: RawPeer, most: int, timeout: float = 10.0) -> list[str]:
    """Commands received before the pong of a fresh ping; fails once more than ``most``
    arrive (the old code would stream thousands of megabyte blocks)."""
    peer.send(MsgPing(99))
    got: list[str] = []
    while True:
        msg = peer.read_message(timeout)
        assert msg is not None, "connection closed"
        if msg.command == "pong":
            return got
        if msg.command != "ping":
            got.append(msg.command)
            assert len(got) <= most, got


def block_message_size(node: InProcessNode, h) -> int:
    return MESSAGE_HEADER_SIZE + len(node.chain.get_block(h).serialize())


def queue_of(node: InProcessNode, host: str):
    peer = next(p for p in node.connman.peer_manager.get_connected_peers() if p.host == host)
    return node.connman._conns[peer.id].sendq


# ----------------------------------------------------------------------------- (a)
def test_unknown_items_are_answered_from_memory(inprocess_nodes):
    chain = regtest_chain(2)
    node = inprocess_nodes("n")
    node.load(chain[:2])
    reads = BlockReads(node)
    unknown = [Inv(BLOCK, (i + 1).to_bytes(32, "little")) for i in range(50_000)]
    lines_before = info_lines(node)

    python_attacker = attacker(node, 0)
    started = time.monotonic()
    python_attacker.send(MsgGetdata(unknown))
    notfound = python_attacker.wait_for("notfound", 10.0)
    print(f"\n50,000 unknown items answered in {time.monotonic() - started:.3f} s")
    assert notfound.inv == unknown                       # all 50,000, in one message

    cpp_attacker = attacker(node, 1, agent=CPP_USER_AGENT)
    cpp_attacker.wait_for("inv", 10.0)                   # its catch-up batch (C++: from height 1)
    cpp_attacker.send(MsgGetdata(unknown))
    assert next_commands(cpp_attacker) == []             # the C++ wire: no notfound (net D-15)

    assert reads.count == 0                              # no LevelDB read for 100,000 items
    # Two getdatas of 50,000 unknown items: one summary line each, not 100,000 lines
    # (the rest is connection and handshake lines of the two attackers).
    attack_lines = [line for line in node.log_text().splitlines()[lines_before:]
                    if "requested unknown" in line and not line.startswith("DEBUG:")]
    assert len(attack_lines) == 2, attack_lines
    assert info_lines(node) - lines_before <= 20
    assert node.ctx.block_relay.propagation.get(unknown[0].hash) is None

    honest = honest_peer(node)
    deliver_honestly(node, honest, chain[2], "100,000 unknown getdata items answered")
    for peer in (python_attacker, cpp_attacker, honest):
        peer.close()


# ----------------------------------------------------------------------------- (b)
def test_known_blocks_are_served_in_slices_within_the_queue_limit(inprocess_nodes, big_chain):
    node = inprocess_nodes("n", send_timeout_ms=60_000)            # the non-reader stays connected
    node.load(big_chain)
    reads = BlockReads(node)
    limit = node.connman.config.max_send_buffer
    big = [h for _, h in big_chain[2:]]
    largest = max(block_message_size(node, h) for h in big)
    reads.count = 0

    # A reader asking for the same 1 MiB block 50,000 times gets it once (one read).
    repeater = attacker(node, 0)
    repeater.send(MsgGetdata([Inv(BLOCK, bytes(big[0]))] * 50_000))
    assert until_pong(repeater, most=3) == ["block"]
    assert reads.count == 1

    # A non-reader asking for every big block many times: service pauses at its limit.
    hoarder = attacker(node, 1, rcvbuf=4096)
    hoarder.send(MsgGetdata([Inv(BLOCK, bytes(h)) for h in big] * 5_000))
    hoarder_queue = queue_of(node, "127.0.0.11")
    assert wait_until(lambda: hoarder_queue.queued_bytes() > limit, timeout=10)

    # The honest peer asks for all of them and gets all of them, in order, meanwhile.
    honest = honest_peer(node)
    honest.send(MsgGetdata([Inv(BLOCK, bytes(h)) for h in big]))
    got = [honest.wait_for("block", 10.0).block for _ in big]
    assert [node.chain.hash_block(b) for b in got] == big
    assert until_pong(repeater, most=0) == []            # the repeater is not served again

    # The hoarder's queue never held more than its limit plus one block.
    print(f"\nnon-reader's queue peak {hoarder_queue.peak_bytes} bytes (limit {limit}, "
          f"block message {largest}); block reads {reads.count}")
    assert hoarder_queue.peak_bytes <= limit + largest, (hoarder_queue.peak_bytes, limit)
    # 40,000 items from the hoarder cost at most one read per distinct block (duplicates
    # dropped; the rest waits unread while its queue is full), the honest peer's one each.
    assert reads.count <= 1 + 2 * len(big), reads.count
    for peer in (repeater, hoarder, honest):
        peer.close()


# ----------------------------------------------------------------------------- (c)
def test_many_non_readers_stay_under_the_node_wide_send_cap(inprocess_nodes, big_chain):
    cap = 6 * MIB
    node = inprocess_nodes("n", send_timeout_ms=500, max_send_total=cap)
    node.load(big_chain)
    big = [h for _, h in big_chain[2:]]
    largest = max(block_message_size(node, h) for h in big)
    budget = node.connman.send_buffer

    hoarders = [attacker(node, i, rcvbuf=4096) for i in range(20)]     # 127.0.0.10..29
    for peer in hoarders:
        peer.send(MsgGetdata([Inv(BLOCK, bytes(h)) for h in reversed(big)]))
    assert wait_until(lambda: budget.spent(), timeout=10)

    honest = honest_peer(node)
    honest.send(MsgGetdata([Inv(BLOCK, bytes(big[-1]))]))
    got = honest.wait_for("block", 15.0).block
    assert node.chain.hash_block(got) == big[-1]
    # 20 peers x (1 MiB limit + a 1 MiB block) would be 40 MiB; the node held at most
    # the cap plus one block (and small messages), at every moment.
    print(f"\nnode-wide send peak {budget.peak} bytes (cap {cap}, block message {largest})")
    assert budget.peak <= cap + largest + BULK_MESSAGE_BYTES, (budget.peak, cap)

    # The send deadline cuts the non-readers, wave after wave, as the budget frees.
    # (Watched from the node's side: reading the sockets here would make them readers.)
    pm = node.connman.peer_manager
    assert wait_until(lambda: [p.host for p in pm.get_connected_peers()] == [HONEST], timeout=20)
    assert node.metric("peer_disconnections_total", reason="send_timeout") == len(hoarders)
    assert budget.peak <= cap + largest + BULK_MESSAGE_BYTES, (budget.peak, cap)
    assert wait_until(lambda: budget.used() == 0, timeout=10)
    assert node.metric("send_buffer_bytes") == 0
    honest.close()


def test_a_peer_cannot_grow_its_pending_queue_past_the_cap(inprocess_nodes, big_chain, monkeypatch):
    """Known items beyond MAX_PENDING_GETDATA are dropped unread and counted (the cap is
    lowered to 3 here: 1,000 distinct stored blocks would take minutes to mine)."""
    monkeypatch.setattr(block_serve, "MAX_PENDING_GETDATA", 3)
    node = inprocess_nodes("n")
    node.load(big_chain)
    reads = BlockReads(node)
    distinct = [h for _, h in big_chain]                 # genesis, block 1, eight big blocks
    hoarder = attacker(node, 0, rcvbuf=4096)
    hoarder.send(MsgGetdata([Inv(BLOCK, bytes(h)) for h in reversed(distinct)]))
    assert wait_until(lambda: node.metric("getdata_items_dropped_total") == len(distinct) - 3)
    peer_id = next(p.id for p in node.connman.peer_manager.get_connected_peers())
    server = node.ctx.block_relay.server
    assert server.pending_count(peer_id) + reads.count == 3
    hoarder.close()
