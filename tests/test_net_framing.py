"""Framing: messages survive any chunking, C++ handshake bytes are accepted,
sends are finished rather than abandoned (net D-01, D-02, D-06, D-13)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import (MESSAGE_TYPES, Inv, MsgInv, MsgPing, MsgPong, MsgVerack, MsgVersion,
                                    decode_payload)
from dilithion.net.serialize import NetMessage
from dilithion.net.socket import ByteBudget, FrameError, FrameReader, SendQueue, Socket, TokenBucket

from framework import RawPeer, frame, wait_until

MAGIC = ChainParams.regtest().magic


def _messages(n: int = 40) -> list:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(MsgPing(i))
        elif i % 3 == 1:
            out.append(MsgInv([Inv(2, bytes([i]) * 32) for _ in range(i % 7)]))
        else:
            out.append(MsgVerack())
    return out


MESSAGES = _messages()
STREAM = b"".join(frame(MAGIC, m) for m in MESSAGES)


def _read_all(chunks) -> list:
    reader = FrameReader(MAGIC)
    got = []
    for chunk in chunks:
        reader.feed(chunk)
        while (msg := reader.next_message()) is not None:
            got.append(decode_payload(msg.command, msg.payload))
    assert reader.pending_bytes() == 0
    return got


def test_reader_one_byte_at_a_time():
    assert _read_all(STREAM[i:i + 1] for i in range(len(STREAM))) == MESSAGES


def test_reader_all_coalesced():
    assert _read_all([STREAM]) == MESSAGES


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=60))
def test_reader_random_chunks(cuts):
    points = sorted(set(c for c in cuts if c < len(STREAM)))
    bounds = [0, *points, len(STREAM)]
    assert _read_all(STREAM[a:b] for a, b in zip(bounds, bounds[1:])) == MESSAGES


def test_reader_judges_header_before_buffering_payload():
    reader = FrameReader(MAGIC, max_payload=1000)
    big = MsgPing(1).to_net_message(MAGIC).serialize()
    header = bytearray(big[:24])
    header[16:20] = (1001).to_bytes(4, "little")
    reader.feed(bytes(header))
    with pytest.raises(FrameError) as e:
        reader.next_message()
    assert e.value.fatal and e.value.kind == "oversized"
    assert reader.capacity() == 1024


def test_reader_skips_bad_checksum_and_keeps_framing():
    bad = bytearray(frame(MAGIC, MsgPing(5)))
    bad[20] ^= 0xFF
    reader = FrameReader(MAGIC)
    reader.feed(bytes(bad) + frame(MAGIC, MsgPing(6)))
    with pytest.raises(FrameError) as e:
        reader.next_message()
    assert not e.value.fatal and e.value.kind == "bad checksum" and e.value.score == 10
    msg = reader.next_message()
    assert decode_payload(msg.command, msg.payload) == MsgPing(6)


def test_token_bucket_limits_rate():
    # Explicit times instead of time.sleep: the refill is exact, whatever the load.
    bucket = TokenBucket(rate=8, burst=5, now=100.0)
    assert sum(bucket.try_take(100.0) for _ in range(20)) == 5        # the burst
    assert sum(bucket.try_take(100.25) for _ in range(20)) == 2       # 0.25 s x 8/s
    assert not bucket.try_take(100.3)                                 # 0.4 of a token
    assert bucket.next_token_at(100.3) == pytest.approx(100.375)
    assert bucket.try_take(100.5) and bucket.try_take(100.5)          # 0.4 + 1.6 tokens
    assert not bucket.try_take(100.5)
    assert sum(bucket.try_take(110.0) for _ in range(20)) == 5        # refill capped at burst


def test_send_queue_finishes_partial_messages():
    """A message larger than the kernel buffers is written in pieces, in order, none lost."""
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock = Socket(a)
    q = SendQueue(cap_bytes=1 << 20)
    payloads = [bytes([i]) * 300_000 for i in range(3)]
    for p in payloads:
        assert q.push(p)
    assert not q.push(b"x" * 200_000)  # over the cap: backpressure
    first_written, _ = q.write_to(sock)
    assert 0 < first_written < 900_000  # the kernel took only part
    received = bytearray()

    def reader():
        while len(received) < 900_000:
            received.extend(b.recv(65536))

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 10
    while q and time.monotonic() < deadline:
        q.write_to(sock)
        time.sleep(0.001)
    t.join(5)
    assert bytes(received) == b"".join(payloads)
    assert q.queued_bytes() == 0
    a.close()
    b.close()


def test_send_queue_accepts_one_oversized_message_when_empty():
    q = SendQueue(cap_bytes=10)
    assert q.push(b"y" * 100)
    assert not q.push(b"z")


# -- real sockets -------------------------------------------------------------

def _collecting(nodes, cm, command="inv"):
    got = []
    nodes.processor(cm).add_handler(MESSAGE_TYPES[command], lambda peer, msg: got.append(msg))
    return got


@pytest.mark.parametrize("chunking", ["one-byte", "random", "coalesced"])
def test_node_frames_stream_however_it_arrives(nodes, chunking):
    import random
    cm = nodes()
    got = _collecting(nodes, cm)
    invs = [m for m in MESSAGES if isinstance(m, MsgInv)]
    stream = b"".join(frame(MAGIC, m) for m in invs)
    with RawPeer(cm.listen_port, MAGIC) as raw:
        raw.handshake()
        if chunking == "one-byte":
            for i in range(len(stream)):
                raw.send_raw(stream[i:i + 1])
        elif chunking == "random":
            rng = random.Random(7)
            i = 0
            while i < len(stream):
                n = rng.randint(1, 97)
                raw.send_raw(stream[i:i + n])
                i += n
        else:
            raw.send_raw(stream)
        assert wait_until(lambda: len(got) == len(invs))
        assert got == invs
        assert cm.peer_info()[0]["banscore"] == 0


def test_cpp_handshake_bytes_accepted(nodes, cpp_handshake):
    """The C++ node's own version/verack/pong bytes complete a handshake with our node."""
    cm = nodes(ChainParams.testnet())
    assert int(cpp_handshake["magic"], 16) == cm.magic
    raw_by_cmd = {m["command"]: bytes.fromhex(m["raw_hex"]) for m in cpp_handshake["messages"]}
    with RawPeer(cm.listen_port, cm.magic) as raw:
        first = raw.read_message()
        assert first.command == "version"  # ours comes first, before any verack (net 7.1 item 3)
        raw.send_raw(raw_by_cmd["version"])
        assert raw.wait_for("verack") == MsgVerack()
        raw.send_raw(raw_by_cmd["verack"])
        raw.send_raw(raw_by_cmd["pong"])  # an unsolicited pong is harmless
        assert wait_until(lambda: cm.peer_manager.handshake_complete_peers())
        peer = cm.peer_manager.handshake_complete_peers()[0]
        assert peer.is_cpp() and peer.version == 70001 and peer.start_height == 0
        assert peer.misbehavior_score == 0
        raw.send(MsgPing(0x1122334455667788))
        assert raw.wait_for("pong") == MsgPong(0x1122334455667788)


