"""AsyncBroadcaster against a real transport on loopback: stalled and killed
peers, 300 receivers, per-peer rate limits, retries, diagnostics and metrics."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from dilithion.consensus.chain import BlockStatus
from dilithion.net.socket import TokenBucket
from dilithion.net.protocol import Inv, InvType, MsgInv
from framework import FakeClock, InProcessNode, RawPeer, next_commands, raw_peer, regtest_chain, wait_until

BLOCK, TX = InvType.MSG_BLOCK_INV, InvType.MSG_TX_INV


def fake_hash(i: int) -> bytes:
    return i.to_bytes(4, "little") + b"\xab" * 28


@pytest.fixture
def node(inprocess_nodes, request):
    return inprocess_nodes("n", **getattr(request, "param", {}))


@pytest.fixture
def clocked(inprocess_nodes):
    """A node whose broadcaster runs on a hand-driven clock: rate limits, retry due
    times and latencies move only when the test advances it.  How fast things are
    in real time is contrib/bench/bench_broadcast.py's job, not the tests'."""
    def make(**kw):
        clock = FakeClock()
        options = {"clock": clock, **kw.pop("broadcaster_options", {})}
        return inprocess_nodes(broadcaster_options=options, **kw), clock

    return make


def advance_until(clock: FakeClock, predicate, step: float = 0.25, timeout: float = 10.0) -> bool:
    """Move the fake clock on in steps until ``predicate`` holds (real-time liveness guard)."""
    return wait_until(lambda: predicate() or (clock.advance(step) and False), timeout=timeout,
                      interval=0.02)


def fill_send_queue(node: InProcessNode, peer_id: int) -> None:
    """Queue messages for a peer that does not read until the transport refuses
    even the smallest one and the kernel buffers stay full."""
    big = MsgInv([Inv(TX, fake_hash(i)) for i in range(1000)])
    small = MsgInv([Inv(TX, fake_hash(0))])
    refused_rounds = 0
    for _round in range(50):
        accepted = 0
        for msg in (big, small):
            while node.connman.send_message(peer_id, msg):
                accepted += 1
        # Two refusals 0.2 s apart: the network thread has flushed all the kernel takes.
        refused_rounds = refused_rounds + 1 if accepted == 0 else 0
        if refused_rounds == 2:
            return
        time.sleep(0.2)
    raise AssertionError("the send queue never filled")


def abort(raw) -> None:
    """Close with RST, like a killed process."""
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def test_stalled_peer_never_delays_the_others(clocked):
    node, clock = clocked(send_queue_cap=256 * 1024)
    healthy = [raw_peer(node) for _ in range(9)]
    stalled = raw_peer(node, rcvbuf=4096)
    stalled_id = node.peer_id_of(stalled)
    fill_send_queue(node, stalled_id)
    b = node.ctx.broadcaster

    # The caller only queues: with the workers stopped the call still returns, and
    # nothing was sent from the caller's thread.
    b.stop()
    b.broadcast_block(fake_hash(1))
    assert b.diagnostics()["queue_depth"] == 1
    assert all(next_commands(raw) == [] for raw in healthy)
    clock.advance(0.5)                   # queued for 0.5 s (fake) before a worker takes it
    b.start()

    # Every healthy peer gets the inv while the clock stands still, i.e. before the
    # stalled peer's first retry can even come due: nobody waited for the stalled peer.
    for raw in healthy:
        assert raw.wait_for("inv", timeout=5).inv == [Inv(BLOCK, fake_hash(1))]
    delivered = lambda: sum(p["delivered"] for p in b.diagnostics()["peers"].values())  # noqa: E731
    assert wait_until(lambda: delivered() == 9 and b.diagnostics()["pending_retries"] == 1)
    diag = b.diagnostics()
    assert diag["tasks_done"] == 0 and diag["tasks_retried"] == 1

    # The stalled peer is retried with backoff, then given up for good.
    assert advance_until(clock, lambda: b.diagnostics()["tasks_done"] == 1, step=0.05)
    diag = b.diagnostics()
    assert diag["tasks_retried"] == b.max_retries
    assert diag["peers"][stalled_id]["failed"] == 1
    assert diag["peers"][stalled_id]["queued_bytes"] > 0
    assert node.metric("block_broadcast_failures_total") == 1
    assert node.metric("peer_broadcast_success_rate") == pytest.approx(0.9)
    # Latency: from broadcast_block to the last accepted inv, on the broadcaster's clock.
    assert node.metric("block_propagation_time_seconds_count", role="announce") == 1
    assert node.metric("block_propagation_time_seconds_sum", role="announce") == 0.5
    assert diag["last_broadcast_latency_s"] == 0.5
    for raw in healthy + [stalled]:
        raw.close()


def test_retry_count_and_backoff_come_from_the_environment(clocked, monkeypatch):
    """``DIL_BROADCAST_RETRIES`` / ``DIL_BROADCAST_BACKOFF_MS`` reach the broadcaster
    through ``NodeConfig`` (and the metrics): a stalled peer is retried 5 times, the
    first retry 0.4 s after the refusal, doubling, before the announcement is given up."""
    monkeypatch.setenv("DIL_BROADCAST_RETRIES", "5")
    monkeypatch.setenv("DIL_BROADCAST_BACKOFF_MS", "400")
    node, clock = clocked(send_queue_cap=256 * 1024)
    b = node.ctx.broadcaster
    assert (b.max_retries, b.retry_base_s) == (5, 0.4)
    assert node.metric("broadcast_max_retries") == 5
    assert node.metric("broadcast_retry_backoff_seconds") == 0.4
    stalled = raw_peer(node, rcvbuf=4096)
    fill_send_queue(node, node.peer_id_of(stalled))
    start = clock()
    b.broadcast_block(fake_hash(1))
    assert wait_until(lambda: b.diagnostics()["tasks_retried"] == 1)
    assert advance_until(clock, lambda: b.diagnostics()["tasks_failed"] == 1, timeout=60)
    assert b.diagnostics()["tasks_retried"] == 5
    # The defaults (3 retries from 50 ms) would give up after 0.35 s of the clock.
    assert clock() - start >= 0.4 * (1 + 2 + 4 + 8 + 16)
    assert node.metric("block_broadcast_failures_total") == 1
    stalled.close()


def test_peer_killed_mid_broadcast(node):
    peers = [raw_peer(node) for _ in range(20)]
    doomed, survivors = peers[:5], peers[5:]
    b = node.ctx.broadcaster
    for i in range(40):
        b.broadcast_block(fake_hash(i))
        if i == 10:
            for raw in doomed:
                abort(raw)
    for raw in survivors:
        got = []
        while len(got) < 40:
            got += [item.hash for item in raw.wait_for("inv", timeout=5).inv]
        assert got == [fake_hash(i) for i in range(40)]
    assert wait_until(lambda: b.diagnostics()["tasks_done"] + b.diagnostics()["tasks_failed"]
                      == 40, timeout=5)
    assert b.diagnostics()["tasks_failed"] == 0           # survivors got every one
    # The workers are alive and the dead peers are gone from the fan-out.
    assert wait_until(lambda: len(node.connman.peer_manager.handshake_complete_peers()) == 15)
    b.broadcast_block(fake_hash(99))
    for raw in survivors:
        assert raw.wait_for("inv", timeout=5).inv == [Inv(BLOCK, fake_hash(99))]
        raw.close()


@pytest.mark.parametrize("node", [{"max_peers": 400, "max_inbound_per_netgroup": 0}],
                         indirect=True)
def test_300_peers_receive_a_broadcast(node):
    peers = [raw_peer(node) for _ in range(300)]
    node.ctx.broadcaster.broadcast_block(fake_hash(7))
    for raw in peers:     # a liveness guard; the fan-out time is bench_broadcast.py's figure
        assert raw.wait_for("inv", timeout=10).inv == [Inv(BLOCK, fake_hash(7))]
    diag = node.ctx.broadcaster.diagnostics()
    assert wait_until(lambda: node.ctx.broadcaster.diagnostics()["tasks_done"] == 1)
    assert len(diag["peers"]) == 300
    assert wait_until(lambda: node.metric("peer_broadcast_success_rate") == 1.0)  # set last
    for raw in peers:
        raw.close()


def test_per_peer_rate_limit_spaces_announcements(clocked):
    node, clock = clocked(broadcaster_options={"rate": 4.0, "burst": 2.0})
    relaying = raw_peer(node)
    silent = raw_peer(node, relay=False)          # asked for no tx relay
    b = node.ctx.broadcaster
    # The clock stands still: callers are never blocked by the rate limit (these
    # calls could not return if they waited for a token) ...
    for i in range(6):
        b.broadcast_tx(fake_hash(100 + i))
    # ... two go out at once (the burst), the other four wait for tokens.
    for i in range(2):
        assert relaying.wait_for("inv", timeout=5).inv == [Inv(TX, fake_hash(100 + i))]
    assert wait_until(lambda: b.diagnostics()["pending_retries"] == 4)
    assert next_commands(relaying) == []
    # Then one per 1/rate = 0.25 s of (fake) time, in order, never two.
    for i in range(2, 6):
        clock.advance(0.25)
        assert relaying.wait_for("inv", timeout=5).inv == [Inv(TX, fake_hash(100 + i))]
        assert wait_until(lambda: b.diagnostics()["pending_retries"] == 5 - i)
        assert next_commands(relaying) == []
    assert next_commands(silent) == []
    assert wait_until(lambda: b.diagnostics()["tasks_done"] == 6)   # counted after the send
    # Announced txids are remembered per peer and not announced again.
    assert not node.ctx.tx_relay.should_announce(node.peer_id_of(relaying), fake_hash(100))
    relaying.close()
    silent.close()


def test_excluded_and_incomplete_peers_get_nothing(node):
    a = raw_peer(node)
    bpeer = raw_peer(node)
    half = RawPeer(node.p2p_port, node.ctx.magic)    # never completes the handshake
    node.ctx.broadcaster.broadcast_block(fake_hash(5), exclude_peer=node.peer_id_of(a))
    assert bpeer.wait_for("inv").inv == [Inv(BLOCK, fake_hash(5))]
    assert next_commands(a) == []
    # The half-open peer only ever saw our version.
    half.sock.settimeout(0.3)
    msg = half.read_message(5)                   # liveness guard
    assert msg.command == "version"
    with pytest.raises(TimeoutError):
        half.read_message(0.3)
    for raw in (a, bpeer, half):
        raw.close()


def test_a_new_tip_is_announced_once(node):
    """Whoever connects a block (the miner, RPC ``generatetoaddress``, a peer's
    ``block``), the block relay's tip listener is the only announcer: one inv."""
    raw = raw_peer(node)
    (block, h), = regtest_chain(1)[1:]
    assert node.chain.process_new_block(block, h).status is BlockStatus.TIP   # as the miner does
    assert raw.wait_for("inv").inv == [Inv(BLOCK, bytes(h))]
    assert next_commands(raw) == []
    assert wait_until(lambda: node.ctx.broadcaster.diagnostics()["tasks_done"] == 1)
    raw.close()


