"""Hostile peers against the node's resources (issue "P2P under attack", items 3, 4, 5, 8).

Each attacker connects from its own loopback address (127.0.0.10, 127.0.0.11,
...; Linux routes all of 127/8), honest peers from 127.0.0.1, and every test
asserts what the honest side experiences: its ping answered, a slot for it,
a dead peer gone.  Counts and events, never wall-clock speed; the timeouts
are liveness guards.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.net import net_processing
from dilithion.net.net_receive import RECEIVE_FLOOR_PER_PEER
from dilithion.net.connection import DEFAULT_MAX_RECEIVE_BUFFER, MAX_VALID_PAYLOAD
from dilithion.net.eviction import EvictionCandidate, netgroup, select_node_to_evict
from dilithion.net.protocol import MsgPing

from framework import RawPeer, TestPeer, frame_raw, transport_metric, wait_until

MAGIC = ChainParams.regtest().magic
MiB = 1024 * 1024


def attacker_host(i: int) -> str:
    return f"127.0.0.{10 + i}"


def trickle_huge_message(raw: RawPeer, payload_bytes: int, chunk: int = 64 * 1024) -> bool:
    """Announce a ``block`` of the largest valid size (``MAX_VALID_PAYLOAD``, 4 MiB
    and a little) and send ``payload_bytes`` of it; False once the node has closed
    the connection."""
    header = frame_raw(MAGIC, "block", b"", size=MAX_VALID_PAYLOAD)[:24]
    block = b"\xa5" * chunk
    try:
        raw.send_raw(header)
        for _ in range(payload_bytes // chunk):
            raw.send_raw(block)
    except OSError:
        return False
    return True


def disconnects(cm, reason: str) -> float:
    return transport_metric(cm, "peer_disconnections_total", reason=reason)


# ------------------------------------------------------------------ (a) memory budget
def test_trickled_huge_messages_stay_within_the_receive_budget(nodes):
    """Six attackers each push 3 MiB of a 32 MiB - 1 announcement (18 MiB in all) at
    a node with an 8 MiB budget: the bytes held never exceed the budget, the
    largest holders are cut, and the honest peer's ping is still answered."""
    cm = nodes(max_receive_buffer=8 * MiB)
    with TestPeer().connect(cm.listen_port) as honest:
        honest.handshake()
        attackers = [RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(i)) for i in range(6)]
        try:
            for raw in attackers:
                raw.handshake()
            for raw in attackers:
                trickle_huge_message(raw, 3 * MiB)
            honest.sync_with_ping()
            assert wait_until(lambda: disconnects(cm, "receive_buffer") >= 2)
            assert cm.receive_buffer.peak <= 8 * MiB
            assert cm.receive_buffer.used() <= 8 * MiB
            assert wait_until(lambda: 0 < transport_metric(cm, "receive_buffer_bytes") <= 8 * MiB)
            honest.sync_with_ping()
            assert honest.is_connected
        finally:
            for raw in attackers:
                raw.close()
    # Every byte charged is released when the connections go.
    assert wait_until(lambda: cm.connected_count() == 0 and cm.receive_buffer.used() == 0)


def test_a_peer_holding_nothing_is_read_while_the_budget_is_spent_elsewhere(nodes):
    """The budget is spent where nobody can be cut for it (here the test charges it
    all, as unprocessed backlogs of flooding peers would: they drain only at the
    handler's pace).  A peer holding nothing is still read up to
    ``RECEIVE_FLOOR_PER_PEER``, so the honest ping is answered; before, every
    reader was paused until the budget had room again."""
    cm = nodes(max_receive_buffer=2 * MiB)
    with TestPeer().connect(cm.listen_port) as honest:
        honest.handshake()
        honest.sync_with_ping()
        cm.receive_buffer.add(cm.receive_buffer.limit)          # spent by others
        try:
            assert cm.receive_buffer.free() <= 0
            honest.sync_with_ping()                             # read, framed, answered
            assert cm.receive_buffer.peak <= 2 * MiB + RECEIVE_FLOOR_PER_PEER
        finally:
            cm.receive_buffer.add(-cm.receive_buffer.limit)


