"""Bad input from peers: each case is dropped, scored and logged without
crashing or stalling any other peer (net D-01..D-05, D-09)."""
from __future__ import annotations

import time

import pytest
from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import MsgInv, MsgPing, MsgVersion
from dilithion.net.serialize import MAX_MESSAGE_SIZE, ser_compact_size

from framework import RawPeer, frame, frame_raw, transport_metric, wait_until

MAGIC = ChainParams.regtest().magic
BAD_HOST = "127.0.0.10"


@pytest.fixture
def logs():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO")
    yield lines
    logger.remove(sink)


class Setup:
    """A node, one well-behaved peer (to show nobody else is stalled) and one bad peer
    on its own host (misbehaviour closes every connection of the offending host)."""

    def __init__(self, cm):
        self.cm = cm
        self.good = RawPeer(cm.listen_port, MAGIC)
        self.good.handshake()
        self.bad = RawPeer(cm.listen_port, MAGIC, bind_host=BAD_HOST)
        self.bad.handshake()
        assert wait_until(lambda: len(cm.peer_manager.handshake_complete_peers()) == 2)
        port = self.bad.sock.getsockname()[1]
        self.bad_id = next(p.id for p in cm.peer_manager.get_all_peers() if p.port == port)

    def good_still_served(self, nonce=7):
        """The good peer is answered after the bad one's input (wait_for's timeout is a
        liveness guard, not a speed bound)."""
        self.good.send(MsgPing(nonce))
        assert self.good.wait_for("pong").nonce == nonce

    def score(self):
        peer = self.cm.peer_manager.get_peer(self.bad_id)
        return None if peer is None else peer.misbehavior_score

    def close(self):
        self.good.close()
        self.bad.close()


@pytest.fixture
def setup(nodes):
    s = Setup(nodes(recv_buffer_cap=64 * 1024))
    yield s
    s.close()


def _logged_once(logs, *needles):
    return sum(all(n in line for n in needles) for line in logs) == 1


def test_wrong_magic_disconnects_without_score(setup, logs):
    setup.bad.send_raw(frame_raw(0xD1714102, "ping", bytes(8)))  # mainnet magic on regtest
    assert setup.bad.is_closed(10)
    assert _logged_once(logs, f"Disconnecting peer {setup.bad_id}", "wrong magic", "not scored")
    assert transport_metric(setup.cm, "peer_misbehaviour_total", reason="wrong magic") == 0
    pm = setup.cm.peer_manager
    assert not pm.is_banned(BAD_HOST) and not pm.is_discouraged(BAD_HOST)
    setup.good_still_served()
    with RawPeer(setup.cm.listen_port, MAGIC, bind_host=BAD_HOST) as again:  # a misconfigured
        again.handshake()                                                    # node, not an enemy


def test_bad_checksum_skips_only_that_message(setup, logs):
    data = bytearray(frame(MAGIC, MsgPing(1)))
    data[23] ^= 0x01
    setup.bad.send_raw(bytes(data) + frame(MAGIC, MsgPing(2)))
    assert setup.bad.wait_for("pong").nonce == 2  # framing intact: the next message is served
    assert setup.score() == 10
    assert _logged_once(logs, f"Misbehaving peer {setup.bad_id}", "bad checksum")
    setup.good_still_served()


def test_repeated_bad_checksums_reach_ban_threshold(setup):
    bad = bytearray(frame(MAGIC, MsgPing(1)))
    bad[20] ^= 0xFF
    setup.bad.send_raw(bytes(bad) * 10)
    assert setup.bad.is_closed(10)
    assert setup.cm.peer_manager.is_discouraged(BAD_HOST)
    assert transport_metric(setup.cm, "peer_disconnections_total", reason="misbehaviour") == 1
    setup.good_still_served()


def test_oversized_header_decided_without_waiting_for_payload(setup, logs):
    # Only the 24-byte header is ever sent: a node that waited for the payload would
    # keep the connection open (the inactivity timeout is minutes), so being closed
    # at all is the behaviour; the 10 s is a liveness guard.
    setup.bad.send_raw(frame_raw(MAGIC, "block", b"", size=MAX_MESSAGE_SIZE + 1)[:24])
    assert setup.bad.is_closed(10)
    assert _logged_once(logs, f"Misbehaving peer {setup.bad_id}", "oversized")
    setup.good_still_served()


def test_payload_over_per_connection_cap_refused_at_header(setup):
    # 64 KiB cap in this fixture: a legal-size (< 32 MiB) but over-cap announcement
    setup.bad.send_raw(frame_raw(MAGIC, "block", b"", size=100_000)[:24] + b"\0" * 1000)
    assert setup.bad.is_closed(10)
    assert transport_metric(setup.cm, "peer_misbehaviour_total", reason="oversized") == 1
    setup.good_still_served()


