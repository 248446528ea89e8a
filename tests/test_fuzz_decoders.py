"""Property tests for every decoder: round trips, hostile bytes and bounded memory.

The invariants: ``decode(encode(x)) == x`` for every wire type; arbitrary or
mutated bytes make a decoder either succeed or raise ``SerializationError``
(never ``IndexError``, ``struct.error``, ``MemoryError``...); and a tiny message
that claims a huge count or length fails fast without allocating for the claim
(the C++ resizes first, ``net D-09``).  No RandomX hashing happens in here.
"""
from __future__ import annotations

import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dilithion.net.protocol import (MESSAGE_TYPES, Address, Inv, MsgAddr, MsgBlock, MsgGetaddr,
                                    MsgGetblocks,
                                    MsgGetdata, MsgInv, MsgPing, MsgPong, MsgTx, MsgVerack,
                                    MsgVersion, decode_payload)
from dilithion.net.serialize import (DataStream, MessageHeader, NetMessage, SerializationError,
                                     ser_compact_size)
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

MAGIC = 0xDAB5BFFA
FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
hash32 = st.binary(min_size=32, max_size=32)
script = st.binary(max_size=80)

invs = st.builds(Inv, u32, hash32)
addresses = st.builds(Address, u32, u64, st.binary(min_size=16, max_size=16), u16)
txins = st.builds(TxIn, st.builds(OutPoint, hash32, u32), script, u32)
txouts = st.builds(TxOut, u64, script)
transactions = st.builds(Transaction, i32, st.lists(txins, max_size=4), st.lists(txouts, max_size=4), u32)
headers = st.builds(BlockHeader, i32, hash32.map(Uint256), hash32.map(Uint256), u32, u32, u32)
blocks = st.builds(Block, headers, st.binary(max_size=400))
messages = st.one_of(
    st.builds(MsgVersion, i32, u64, i64, u64, st.binary(max_size=300), i32, st.booleans()),
    st.just(MsgVerack()), st.just(MsgGetaddr()),
    st.builds(MsgPing, u64), st.builds(MsgPong, u64),
    st.builds(MsgAddr, st.lists(addresses, max_size=8)),
    st.builds(MsgInv, st.lists(invs, max_size=8)),
    st.builds(MsgGetdata, st.lists(invs, max_size=8)),
    st.builds(MsgBlock, blocks),
    st.builds(MsgTx, transactions),
    st.builds(MsgGetblocks, st.lists(hash32.map(Uint256), max_size=8), hash32.map(Uint256), u32),
)

DECODERS = {
    **{f"Msg[{name}]": cls.deserialize for name, cls in MESSAGE_TYPES.items()},
    "Block": Block.deserialize,
    "BlockHeader": BlockHeader.deserialize,
    "Transaction": Transaction.from_bytes,
    "MessageHeader": MessageHeader.deserialize,
    "NetMessage": lambda data: NetMessage.deserialize(data, MAGIC),
}


def _only_serialization_errors(decode, data: bytes) -> None:
    try:
        decode(data)
    except SerializationError as exc:
        assert str(exc), "a SerializationError must say what went wrong"


# -- round trips -----------------------------------------------------------------------
@FAST
@given(u64)
def test_compact_size_round_trip(n):
    s = DataStream(ser_compact_size(n))
    assert s.read_compact_size() == n and s.eof()


@FAST
@given(st.sampled_from([0xFD, 0xFE, 0xFF]), u16)
def test_non_canonical_compact_size_is_accepted(prefix, n):
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[prefix]
    assert DataStream(bytes((prefix,)) + n.to_bytes(width, "little")).read_compact_size() == n


@FAST
@given(messages)
def test_every_message_round_trips(msg):
    payload = msg.serialize()
    assert type(msg).deserialize(payload) == msg
    assert decode_payload(msg.command, payload) == msg
    raw = msg.to_net_message(MAGIC).serialize()
    framed = NetMessage.deserialize(raw, MAGIC)
    assert framed.command == msg.command and framed.serialize() == raw


@FAST
@given(transactions)
def test_transaction_round_trip(tx):
    data = tx.serialize()
    again, consumed = Transaction.deserialize(data)
    assert again == tx and consumed == len(data) and again.txid == tx.txid


@FAST
@given(blocks)
def test_block_round_trip(block):
    assert Block.deserialize(block.serialize()) == block
    assert BlockHeader.deserialize(block.header.serialize()) == block.header


@FAST
@given(addresses, invs)
def test_address_and_inv_round_trip(addr, inv):
    s = DataStream()
    addr.serialize_to(s)
    inv.serialize_to(s)
    r = DataStream(s.get_data())
    assert Address.deserialize_from(r) == addr and Inv.deserialize_from(r) == inv and r.eof()


# -- hostile bytes ------------------------------------------------------------------------
@FAST
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=200))
def test_random_bytes_raise_only_serialization_errors(name, data):
    _only_serialization_errors(DECODERS[name], data)


@FAST
@given(st.binary(max_size=64), st.lists(st.sampled_from(
    ["read_uint8", "read_uint16", "read_uint32", "read_int32", "read_uint64", "read_int64",
     "read_compact_size", "read_var_bytes", "read_string", "read_uint256"]), max_size=12))
