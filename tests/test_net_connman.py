"""ConnectionManager on real loopback sockets: handshakes, limits, timers,
slow readers, dead peers and shutdown (net D-11, D-13, D-19, D-20, D-26)."""
from __future__ import annotations

import socket
import time

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.core.env import EnvError
from dilithion.net.protocol import (Inv, MsgBlock, MsgGetaddr, MsgInv, MsgPing, MsgPong, MsgVerack,
                                    MsgVersion)
from dilithion.primitives.block import Block, BlockHeader, Uint256

from framework import NodeFactory, RawPeer, frame, frame_raw, transport_metric, wait_until

MAGIC = ChainParams.regtest().magic


def _ids(cm):
    return [p.id for p in cm.peer_manager.handshake_complete_peers()]


def test_handshake_both_directions(nodes):
    a, b = nodes(), nodes()
    events = {"a": [], "b": []}
    nodes.processor(a).add_handshake_listener(lambda p: events["a"].append(p.id))
    nodes.processor(b).add_handshake_listener(lambda p: events["b"].append(p.id))
    ab = a.connect("127.0.0.1", b.listen_port)
    ba = b.connect("127.0.0.1", a.listen_port)
    assert a.wait_for_handshake(ab, 5) and b.wait_for_handshake(ba, 5)
    assert wait_until(lambda: len(events["a"]) == 2 and len(events["b"]) == 2)
    for cm in (a, b):
        info = cm.peer_info()
        assert sorted(i["inbound"] for i in info) == [False, True]
        assert all(i["handshake"] and i["subver"] == "/DilithionPy:0.1.0/" for i in info)
        assert transport_metric(cm, "connected_peers_count") == 2


def test_version_first_and_verack_only_once(nodes):
    """Our version precedes our verack; a second version is scored, not demoting (D-11)."""
    cm = nodes()
    with RawPeer(cm.listen_port, MAGIC) as raw:
        assert raw.read_message().command == "version"
        raw.send(MsgVersion(nonce=42, user_agent=b"/p2p_util:0.1/"))
        raw.wait_for("verack")
        raw.send(MsgVerack())
        assert wait_until(lambda: _ids(cm))
        raw.send(MsgVersion(nonce=43, user_agent=b"/again/"))
        raw.send(MsgPing(9))
        raw.wait_for("pong")  # nothing but the pong came back: no second verack
        peer = cm.peer_manager.handshake_complete_peers()[0]
        assert peer.is_handshake_complete() and peer.misbehavior_score == 10
        assert peer.user_agent == b"/p2p_util:0.1/"


def test_verack_before_version_and_no_gating_for_ping(nodes):
    cm = nodes()
    got = []
    nodes.processor(cm).add_handler(MsgInv, lambda p, m: got.append(m))
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.send(MsgInv([Inv(2, bytes(32))]))  # before the handshake: ignored
        raw.send(MsgPing(1))                    # ping is answered in any state
        assert raw.wait_for("pong").nonce == 1
        raw.send(MsgVerack())
        raw.send(MsgVersion(nonce=5))
        raw.wait_for("verack")
        assert wait_until(lambda: _ids(cm))
        raw.send(MsgInv([Inv(2, b"\x01" * 32)]))
        assert wait_until(lambda: got)
        assert got == [MsgInv([Inv(2, b"\x01" * 32)])]


def test_unknown_command_ignored_without_penalty(nodes):
    cm = nodes()
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.handshake()
        raw.send_raw(frame_raw(MAGIC, "getheaders", b"\x00" * 10))
        raw.send(MsgPing(3))
        raw.wait_for("pong")
        assert cm.peer_info()[0]["banscore"] == 0


def test_handler_errors_are_scored_or_logged_and_thread_survives(nodes):
    cm = nodes()
    calls = []

    def bad_value(peer, msg):
        calls.append("value")
        raise ValueError("no such block")

    def crash(peer, msg):
        calls.append("crash")
        raise RuntimeError("bug")

    nodes.processor(cm).add_handler(MsgInv, bad_value)
    nodes.processor(cm).add_handler(MsgGetaddr, crash)
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.handshake()
        raw.send(MsgInv([]))
        raw.send(MsgGetaddr())
        raw.send(MsgPing(4))
        raw.wait_for("pong")
        assert wait_until(lambda: calls == ["value", "crash"])
        assert wait_until(lambda: cm.peer_info()[0]["banscore"] == 10)
        raw.send(MsgInv([]))
        assert wait_until(lambda: calls.count("value") == 2)