def test_truncated_payload_peer_closes_mid_message(setup, logs):
    setup.bad.send_raw(frame(MAGIC, MsgPing(5))[:24 + 3])  # header and 3 of 8 payload bytes
    setup.bad.close()
    assert wait_until(lambda: setup.cm.peer_manager.get_peer(setup.bad_id) is None)
    assert transport_metric(setup.cm, "peer_misbehaviour_total", reason="truncated message") == 1
    assert _logged_once(logs, f"Misbehaving peer {setup.bad_id}", "truncated message")
    setup.good_still_served()


def test_count_above_limit_is_undecodable(setup, logs):
    payload = ser_compact_size(50_001) + bytes(36)
    setup.bad.send_raw(frame_raw(MAGIC, "inv", payload))
    setup.bad.send(MsgPing(3))
    assert setup.bad.wait_for("pong").nonce == 3   # connection kept, message dropped
    assert setup.score() == 20
    assert _logged_once(logs, f"Misbehaving peer {setup.bad_id}", "undecodable inv", "exceeds limit")
    setup.good_still_served()


def test_undecodable_version_gets_no_verack(nodes):
    """No handshake without a version the node can hold: no verack, the slot freed
    at once (issue 21), the misbehaviour logged once."""
    cm = nodes()
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.read_message()  # our version
        raw.send_raw(frame_raw(MAGIC, "version", MsgVersion().serialize()[:20]))
        raw.send(MsgPing(1))
        commands = []
        while (msg := raw.read_message(10.0)) is not None:
            commands.append(msg.command)
        assert "verack" not in commands
        assert wait_until(lambda: cm.connected_count() == 0)


def test_bad_command_field_skipped(setup):
    setup.bad.send_raw(frame_raw(MAGIC, b"pingpingping", bytes(8)))  # 12th byte non-NUL
    setup.bad.send(MsgPing(4))
    assert setup.bad.wait_for("pong").nonce == 4
    assert setup.score() == 20
    setup.good_still_served()


def test_message_flood_is_dropped_scored_and_discouraged(nodes, logs):
    cm = nodes(msg_rate=20, msg_burst=20)
    good = RawPeer(cm.listen_port, MAGIC)
    bad = RawPeer(cm.listen_port, MAGIC, bind_host=BAD_HOST)
    try:
        good.handshake()
        bad.handshake()
        bad.send_raw(frame(MAGIC, MsgPing(0)) * 200)
        assert bad.is_closed(10)
        assert cm.peer_manager.is_discouraged(BAD_HOST)
        assert sum("flood" in line and "Misbehaving" in line for line in logs) == 1
        good.send(MsgPing(1))
        assert good.wait_for("pong").nonce == 1
    finally:
        good.close()
        bad.close()


def test_garbage_before_handshake_never_crashes(nodes):
    """Random bytes with the right magic and sizes: scored, nothing crashes, others served."""
    import random
    cm = nodes()
    rng = random.Random(3)
    with RawPeer(cm.listen_port, MAGIC) as good:
        good.handshake()
        for _ in range(20):
            with RawPeer(cm.listen_port, MAGIC) as bad:
                cmd = rng.choice(["version", "inv", "getdata", "addr", "block", "tx", "ping"])
                bad.send_raw(frame_raw(MAGIC, cmd, rng.randbytes(rng.randint(0, 200))))
        good.send(MsgPing(11))
        assert good.wait_for("pong").nonce == 11
        assert cm._net_thread.is_alive() and nodes.processor(cm).thread.is_alive()


def test_handler_backlog_pauses_reading_without_losing_messages(nodes):
    """A peer cannot queue unbounded work for the handler thread: reads pause, then resume."""
    import threading
    cm = nodes(handler_backlog_msgs=50, handler_backlog_bytes=1 << 20)
    gate = threading.Event()
    got = []

    def slow_handler(peer, msg):
        gate.wait(10)
        got.append(msg)

    nodes.processor(cm).add_handler(MsgInv, slow_handler)
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.handshake()
        assert wait_until(lambda: cm.peer_manager.handshake_complete_peers())
        pid = cm.peer_manager.handshake_complete_peers()[0].id
        one = frame(MAGIC, MsgInv([]))
        for _ in range(40):
            raw.send_raw(one * 50)
        conn = cm._conns[pid]
        assert wait_until(lambda: conn.backlog.paused)
        time.sleep(0.2)
        assert conn.backlog.counts()[0] < 2000  # the rest waits in kernel buffers, not in our memory
        gate.set()
        assert wait_until(lambda: len(got) == 2000, timeout=10)
        assert not conn.backlog.paused and conn.backlog.counts()[0] == 0
