"""Every size a peer chooses is capped (issue 21, "Peer-supplied strings and lists").

Attackers connect from their own loopback addresses (127.0.0.10, ...), the
honest peer from 127.0.0.1; each test asserts what the node holds afterwards
and what the honest side experiences.  Counts and events, never wall-clock
speed; the timeouts are liveness guards.
"""
from __future__ import annotations

import time
import tracemalloc

import pytest
from loguru import logger

from dilithion.consensus.params import MAX_TRANSACTION_SIZE
from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import (MAX_ADDR_SIZE, MAX_SUBVERSION_LENGTH, Address, Inv, InvType,
                                    MsgAddr, MsgBlock, MsgInv, MsgPing, MsgVersion,
                                    MsgTx, decode_payload)
from dilithion.net import block_download
from dilithion.net.serialize import SerializationError
from dilithion.net.tx_relay import TxRelayManager
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

from framework import InProcessNode, RawPeer, TestPeer, frame_raw, regtest_chain, wait_until

MAGIC = ChainParams.regtest().magic
MiB = 1024 * 1024


def attacker_host(i: int) -> str:
    return f"127.0.0.{10 + i}"


def version_with_agent(agent: bytes) -> MsgVersion:
    return MsgVersion(timestamp=int(time.time()), nonce=7, user_agent=agent)


def held_agents(cm) -> list[bytes]:
    return [p.user_agent for p in cm.peer_manager.get_all_peers()]


# ------------------------------------------------------------------ user agent
def test_user_agent_limit_is_cores():
    ok = decode_payload("version", version_with_agent(b"a" * MAX_SUBVERSION_LENGTH).serialize())
    assert len(ok.user_agent) == MAX_SUBVERSION_LENGTH == 256
    with pytest.raises(SerializationError, match="user agent"):
        decode_payload("version", version_with_agent(b"a" * 257).serialize())