def test_cpp_verack_before_version_accepted(nodes, cpp_handshake):
    """The C++ accept race (net D-13): verack arrives before the C++ version."""
    cm = nodes(ChainParams.testnet())
    raw_by_cmd = {m["command"]: bytes.fromhex(m["raw_hex"]) for m in cpp_handshake["messages"]}
    with RawPeer(cm.listen_port, cm.magic) as raw:
        raw.send_raw(raw_by_cmd["verack"] + raw_by_cmd["version"])
        assert raw.wait_for("version").user_agent == b"/DilithionPy:0.1.0/"
        raw.wait_for("verack")
        assert wait_until(lambda: cm.peer_manager.handshake_complete_peers())


def test_our_version_parses_as_cpp_layout(nodes):
    """What we send is the C++ 3.1 layout exactly (no trailing bytes), with our nonce."""
    cm = nodes()
    with RawPeer(cm.listen_port, MAGIC) as raw:
        msg = raw.read_message()
        assert isinstance(msg, NetMessage) and msg.command == "version"
        version = MsgVersion.deserialize(msg.payload)
        assert len(msg.payload) == 4 + 8 + 8 + 8 + 1 + len(version.user_agent) + 4 + 1
        assert version.nonce != 0 and version.relay and version.start_height == 0


def test_a_cleared_queue_refuses_pushes_and_charges_nothing():
    """A push racing a close (another thread checked the connection just before) must not
    leave bytes charged to the node-wide send budget for ever."""
    budget = ByteBudget(1 << 20)
    q = SendQueue(cap_bytes=1 << 20, budget=budget)
    assert q.push(b"x" * 100)
    q.clear()
    assert budget.used() == 0
    assert not q.push(b"y" * 100)
    assert budget.used() == 0 and q.queued_bytes() == 0