# ------------------------------------------------------------------ (b) lock-out
@pytest.mark.parametrize("attackers_handshake", [True, False], ids=["handshaken", "silent"])
def test_full_inbound_slots_evict_for_an_honest_peer_and_outbound_is_reserved(
        nodes, attackers_handshake):
    """12 slots, 2 of them outbound: 12 attacker connections from 127.0.0.10 (as many
    as the whole table) hold every inbound slot.  An honest inbound peer still
    gets in (an attacker is evicted) and an outbound connection (addnode /
    --connect) still succeeds."""
    target = nodes()
    cm = nodes(max_peers=12, max_outbound=2)
    attackers = []
    try:
        for _ in range(12):
            raw = RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(0))
            attackers.append(raw)
            if attackers_handshake:
                raw.handshake()
        # Only 10 inbound slots: the 11th and 12th connection each evicted an attacker.
        assert wait_until(lambda: transport_metric(cm, "peers_evicted_total") == 2)
        # (counted at the eviction, just before the newcomer joins the table)
        assert wait_until(lambda: cm.peer_manager.get_inbound_count() == 10)
        if attackers_handshake:
            assert wait_until(lambda: len(cm.peer_manager.handshake_complete_peers()) == 10)
        with TestPeer().connect(cm.listen_port) as honest:
            honest.handshake()
            honest.sync_with_ping()
            assert transport_metric(cm, "peers_evicted_total") == 3
            assert disconnects(cm, "evicted") == 3
            assert wait_until(lambda: cm.peer_manager.get_inbound_count() == 10)
            out = cm.connect("127.0.0.1", target.listen_port)
            assert out is not None
            assert cm.wait_for_handshake(out, 10)
            assert honest.is_connected
        # The attackers that lost their slots see their connections closed.
        assert sum(raw.is_closed(0.2) for raw in attackers) == 3
    finally:
        for raw in attackers:
            raw.close()


def test_per_netgroup_inbound_limit_counts_each_loopback_address_alone(nodes):
    cm = nodes(max_inbound_per_netgroup=3)
    peers = [RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(0)) for _ in range(4)]
    other = RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(1))
    try:
        assert peers[3].is_closed(10)                    # the fourth from 127.0.0.10: refused
        assert other.read_message().command == "version"  # 127.0.0.11 is its own group
        assert cm.peer_manager.get_inbound_count() == 4
        assert transport_metric(cm, "peers_evicted_total") == 0
    finally:
        for raw in peers + [other]:
            raw.close()


def test_netgroups_and_eviction_order():
    assert netgroup("8.8.8.8") == netgroup("8.8.4.4") == "8.8.0.0/16"
    assert netgroup("127.0.0.10") != netgroup("127.0.0.11")
    assert netgroup("10.1.2.3") == "10.1.2.3"           # private: on its own

    def cand(pid, group, connected, **kw):
        return EvictionCandidate(pid, group, connected, kw.pop("hs", True), **kw)
    # A peer without a handshake goes first, the oldest of the biggest group.
    assert select_node_to_evict([cand(1, "a", 1), cand(2, "b", 2, hs=False),
                                 cand(3, "b", 3, hs=False), cand(4, "c", 4, hs=False)]) == 2
    # Otherwise: the biggest netgroup's youngest peer; fast pingers and block senders kept.
    many = [cand(i, "attacker", 100 + i) for i in range(20)]
    honest = [cand(100, "h1", 1, min_ping=0.001), cand(101, "h2", 2, last_block=5.0),
              cand(102, "h3", 300)]
    assert select_node_to_evict(many + honest) == 19
    fast = [cand(i, "g", i, min_ping=0.001) for i in range(8)]
    assert select_node_to_evict(fast) is None          # all protected: refuse instead
    assert select_node_to_evict([]) is None


# ------------------------------------------------------------------ (c) dead links
def test_unanswered_ping_disconnects_after_ping_timeout(nodes):
    """An attacker keeps its socket open and reads nothing: it answers no ping and is
    cut for that ("ping timeout"), while the honest peer, which answers, stays."""
    cm = nodes(ping_interval=0.2, ping_timeout=2.0)
    reasons: dict[int, str] = {}
    nodes.processor(cm).add_disconnect_listener(lambda p, r: reasons.setdefault(p.id, r))
    with TestPeer().connect(cm.listen_port) as honest, \
            RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(0)) as dead:
        honest.handshake()
        dead.handshake()
        assert wait_until(lambda: len(cm.peer_manager.handshake_complete_peers()) == 2)
        dead_id = next(p.id for p in cm.peer_manager.get_all_peers()
                       if p.host == attacker_host(0))
        assert wait_until(lambda: dead_id in reasons, timeout=20)
        assert reasons[dead_id].startswith("ping timeout")
        assert disconnects(cm, "timeout") == 1
        honest.wait_for("ping", count=2)           # pinged, answered, still there
        assert honest.is_connected
        assert [p.host for p in cm.peer_manager.handshake_complete_peers()] == ["127.0.0.1"]