def test_huge_user_agent_peer_is_disconnected_and_nothing_of_it_is_held(nodes):
    """A 1 MiB user agent: no verack, the connection closed at once, scored and
    logged once, the agent nowhere in the peer table or ``getpeerinfo``; an honest
    peer still handshakes."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    cm = nodes()
    huge = b"\xee" * MiB
    attacker = RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(0))
    try:
        attacker.send(version_with_agent(huge))
        commands = []
        while (msg := attacker.read_message(10.0)) is not None:
            commands.append(msg.command)
        assert "verack" not in commands
        assert wait_until(lambda: all(p.host != attacker_host(0)
                                      for p in cm.peer_manager.get_all_peers()))
    finally:
        attacker.close()
    with TestPeer().connect(cm.listen_port) as honest:
        honest.handshake()
        honest.sync_with_ping()
        info = cm.peer_info()
        assert [p["addr"].split(":")[0] for p in info] == ["127.0.0.1"]
        assert all(len(p["subver"]) <= MAX_SUBVERSION_LENGTH for p in info)
    assert all(len(agent) <= MAX_SUBVERSION_LENGTH for agent in held_agents(cm))
    logger.remove(sink)
    about = [line for line in lines if "user agent length 1048576" in line]
    assert len(about) == 2 and "Misbehaving peer" in about[0] and "(+20, score 20)" in about[0]
    assert "disconnected: undecodable version" in about[1]
    assert all(len(line) < 400 for line in lines)        # the agent itself is never logged


def test_twenty_huge_agents_hold_nothing(nodes):
    """Twenty attackers (from twenty addresses) each offer a 1 MiB agent: the node
    holds none of it, every attacker is closed, the honest peer handshakes."""
    cm = nodes()
    attackers = [RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(i)) for i in range(20)]
    try:
        for raw in attackers:
            raw.send(version_with_agent(b"\xee" * MiB))
        assert all(raw.is_closed(10.0) for raw in attackers)
        with TestPeer().connect(cm.listen_port) as honest:
            honest.handshake()
            honest.sync_with_ping()
            assert sum(len(a) for a in held_agents(cm)) <= MAX_SUBVERSION_LENGTH
    finally:
        for raw in attackers:
            raw.close()


# ------------------------------------------------------------------ addr count
def test_addr_limit_is_cores():
    entry = Address.from_ipv4("10.0.0.1", 8444, time=1)
    assert len(decode_payload("addr", MsgAddr([entry] * MAX_ADDR_SIZE).serialize()).addrs) == 1000
    with pytest.raises(SerializationError, match="addr count 1001"):
        decode_payload("addr", MsgAddr([entry] * (MAX_ADDR_SIZE + 1)).serialize())


def test_oversized_addr_is_misbehaviour(nodes):
    """An ``addr`` of 1,001 entries is undecodable (score 20): five of them
    discourage the sender, whose connection closes; the honest peer stays."""
    cm = nodes()
    entry = Address.from_ipv4("10.0.0.1", 8444, time=1)
    big = MsgAddr([entry] * (MAX_ADDR_SIZE + 1))
    with TestPeer().connect(cm.listen_port) as honest, \
            RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(1)) as attacker:
        honest.handshake()
        attacker.handshake()
        attacker.send(big)
        attacker.send(MsgPing(5))
        attacker.wait_for("pong")
        scores = {p.host: p.misbehavior_score for p in cm.peer_manager.get_all_peers()}
        assert scores[attacker_host(1)] == 20
        for _ in range(4):
            attacker.send(big)
        assert attacker.is_closed(10.0)
        honest.sync_with_ping()
        assert honest.is_connected


# ------------------------------------------------------------------ tx size
def big_tx_payload(count: int = 100_000) -> bytes:
    """A well-formed ``tx`` of ``count`` minimal inputs and outputs (5 MB for 100,000)."""
    tx = Transaction(1, [TxIn(OutPoint(bytes([i % 256]) * 32, i)) for i in range(count)],
                     [TxOut(1, b"")] * count)
    return MsgTx(tx).serialize()


def test_tx_payload_limit_is_the_consensus_size():
    payload = big_tx_payload()
    assert len(payload) > MAX_TRANSACTION_SIZE == 1_000_000
    started = time.process_time()
    with pytest.raises(SerializationError, match="tx payload of 5000018 bytes exceeds limit"):
        decode_payload("tx", payload)
    assert time.process_time() - started < 0.05       # refused before decoding (0.8 s)


def test_oversized_tx_is_scored_without_decoding(nodes):
    cm = nodes()
    with TestPeer().connect(cm.listen_port) as honest, \
            RawPeer(cm.listen_port, MAGIC, bind_host=attacker_host(2)) as attacker:
        honest.handshake()
        attacker.handshake()
        # 2 MB: over the tx limit, under the largest valid message (a 4 MiB block), so
        # the frame is read and the tx refused before decoding, not the frame at its header.
        attacker.send_raw(frame_raw(MAGIC, "tx", big_tx_payload(40_000)))
        attacker.send(MsgPing(5))
        attacker.wait_for("pong", 30.0)
        scores = {p.host: p.misbehavior_score for p in cm.peer_manager.get_all_peers()}
        assert scores[attacker_host(2)] == 20
        honest.sync_with_ping()


# ------------------------------------------------------------------ trailing bytes
def test_trailing_bytes_after_ping_cost_no_copy():
    """A ping (and a version) with 32 MiB of trailing garbage decodes, as the C++
    ignores trailing bytes, without copying the garbage: the decoder's peak
    allocation stays far below the payload (it was a full 32 MiB copy)."""
    payload = (9).to_bytes(8, "little") + b"\x00" * (32 * MiB - 8)
    version = version_with_agent(b"x").serialize() + payload
    tracemalloc.start()
    try:
        assert decode_payload("ping", payload) == MsgPing(9)
        assert decode_payload("version", version).nonce == 7
        assert decode_payload("verack", payload) is not None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


# ------------------------------------------------------------------ per-peer inventory sets
def handshaken(node, host: str) -> RawPeer:
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    raw = RawPeer(node.p2p_port, node.params.magic, bind_host=host)
    raw.handshake(MsgVersion(timestamp=int(time.time()), nonce=3, user_agent=b"/s:1/",
                             start_height=node.height()))
    assert wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return raw


def test_tx_announcements_of_many_hosts_stay_within_the_node_wide_bound(tmp_path, monkeypatch):
    """Twenty hosts announce 5,000 new txids each (100,000 in all): the announced
    sets of all peers together stay within ``MAX_ANNOUNCED_TOTAL`` (scaled down
    here to 10,000; each host alone could hold 50,000), and the
    honest peer's announcements made afterwards are all remembered."""
    monkeypatch.setattr(TxRelayManager, "MAX_ANNOUNCED_TOTAL", 10_000)
    node = InProcessNode(tmp_path, "sizes", rpc=False).start()
    attackers: list[RawPeer] = []
    try:
        manager = node.ctx.tx_relay
        for i in range(20):
            attackers.append(handshaken(node, attacker_host(i)))
        honest = handshaken(node, "127.0.0.1")
        honest_id = max(p.id for p in node.connman.peer_manager.get_all_peers())
        for i, raw in enumerate(attackers):
            raw.send(MsgInv([Inv(InvType.MSG_TX_INV, bytes([i]) + n.to_bytes(4, "little")
                                 + bytes(27)) for n in range(5000)]))
        for raw in attackers:
            raw.send(MsgPing(1))
            raw.wait_for("pong", 30.0)
        honest_txids = [b"\xaa" + n.to_bytes(4, "little") + bytes(27) for n in range(50)]
        honest.send(MsgInv([Inv(InvType.MSG_TX_INV, t) for t in honest_txids]))
        honest.send(MsgPing(2))
        honest.wait_for("pong", 30.0)
        total = manager.get_stats()[0]
        assert total <= 10_000
        assert not any(manager.should_announce(honest_id, t) for t in honest_txids)
        honest.close()
    finally:
        for raw in attackers:
            raw.close()
        node.close()


