"""The harness's one wire peer (``dilithion.testing.wire_peer``) against a real node.

Both ways of reading (blocking, reader thread with callbacks), the own source
address as the node sees it, a hand-made malformed frame and the node's reaction
to it, the ping barrier, the diff's transcript and the lab's swarm.  Every peer
speaks to an ``InProcessNode`` over real loopback sockets.
"""
from __future__ import annotations

import struct

import pytest

from dilithion.net.protocol import InvType, MsgPing
from dilithion.testing.swarm import PeerSwarm
from dilithion.testing.wire_peer import NoReply, WirePeer
from framework import REGTEST_MAGIC, RawPeer, TestPeer, frame, frame_raw, regtest_chain, wait_until

ATTACKER = "127.0.0.10"


@pytest.fixture
def node(framework_nodes):
    return framework_nodes.inprocess_node("harness", coins=False, start=True)


def _peer_from(node, host: str) -> dict:
    [info] = [p for p in node.peers() if p["addr"].startswith(host + ":")]
    return info


def test_blocking_peer_handshakes_from_its_own_address_and_reads_on_demand(node):
    with WirePeer(REGTEST_MAGIC, bind_host="127.0.0.12", user_agent=b"/harness:1/") as peer:
        peer.connect(node.p2p_port)
        theirs = peer.handshake(start_height=0)
        assert theirs.start_height == node.height() and peer.handshake_complete
        wait_until(lambda: _peer_from(node, "127.0.0.12")["handshake"])
        assert _peer_from(node, "127.0.0.12")["subver"] == "/harness:1/"
        # Nothing is read until asked: a ping barrier reads up to our pong.
        pongs = peer.message_count["pong"]
        peer.sync_with_ping()
        assert peer.message_count["pong"] == pongs + 1
        # wait_for in blocking mode means the next one: a second ping, a second pong.
        peer.send(MsgPing(77))
        assert peer.wait_for("pong").nonce == 77
        with pytest.raises(NoReply):                 # silence is a NoReply (a TimeoutError)
            peer.wait_for("block", timeout=0.3)


class BlockWatcher(TestPeer):
    """Reader-thread mode: remembers every block hash announced to it."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.announced: list = []

    def on_inv(self, msg) -> None:
        self.announced += [i.hash for i in msg.inv if i.type == InvType.MSG_BLOCK_INV]


def test_reader_thread_counts_and_dispatches_to_callbacks(node):
    chain = regtest_chain(2)
    with BlockWatcher(bind_host="127.0.0.13") as peer:
        peer.connect(node.p2p_port)
        peer.handshake()
        assert peer.message_count["version"] == 1 and peer.message_count["verack"] == 1
        peer.sync_with_ping()
        node.load(chain[1:3])
        peer.wait_until(lambda: chain[2][1] in peer.announced)
        assert peer.last_message["inv"] is not None and not peer.errors
        # The reader has been counting all along: wait_for("version") is already satisfied.
        assert peer.wait_for("version", timeout=0.1).start_height == 0


def test_malformed_raw_frame_gets_the_nodes_reaction_honest_peer_unaffected(node):
    """A bad checksum from its own address: the node discourages that host and
    drops it; the honest peer on 127.0.0.1 is still served."""
    with TestPeer() as honest, RawPeer(node.p2p_port, bind_host=ATTACKER) as attacker:
        honest.connect(node.p2p_port)
        honest.handshake()
        attacker.handshake()
        bad = bytearray(frame(REGTEST_MAGIC, MsgPing(1)))
        bad[20] ^= 0xFF                                 # the checksum
        attacker.send_raw(bytes(bad) * 50)
        assert attacker.is_closed(10)
        pm = node.connman.peer_manager
        assert pm.is_discouraged(ATTACKER) and not pm.is_discouraged("127.0.0.1")
        honest.sync_with_ping()
        assert honest.is_connected


def test_barrier_returns_what_the_node_sent_and_tells_a_ban_from_a_disconnect(node):
    """The diff's use: the transcript of a step, without our pings and pongs;
    ``accepted_again`` tells a plain disconnect (wrong magic) from a ban."""
    peer = WirePeer(REGTEST_MAGIC, bind_host="127.0.0.14", keep_transcript=True)
    peer.connect(node.p2p_port)
    peer.handshake()
    commands = [c for c, _ in peer.barrier(settle=0.05)]
    assert commands[:2] == ["version", "verack"] or commands[:2] == ["verack", "version"]
    assert "pong" not in commands and "ping" not in commands
    peer.send_frame("ping", struct.pack("<Q", 0xABC))        # a pong that is not ours: kept
    assert peer.barrier(settle=0.05) == [("pong", struct.pack("<Q", 0xABC))]

    peer.send_frame("ping", struct.pack("<Q", 1), magic=0xDAB5BFFA)   # testnet magic
    assert peer.barrier(settle=0.05) == [] and peer.closed
    assert peer.accepted_again()                       # wrong magic: no score, no ban
    node.connman.peer_manager.banman.ban("127.0.0.14", 3600)
    assert not peer.accepted_again()
    peer.close()


def test_swarm_of_harness_peers_handshakes_and_counts_invs(node):
    chain = regtest_chain(1)
    swarm = PeerSwarm(REGTEST_MAGIC, [("127.0.0.1", node.p2p_port)], count=5).start()
    try:
        wait_until(lambda: swarm.handshaken == 5)
        node.load(chain[1:2])
        wait_until(lambda: swarm.invs_received >= 5)
        assert swarm.connected() == 5
    finally:
        swarm.stop()
    wait_until(lambda: node.peer_count() == 0)
    assert frame_raw(REGTEST_MAGIC, "ping", bytes(8)) == frame(REGTEST_MAGIC, MsgPing(0))
