"""The message processor: typed handler registration and fair, round-robin processing."""
from __future__ import annotations

import threading

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import Inv, Message, MsgInv

from framework import RawPeer, frame, wait_until

MAGIC = ChainParams.regtest().magic


def test_registering_a_class_that_is_not_a_wire_message_fails_at_start_up(nodes):
    processor = nodes.processor(nodes())

    class MsgHeaders(Message):          # not a message this protocol has
        command = "headers"

    with pytest.raises(TypeError, match="not a wire message"):
        processor.add_handler(MsgHeaders, lambda peer, msg: None)
    with pytest.raises(TypeError):
        processor.add_handler("inv", lambda peer, msg: None)


def _peer_id(cm, raw: RawPeer) -> int:
    port = raw.sock.getsockname()[1]
    return next(p.id for p in cm.peer_manager.get_all_peers() if p.port == port)


def test_one_peers_backlog_does_not_delay_another_peer(nodes):
    """Peer A has 200 messages waiting when peer B sends one: B's is processed
    within the next few, not after all of A's (one global FIFO would make it 201st)."""
    cm = nodes()
    processor = nodes.processor(cm)
    gate = threading.Event()
    order: list[int] = []

    def handler(peer, msg):
        gate.wait(10)
        order.append(peer.id)

    processor.add_handler(MsgInv, handler)
    with RawPeer(cm.listen_port, MAGIC) as a, RawPeer(cm.listen_port, MAGIC) as b:
        a.handshake()
        b.handshake()
        # Both veracks processed: B's backlog below holds its inv, not its verack.
        assert wait_until(lambda: len(cm.peer_manager.handshake_complete_peers()) == 2)
        a_id, b_id = _peer_id(cm, a), _peer_id(cm, b)
        conn_a, conn_b = cm._conns[a_id], cm._conns[b_id]
        one = frame(MAGIC, MsgInv([Inv(2, bytes(32))]))
        a.send_raw(one * 200)
        # the handler holds A's first message; the other 199 wait in A's backlog
        assert wait_until(lambda: conn_a.backlog.counts()[0] == 199)
        b.send_raw(one)
        assert wait_until(lambda: conn_b.backlog.counts()[0] == 1)
        gate.set()
        assert wait_until(lambda: len(order) == 201, timeout=10)
    assert order.index(b_id) <= 2, f"B's message was processed {order.index(b_id) + 1}th"
    assert order.count(a_id) == 200