def test_an_announcement_flood_does_not_push_out_an_honest_batch(tmp_path):
    """The honest peer announces 18 blocks (16 are requested at once, 2 wait); then
    twenty hosts announce 2,000 unknown blocks each, more than the node-wide wanted
    table holds (``MAX_WANTED``).  The flooders rotate their own lists: the honest
    requests stay in flight and its 2 waiting blocks stay wanted from it (before,
    the oldest entries, the honest ones, were forgotten, in flight or not)."""
    chain = regtest_chain(18)
    node = InProcessNode(tmp_path, "wanted", rpc=False, coins=False).start()
    download = node.ctx.block_relay.download
    attackers: list[RawPeer] = []
    try:
        honest = handshaken(node, "127.0.0.1")
        honest_id = max(p.id for p in node.connman.peer_manager.get_all_peers())
        batch = [bytes(h) for _, h in chain[1:]]
        honest.send(MsgInv([Inv(InvType.MSG_BLOCK_INV, h) for h in batch]))
        assert [bytes(i.hash) for i in honest.wait_for("getdata", 10.0).inv] == batch[:16]
        for i in range(20):
            attackers.append(handshaken(node, attacker_host(i)))
        for rnd in range(2):
            for i, raw in enumerate(attackers):
                raw.send(MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes([0xEE, rnd, i])
                                     + n.to_bytes(4, "little") + bytes(25))
                                 for n in range(1000)]))
        for raw in attackers:
            raw.send(MsgPing(1))
            raw.wait_for("pong", 30.0)
        assert download.table_sizes()["wanted"] <= block_download.MAX_WANTED
        assert download.in_flight_count(honest_id) == 16
        honest.send(MsgBlock(chain[1][0]))      # a slot frees: the next honest block is asked
        assert [bytes(i.hash) for i in honest.wait_for("getdata", 10.0).inv] == batch[16:17]
        for block, _ in chain[2:]:
            honest.send(MsgBlock(block))
        assert wait_until(lambda: node.height() == 18)
        honest.close()
    finally:
        for raw in attackers:
            raw.close()
        node.close()