# ------------------------------------------------------------------ (d) pre-handshake CPU
def test_big_payload_before_the_handshake_is_dropped_undecoded(nodes, monkeypatch):
    decoded: list[str] = []
    real = net_processing.decode_payload

    def counting(command, payload):
        decoded.append(command)
        return real(command, payload)
    monkeypatch.setattr(net_processing, "decode_payload", counting)
    cm = nodes()
    with RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(0)) as raw:
        raw.send_raw(frame_raw(MAGIC, "block", os.urandom(2 * MiB)))
        raw.send_raw(frame_raw(MAGIC, "inv", b"\xff" * 1000))
        raw.send(MsgPing(7))
        assert raw.wait_for("pong").nonce == 7
    assert decoded == ["ping"]
    assert nodes.processor(cm).dropped_before_handshake == 2
    assert transport_metric(cm, "prehandshake_messages_dropped_total") == 2
    assert transport_metric(cm, "peer_misbehaviour_total", reason="undecodable") == 0


# ------------------------------------------------------------------ flags
def test_flags_reach_the_transport_config(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from dilithion.node import dilithion_node
    from dilithion.node.init import NodeConfig
    cfg = NodeConfig(network="regtest", datadir=tmp_path, max_receive_buffer_mib=16,
                     ping_timeout=5)
    cfg.apply_defaults()
    assert cfg.transport.max_receive_buffer == 16 * MiB and cfg.transport.ping_timeout == 5.0
    default = NodeConfig(network="regtest", datadir=tmp_path)
    default.apply_defaults()
    assert default.transport.max_receive_buffer == DEFAULT_MAX_RECEIVE_BUFFER
    assert default.transport.ping_timeout == 30.0
    seen = []
    monkeypatch.setattr(dilithion_node, "main", lambda config: seen.append(config) or 0)
    result = CliRunner().invoke(dilithion_node.cli, ["--regtest", "--maxreceivebuffer=64",
                                                     "--pingtimeout=10"])
    assert result.exit_code == 0, result.output
    assert seen[0].max_receive_buffer_mib == 64 and seen[0].ping_timeout == 10


# ------------------------------------------------------------------ measurements (slow)
def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_rss_with_40_trickling_attackers_and_the_default_budget(nodes):
    """40 attackers each push 4 MiB of a largest-valid announcement (160 MiB) at the
    default budget (64 MiB); reports the RSS growth (target: under 100 MiB)."""
    cm = nodes()
    peak = [_rss_bytes()]
    base = peak[0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_bytes())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attackers = [RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(i)) for i in range(40)]
    threads = [threading.Thread(target=trickle_huge_message, args=(raw, 4 * MiB))
               for raw in attackers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        with TestPeer().connect(cm.listen_port) as honest:
            honest.handshake()
            honest.sync_with_ping()
    finally:
        done.set()
        sampler.join()
        for raw in attackers:
            raw.close()
    growth = peak[0] - base
    print(f"\nRSS growth {growth / MiB:.0f} MiB; budget peak {cm.receive_buffer.peak / MiB:.0f} "
          f"MiB; cut {disconnects(cm, 'receive_buffer'):.0f}")
    assert cm.receive_buffer.peak <= DEFAULT_MAX_RECEIVE_BUFFER


@pytest.mark.slow
def test_125_attacker_connections_then_honest_inbound_and_addnode(nodes):
    """The real limits (125 slots, 8 outbound): 125 attacker connections from four
    addresses (32 per address allowed) take every inbound slot; reports how long
    an honest inbound handshake and an outbound connect then take."""
    target = nodes()
    cm = nodes()
    attackers = []
    try:
        for i in range(125):
            raw = RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(i % 4))
            attackers.append(raw)
            raw.handshake()
        assert wait_until(lambda: cm.peer_manager.get_inbound_count() == 117)
        t0 = time.monotonic()
        with TestPeer().connect(cm.listen_port) as honest:
            honest.handshake()
            t_in = time.monotonic() - t0
            t1 = time.monotonic()
            out = cm.connect("127.0.0.1", target.listen_port)
            assert out is not None and cm.wait_for_handshake(out, 10)
            t_out = time.monotonic() - t1
        print(f"\nhonest inbound handshake {t_in:.3f} s, outbound connect+handshake {t_out:.3f} s")
    finally:
        for raw in attackers:
            raw.close()