def test_diagnostics_and_queue_depth_while_workers_are_stopped(node):
    b = node.ctx.broadcaster
    b.stop()
    for i in range(5):
        b.broadcast_block(fake_hash(200 + i))
    diag = b.diagnostics()
    assert diag["queue_depth"] == 5 and diag["running"] is False
    assert node.metric("message_queue_depth") == 5
    b.start()
    assert wait_until(lambda: b.diagnostics()["queue_depth"] == 0)
    assert node.metric("message_queue_depth") == 0
    assert set(diag) >= {"queue_depth", "tasks_done", "tasks_failed", "tasks_retried",
                         "last_broadcast_latency_s", "peers"}


def test_send_rate_is_sampled_per_peer(node):
    raw = raw_peer(node)
    pid = node.peer_id_of(raw)
    b = node.ctx.broadcaster
    for i in range(50):
        b.broadcast_block(fake_hash(300 + i))
    for _ in range(50):
        raw.wait_for("inv")
    assert wait_until(lambda: b.diagnostics()["peers"].get(pid, {}).get("send_rate_bps", 0) > 0,
                      timeout=3)
    raw.close()


def test_token_bucket():
    bucket = TokenBucket(rate=10.0, burst=3.0, now=100.0)
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.next_token_at(100.0) == pytest.approx(100.1)
    assert not bucket.try_take(100.05)
    assert bucket.try_take(100.11)
    assert bucket.try_take(200.0) and bucket.tokens == pytest.approx(2.0)   # capped at burst
