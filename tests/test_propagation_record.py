"""The per-block propagation record (``dilithion.net.propagation``) and RPC
``getblockpropagation`` shown by ``dilithion-cli``.

End to end: a node with two healthy peers and one stalled peer (handshake, then
never reads) mines a block; its record says the healthy peers were sent the inv,
asked for the block and were sent it, and the stalled peer never asked for it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dilithion.mining.template import mine_block
from dilithion.net.propagation import MAX_PEERS_PER_BLOCK, PropagationLog
from dilithion.rpc.client import RPCCallError

from framework import MINER, REGTEST, REGTEST_MAGIC, InProcessNode, RawPeer, converged, heights, wait_until
from framework import CONVERGE_TIMEOUT
from test_failure_scenarios import fill_send_queue

CLI = Path(sys.executable).parent / "dilithion-cli"


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_record_keeps_first_stamps_reasons_and_is_bounded():
    clock = _Clock()
    log = PropagationLog(capacity=3, clock=clock)
    h = bytes(range(32))
    log.note(h, 1, "inv_queued")                 # unknown block: ignored
    assert log.get(h) is None
    log.connected(h, 7, None)
    clock.t += 0.5
    log.note(h, 1, "inv_queued")
    clock.t += 0.25
    log.note(h, 1, "inv_written")
    log.note(h, 1, "inv_written", at=5000.0)     # the first stamp stays
    log.not_sent(h, 2, "peer sent us the block")
    log.note(h, 3, "inv_queued")
    log.peer_disconnected(3)
    rec = log.get(h)
    assert rec["hash"] == h[::-1].hex() and rec["height"] == 7 and rec["source"] == "local"
    by_peer = {p["peer"]: p for p in rec["peers"]}
    assert by_peer[1]["inv_queued_ms"] == 500.0 and by_peer[1]["inv_written_ms"] == 750.0
    assert by_peer[1]["status"] == "inv written"
    assert by_peer[2]["status"] == "not sent" and by_peer[2]["not_sent"] == "peer sent us the block"
    assert by_peer[3]["not_sent"] == "peer disconnected"
    for i in range(3):                           # capacity 3: the first block is forgotten
        log.connected(bytes([i + 1]) * 32, 8 + i, 4)
    assert log.get(h) is None and len(log.recent()) == 3


def test_record_entries_are_bounded_whatever_peers_request():
    """Peers churning under new ids (each reconnect is a new peer id) cannot grow a
    block's record: at most MAX_PEERS_PER_BLOCK entries, the oldest forgotten first;
    hashes that never became our tip get no record at all."""
    log = PropagationLog(capacity=2, clock=_Clock())
    h = bytes(range(32))
    log.connected(h, 1, None)
    for peer_id in range(10_000):
        log.note(h, peer_id, "getdata")
        log.note(bytes([peer_id % 256]) * 32, peer_id, "getdata")   # unrecorded hashes
    peers = log.get(h)["peers"]
    assert len(peers) == MAX_PEERS_PER_BLOCK
    assert [p["peer"] for p in peers] == list(range(10_000 - MAX_PEERS_PER_BLOCK, 10_000))
    assert log.recent() == [h[::-1].hex()]


def test_getblockpropagation_shows_healthy_and_stalled_peers(process_node):
    a = process_node("A", ["--connect=none"], env={**os.environ, "DIL_SEND_TIMEOUT": "600000"})
    b, c = process_node("B"), process_node("C")
    a.start()
    for n in (b, c):
        n.extra_args = [f"--connect={a.p2p_address}"]
        n.start()
    wait_until(lambda: a.peer_count() == 2, timeout=15, message=a.describe)
    tip = a.mine(2)[-1]
    wait_until(lambda: converged((a, b, c)), timeout=CONVERGE_TIMEOUT, message=lambda: heights((a, b, c)))

    stalled = RawPeer(a.p2p_port, REGTEST_MAGIC, rcvbuf=4096)
    try:
        stalled.handshake()
        wait_until(lambda: a.peer_count() == 3, timeout=10)
        stalled_id = max(p["id"] for p in a.rpc("getpeerinfo"))
        # Enough replies to fill the kernel buffers and leave megabytes in A's send queue.
        fill_send_queue(stalled)
        wait_until(lambda: _queued(a, stalled_id) > 1_000_000, timeout=30)
        block = a.mine(1)[0]
        wait_until(lambda: b.best_hash() == block and c.best_hash() == block,
                   timeout=CONVERGE_TIMEOUT, message=lambda: heights((a, b, c)))

        def record():
            out = subprocess.run([str(CLI), "--regtest", f"--datadir={a.datadir}",
                                  f"--rpcport={a.rpc_port}", "getblockpropagation", block],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        wait_until(lambda: record()["summary"]["block_sent"] == 2, timeout=15,
                   message=lambda: json.dumps(record(), indent=1))
        rec = record()
        assert rec["hash"] == block and rec["source"] == "local" and rec["height"] == 3
        assert rec["summary"]["peers"] == 3
        by_peer = {p["peer"]: p for p in rec["peers"]}
        for pid, p in by_peer.items():
            if pid == stalled_id:
                # Queued behind megabytes it never reads: it never asked for the block.
                # ("written" means handed to the kernel, whose buffer may still take the inv.)
                assert p["inv_queued"] is not None and p["getdata"] is None, p
                assert p["block_written"] is None and p["status"] in ("inv queued", "inv written")
            else:
                assert p["status"] == "block sent", p
                assert p["inv_queued_ms"] <= p["inv_written_ms"] <= p["getdata_ms"] \
                    <= p["block_queued_ms"] <= p["block_written_ms"], p
                assert p["addr"].startswith("127.0.0.1:")
        # The peers record where the block came from.
        relayed = b.rpc("getblockpropagation", [block])
        assert relayed["source"] == "peer" and relayed["from_peer"] is not None
    finally:
        stalled.close()
    try:
        a.rpc("getblockpropagation", ["00" * 32])
        raise AssertionError("unknown block answered")
    except RPCCallError as exc:
        assert "not in the propagation record" in str(exc)
    for n in (a, b, c):
        n.assert_no_traceback()


def _queued(node, peer_id: int) -> int:
    peers = node.rpc("getbroadcastinfo")["peers"]
    info = peers.get(str(peer_id)) or peers.get(peer_id) or {}
    return int(info.get("queued_bytes", 0))


def test_a_block_found_here_is_announced_without_hashing_it_again(tmp_path):
    """The miner hands its block to the chain with the hash it found; the relay's
    tip listener used to hash it again (one RandomX hash, ~25 ms in light mode)
    before the announcement, because such a block is not in the header-hash cache."""
    a = InProcessNode(tmp_path, "a", rpc=False).start()
    b = InProcessNode(tmp_path, "b", rpc=False).start()
    try:
        b.dial(a)
        hashed_before = a.chain.headers_hashed
        found = []
        for _ in range(3):
            tip = a.chain.tip()
            block, block_hash = mine_block(a.ctx.hasher, tip.hash, tip.height + 1,
                                           MINER.pub_key_hash(), REGTEST,
                                           now=REGTEST.genesis_time + 60 * (tip.height + 1))
            a.chain.process_new_block(block, block_hash)
            found.append(block_hash)
        assert wait_until(lambda: b.best_hash() == found[-1].get_hex(), timeout=30)
        assert a.chain.headers_hashed == hashed_before
        for block_hash in found:
            record = a.ctx.block_relay.propagation.get(bytes(block_hash))
            assert record["source"] == "local"
            assert [p["status"] for p in record["peers"]] == ["block sent"]
    finally:
        b.close()
        a.close()