def test_self_connection_detected(nodes):
    cm = nodes()
    closed = []
    nodes.processor(cm).add_disconnect_listener(lambda p, reason: closed.append(reason))
    pid = cm.connect("127.0.0.1", cm.listen_port)
    assert pid is not None
    assert not cm.wait_for_handshake(pid, 3)
    assert wait_until(lambda: cm.connected_count() == 0 and len(closed) == 2)
    assert "self-connection" in closed


def test_outbound_limit_and_connect_validation(nodes):
    target = nodes()
    cm = nodes(max_outbound=2)
    assert cm.connect("127.0.0.1", target.listen_port) is not None
    assert cm.connect("localhost", target.listen_port) is not None
    assert cm.connect("127.0.0.1", target.listen_port) is None      # D-26: 8 (here 2) enforced
    assert cm.connect("not-an-ip", 1) is None
    assert cm.connect("127.0.0.1", 0) is None


def test_connect_refused_is_removed(nodes):
    cm = nodes()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    pid = cm.connect("127.0.0.1", port)
    assert pid is not None
    assert wait_until(lambda: cm.peer_manager.get_peer(pid) is None)
    assert transport_metric(cm, "socket_errors_total") >= 1


def _block_message(size: int) -> MsgBlock:
    header = BlockHeader(1, Uint256.ZERO, Uint256.ZERO, 0, 0x207fffff, 0)
    return MsgBlock(Block(header, b"\xab" * size))


def test_slow_reader_is_cut_at_send_deadline_without_delaying_others(nodes):
    send_timeout = 2.0
    cm = nodes(send_timeout_ms=int(send_timeout * 1000), send_queue_cap=64 * 1024 * 1024)
    cuts = []
    nodes.processor(cm).add_disconnect_listener(lambda p, reason: cuts.append((p.id, reason, time.monotonic())))
    with RawPeer(cm.listen_port, MAGIC, rcvbuf=4096) as slow, RawPeer(cm.listen_port, MAGIC) as fast:
        slow.handshake()
        fast.handshake()
        assert wait_until(lambda: len(_ids(cm)) == 2)
        slow_id = next(p.id for p in cm.peer_manager.get_all_peers()
                       if p.port == slow.sock.getsockname()[1])
        big = _block_message(1024 * 1024)
        # The send deadline counts from the last write progress, which is after this.
        before_queueing = time.monotonic()
        sent = 0
        while sent < 24:  # far more than loopback kernel buffers hold
            assert cm.send_message(slow_id, big)
            sent += 1
        assert cm.queued_bytes(slow_id) > 0
        # The other peer is served while the slow one is stuck: its pongs arrive before
        # the slow peer's deadline cuts it (a transport that waited on the slow peer
        # would answer only after the cut).  No speed bound: 5 loopback round trips
        # against a 2 s deadline.
        for n in range(5):
            fast.send(MsgPing(n))
            assert fast.wait_for("pong").nonce == n
        # ...while the slow one was still connected and stuck.
        assert cm.peer_manager.get_peer(slow_id) is not None and cuts == []
        assert cm.queued_bytes(slow_id) > 0
        # The listener runs after the peer is dropped: wait for it (liveness guard).
        assert wait_until(lambda: cuts, timeout=10)
        assert cm.peer_manager.get_peer(slow_id) is None
        # Cut by the send deadline, and not before it: both hold however loaded the machine.
        [(cut_id, reason, cut_at)] = cuts
        assert (cut_id, reason) == (slow_id, "send timeout")
        assert cut_at - before_queueing >= send_timeout
        assert transport_metric(cm, "send_timeout_errors_total") == 1
        assert transport_metric(cm, "peer_disconnections_total", reason="send_timeout") == 1
        assert slow.is_closed(5)  # socket really closed (D-20)
        fast.send(MsgPing(99))
        assert fast.wait_for("pong").nonce == 99


def test_send_queue_backpressure(nodes):
    cm = nodes(send_timeout_ms=10_000, send_queue_cap=256 * 1024)
    with RawPeer(cm.listen_port, MAGIC, rcvbuf=4096) as slow:
        slow.handshake()
        assert wait_until(lambda: _ids(cm))
        pid = _ids(cm)[0]
        msg = _block_message(64 * 1024)
        results = [cm.send_message(pid, msg) for _ in range(200)]
        assert results[0] and not all(results)
        assert cm.queued_bytes(pid) <= 256 * 1024 + 70 * 1024
    assert cm.send_message(12345, MsgPing(1)) is False