def test_random_read_sequences_raise_only_serialization_errors(data, ops):
    s = DataStream(data)
    try:
        for op in ops:
            getattr(s, op)()
        s.read_count(50_000, "count", 36)
    except SerializationError:
        pass


@st.composite
def mutated_messages(draw):
    msg = draw(messages)
    raw = bytearray(msg.to_net_message(MAGIC).serialize())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete" and raw:
            del raw[pos]
        elif kind == "set" and raw:
            raw[pos] = draw(st.sampled_from([0x00, 0xFD, 0xFE, 0xFF]))
    return msg.command, bytes(raw)


@FAST
@given(mutated_messages())
def test_mutated_messages_raise_only_serialization_errors(case):
    command, raw = case
    _only_serialization_errors(lambda d: NetMessage.deserialize(d, MAGIC), raw)
    # The payload decoder sees the mutated bytes too, even where the checksum would stop them.
    _only_serialization_errors(lambda d: decode_payload(command, d), raw[24:])
    _only_serialization_errors(Block.deserialize, raw[24:])
    _only_serialization_errors(Transaction.from_bytes, raw[24:])


# -- bounded memory and time for tiny hostile messages --------------------------------------
HUGE = b"\xff" + (2**60).to_bytes(8, "little")
HEADER80 = BlockHeader(bits=0x1F060000).serialize()
HOSTILE = {
    "inv claiming 2^60 items": (MsgInv.deserialize, HUGE),
    "getdata claiming 2^60 items": (MsgGetdata.deserialize, HUGE),
    "addr claiming 2^60 items": (MsgAddr.deserialize, HUGE),
    "inv at the limit with no items": (MsgInv.deserialize, ser_compact_size(50_000)),
    "block vtx of 2^60 bytes": (Block.deserialize, HEADER80 + HUGE),
    "block vtx of 4 MiB, 3 bytes present": (Block.deserialize, HEADER80 + ser_compact_size(4 << 20) + b"abc"),
    "tx with 2^60 inputs": (Transaction.from_bytes, b"\x01\x00\x00\x00" + HUGE),
    "tx with 100,000 inputs": (Transaction.from_bytes, b"\x01\x00\x00\x00" + ser_compact_size(100_000) + bytes(64)),
    "tx with 100,000 outputs": (Transaction.from_bytes, b"\x01\x00\x00\x00\x00" + ser_compact_size(100_000) + bytes(64)),
    "tx with a 10,000-byte scriptSig": (Transaction.from_bytes, b"\x01\x00\x00\x00\x01" + bytes(36)
                                        + ser_compact_size(10_000) + bytes(8)),
    "version with a 1 MiB user agent": (MsgVersion.deserialize, bytes(28) + ser_compact_size(1 << 20) + b"x"),
    "version with a 2^60 user agent": (MsgVersion.deserialize, bytes(28) + HUGE),
    "message header announcing 32 MiB": (lambda d: NetMessage.deserialize(d, MAGIC),
                                         MessageHeader(MAGIC, MessageHeader.encode_command("block"),
                                                       32 << 20, bytes(4)).serialize()),
}


#: Python lines a decoder may run on one tiny hostile input ("fails fast" as a count:
#: a loop over an announced 2^60 items would run past it; the decoders need hundreds).
MAX_LINES = 100_000


class _TooManyLines(BaseException):
    """Raised by the line counter to stop a runaway decoder (not an Exception, so no
    ``except Exception`` in a decoder can swallow it)."""


def count_lines(fn, *args) -> tuple[int, BaseException | None]:
    """Run ``fn(*args)`` on this thread, counting executed Python lines (stopping at
    ``MAX_LINES``); returns the count and the exception it raised, if any."""
    lines = 0

    def local(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
            if lines > MAX_LINES:
                raise _TooManyLines
        return local

    sys.settrace(lambda frame, event, arg: local)
    try:
        fn(*args)
    except _TooManyLines:
        return lines, None
    except Exception as exc:  # noqa: BLE001 - returned to the caller to check
        return lines, exc
    finally:
        sys.settrace(None)
    return lines, None


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_tiny_hostile_message_fails_fast_without_allocating(name):
    decode, data = HOSTILE[name]
    assert len(data) < 200
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        lines, error = count_lines(decode, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines <= MAX_LINES, f"{name}: still decoding after {MAX_LINES} lines"
    assert isinstance(error, SerializationError), f"{name}: {error!r}"
    assert peak < 1_000_000, f"{name}: peak allocation {peak} bytes"


@FEW
@given(st.sampled_from(sorted(DECODERS)), st.integers(0, 2**64 - 1), st.binary(max_size=40))
def test_claimed_lengths_never_exceed_the_data(name, claim, tail):
    """A CompactSize claim anywhere in a short buffer fails with SerializationError only."""
    data = ser_compact_size(claim) + tail
    for prefix in (b"", HEADER80, b"\x01\x00\x00\x00", bytes(28)):
        _only_serialization_errors(DECODERS[name], prefix + data)