def test_send_timeout_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DIL_SEND_TIMEOUT", "1234")
    factory = NodeFactory(tmp_path)
    try:
        assert factory().send_timeout == pytest.approx(1.234)
        assert factory(send_timeout_ms=700).send_timeout == pytest.approx(0.7)
    finally:
        factory.stop_all()
    monkeypatch.setenv("DIL_SEND_TIMEOUT", "soon")  # not a number: an error, not the default
    with pytest.raises(EnvError, match=r"DIL_SEND_TIMEOUT='soon' is not a whole number"):
        NodeFactory(tmp_path / "x")()
    monkeypatch.delenv("DIL_SEND_TIMEOUT")
    factory = NodeFactory(tmp_path / "y")
    try:
        assert factory().send_timeout == 5.0                           # regtest default
        assert factory(ChainParams.mainnet()).send_timeout == 10.0
    finally:
        factory.stop_all()


def test_peer_killed_mid_stream(nodes):
    cm = nodes()
    closed = []
    nodes.processor(cm).add_disconnect_listener(lambda p, reason: closed.append((p.id, reason)))
    with RawPeer(cm.listen_port, MAGIC) as other:
        other.handshake()
        victim = RawPeer(cm.listen_port, MAGIC)
        victim.handshake()
        assert wait_until(lambda: len(_ids(cm)) == 2)
        data = frame(MAGIC, MsgInv([Inv(2, bytes(32))] * 100))
        victim.send_raw(data[: len(data) // 2])
        victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        victim.close()  # RST, mid-message
        assert wait_until(lambda: len(closed) == 1 and cm.connected_count() == 1)
        other.send(MsgPing(1))
        assert other.wait_for("pong").nonce == 1


def test_inbound_limit_with_200_simultaneous_peers(nodes):
    """125 slots, 8 reserved for outbound: 117 inbound.  Connections past that evict
    an inbound peer that has not completed the handshake (the oldest), so the
    table stays at 117 and every evicted socket sees EOF."""
    cm = nodes(max_peers=125, max_inbound_per_netgroup=0)
    socks = []
    try:
        for _ in range(200):
            # Liveness guards only (generous: a loaded machine accepts slowly and a full
            # backlog makes the kernel retry the SYN after 1, 3, 7 ... s).
            s = socket.create_connection(("127.0.0.1", cm.listen_port), timeout=60)
            socks.append(s)
        assert wait_until(lambda: transport_metric(cm, "peers_evicted_total") == 83, timeout=60)
        assert cm.peer_manager.get_connection_count() == 117
        kept = {p.port for p in cm.peer_manager.get_all_peers()}
        assert len(kept) == 117
        for s in socks:
            if s.getsockname()[1] in kept:
                continue
            s.settimeout(60)         # a liveness guard: our version may precede the EOF
            try:
                while s.recv(4096):
                    pass
            except ConnectionError:
                pass
    finally:
        for s in socks:
            s.close()
    assert wait_until(lambda: cm.peer_manager.get_connection_count() == 0, timeout=60)


def test_keepalive_ping_and_inactivity_timeout(nodes):
    # Pings every 0.2 s, 2 s of silence allowed: the lively peer has 1.8 s to answer
    # each ping, so a stalled test thread does not get it cut.
    cm = nodes(ping_interval=0.2, inactivity_timeout=2.0)
    with RawPeer(cm.listen_port, MAGIC) as lively, RawPeer(cm.listen_port, MAGIC) as silent:
        lively.handshake()
        silent.handshake()
        assert wait_until(lambda: len(_ids(cm)) == 2)
        lively_port = lively.sock.getsockname()[1]
        silent_port = silent.sock.getsockname()[1]
        deadline = time.monotonic() + 20  # liveness guard
        pings = 0
        # Answer every ping until the silent peer (handshaken together with the lively
        # one, then mute) is cut for inactivity.
        while any(p.port == silent_port for p in cm.peer_manager.get_all_peers()):
            assert time.monotonic() < deadline, "the silent peer was never cut"
            ping = lively.wait_for("ping", 5.0)
            lively.send(MsgPong(ping.nonce))
            pings += 1
        assert pings >= 1
        assert silent.is_closed(5)
        peers = cm.peer_manager.handshake_complete_peers()
        assert [p.port for p in peers] == [lively_port]
        assert peers[0].ping_time is not None
        assert transport_metric(cm, "peer_disconnections_total", reason="timeout") == 1


def test_handshake_timeout(nodes):
    cm = nodes(handshake_timeout=0.4)
    t0 = time.monotonic()  # before the connection exists, so before its handshake clock starts
    with RawPeer(cm.listen_port, MAGIC) as mute:
        assert mute.read_message().command == "version"
        assert mute.is_closed(10)  # liveness guard; the default timeout would be 60 s
        assert time.monotonic() - t0 >= 0.4  # not closed before the timeout
    assert cm.connected_count() == 0


def test_stop_joins_quickly_with_peers(nodes, tmp_path):
    a, b = nodes(), nodes()
    for _ in range(3):
        b.connect("127.0.0.1", a.listen_port)
    raws = [RawPeer(a.listen_port, MAGIC) for _ in range(5)]
    assert wait_until(lambda: a.peer_manager.get_connection_count() == 8)
    # stop() joins both threads (with timeouts): when it returns they are gone.  How
    # long it takes is a benchmark figure, not a verdict on a loaded machine.
    nodes.stop(a)
    assert not a._net_thread.is_alive() and not nodes.processor(a).thread.is_alive()
    assert all(r.is_closed(10) for r in raws)
    assert wait_until(lambda: b.connected_count() == 0)
    for r in raws:
        r.close()


def test_disconnect_api_closes_socket(nodes):
    cm = nodes()
    reasons = []
    nodes.processor(cm).add_disconnect_listener(lambda p, r: reasons.append(r))
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.handshake()
        assert wait_until(lambda: _ids(cm))
        cm.disconnect(_ids(cm)[0], "test says so")
        assert raw.is_closed(10)
    assert wait_until(lambda: reasons == ["test says so"])
    assert transport_metric(cm, "peer_disconnections_total", reason="requested") == 1


def test_connect_timeout(nodes):
    """A dial that never completes (the target's accept queue is full) is dropped."""
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(0)
    port = target.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later SYNs are dropped
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.1)
        cm = nodes(connect_timeout=0.5)
        reasons = []
        nodes.processor(cm).add_disconnect_listener(lambda p, r: reasons.append((r, time.monotonic())))
        t0 = time.monotonic()  # before the dial starts, so before its connect clock
        pid = cm.connect("127.0.0.1", port)
        assert pid is not None
        assert wait_until(lambda: reasons, timeout=10)  # liveness guard
        reason, dropped_at = reasons[0]
        assert reason.startswith("connect timeout")
        assert dropped_at - t0 >= 0.5  # dropped by the timer, not before it
    finally:
        for f in fillers:
            f.close()
        target.close()


def test_bind_failure_raises_and_port_is_reported(nodes, tmp_path):
    a = nodes()
    with pytest.raises(OSError):
        NodeFactory(tmp_path / "clash")(listen_port=a.listen_port)


def test_per_message_log_with_dil_p2p_log(tmp_path, monkeypatch):
    from loguru import logger
    monkeypatch.setenv("DIL_P2P_LOG", "1")
    lines = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    factory = NodeFactory(tmp_path)
    try:
        cm = factory()
        with RawPeer(cm.listen_port, MAGIC) as raw:
            raw.handshake()
            raw.send(MsgPing(5))
            raw.wait_for("pong")
        assert wait_until(lambda: any("recv ping (8 bytes) peer=1" in x for x in lines))
        assert any("send pong (8 bytes) peer=1" in x for x in lines)
        assert any("send version" in x for x in lines)
    finally:
        factory.stop_all()
        logger.remove(sink)


def test_resolve_ipv4_only():
    from dilithion.net.dns import resolve
    assert resolve("127.0.0.1") == ["127.0.0.1"]
    assert resolve("localhost") == ["127.0.0.1"]
    assert resolve("") == []
    assert resolve("::1") == []  # IPv6 is not dialled (net 4.8)


def test_internal_error_costs_one_connection_not_the_thread(nodes):
    """A bug while serving one peer (simulated: its frame reader raises) closes
    only that peer; the network thread and every other peer carry on."""
    cm = nodes()
    with RawPeer(cm.listen_port, MAGIC) as good, RawPeer(cm.listen_port, MAGIC) as broken:
        good.handshake()
        broken.handshake()
        assert wait_until(lambda: len(_ids(cm)) == 2)
        port = broken.sock.getsockname()[1]
        broken_id = next(p.id for p in cm.peer_manager.get_all_peers() if p.port == port)

        def boom():
            raise RuntimeError("simulated bug")

        cm._conns[broken_id].reader.next_message = boom
        broken.send(MsgPing(1))
        assert broken.is_closed(3)
        assert transport_metric(cm, "peer_disconnections_total", reason="error") == 1
        good.send(MsgPing(2))
        assert good.wait_for("pong").nonce == 2
        assert cm._net_thread.is_alive()


def test_a_dead_network_thread_stops_the_node(nodes):
    """If the network thread dies the node can neither hear nor speak: it must stop (exit 1)."""
    cm = nodes()

    def broken_maintenance(now):
        raise RuntimeError("injected fault in the network thread")

    cm._maintenance = broken_maintenance
    ctx = nodes.ctx(cm)
    assert wait_until(ctx.shutdown_requested.is_set, 5)
    assert "P2P network thread failed" in ctx.fatal_reason
    assert "injected fault" in ctx.fatal_reason
