"""Targets for the wire decoders: CompactSize, transaction, block, network message.

Counterparts of the C++ ``fuzz_compactsize``, ``fuzz_transaction``,
``fuzz_block`` and ``fuzz_network_message``.  The C++ targets only check that
decoding does not crash; these also require canonical round trips and that
nothing but :class:`SerializationError` (a ``ValueError``) escapes a decoder.
Each target takes its subject as a parameter so a test can hand it a defective
one and see the named property fail.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from dilithion.consensus.tx_validation import TxValidationError, check_transaction_basic
from dilithion.consensus.validation import (BlockValidationError, check_block_body, committed_merkle_root,
                                            parse_block_transactions)
from dilithion.core.chainparams import TESTNET_MAGIC
from dilithion.crypto.sha3 import sha3_256d
from dilithion.net.protocol import decode_payload
from dilithion.net.serialize import (MESSAGE_HEADER_SIZE, DataStream, MessageHeader, NetMessage,
                                     SerializationError, calculate_checksum, ser_compact_size)
from dilithion.primitives.block import Block, BlockHeader
from dilithion.primitives.transaction import MAX_TX_INPUTS, MAX_TX_OUTPUTS, Transaction
from dilithion.tools.fuzz.checks import attempt, check_reencoding
from dilithion.tools.fuzz.provider import DataProvider, PropertyViolation, require

__all__ = ["CompactSizeSubject", "TransactionSubject", "BlockSubject", "FrameSubject",
           "fuzz_compactsize", "fuzz_transaction", "fuzz_block", "fuzz_network_message"]

_DECODE_ERRORS = (SerializationError,)


def _read_compact_size(data: bytes) -> tuple[int, int]:
    s = DataStream(data)
    return s.read_compact_size(), s.tell()


@dataclass(frozen=True)
class CompactSizeSubject:
    """``WriteCompactSize`` and ``ReadCompactSize`` (value, bytes consumed)."""

    encode: Callable[[int], bytes] = ser_compact_size
    decode: Callable[[bytes], tuple[int, int]] = _read_compact_size


def _compact_size_length(first: int) -> int:
    return {253: 3, 254: 5, 255: 9}.get(first, 1)


def _expected_encoded_size(value: int) -> int:
    return 1 if value < 253 else 3 if value <= 0xFFFF else 5 if value <= 0xFFFFFFFF else 9


def fuzz_compactsize(data: bytes, subject: CompactSizeSubject = CompactSizeSubject()) -> None:
    """Decode ``data`` as a CompactSize, and encode a value read from it."""
    decoded = attempt(lambda: subject.decode(data), _DECODE_ERRORS, "ReadCompactSize")
    if decoded is None:
        require(not data or len(data) < _compact_size_length(data[0]),
                "decode fails only on truncated input", f"{len(data)} bytes, prefix {data[:1].hex()}")
    else:
        value, consumed = decoded
        require(consumed == _compact_size_length(data[0]), "decode consumes exactly its prefix's size",
                f"consumed {consumed} after prefix 0x{data[0]:02x}")
        _check_value_round_trip(subject, value)
        check_reencoding(data[:consumed], subject.encode(value), "CompactSize")
    p = DataProvider(data)
    value = p.uint(8) >> (p.uint(1) % 64)
    _check_value_round_trip(subject, value)


def _check_value_round_trip(subject: CompactSizeSubject, value: int) -> None:
    encoded = subject.encode(value)
    require(len(encoded) == _expected_encoded_size(value), "encoded size follows the value's range",
            f"{value} encoded in {len(encoded)} bytes")
    try:
        back = subject.decode(encoded)
    except Exception as exc:  # noqa: BLE001 - any failure here breaks the round trip
        raise PropertyViolation("value round trip", f"decoding {encoded.hex()} (from {value}) raised "
                                f"{type(exc).__name__}: {exc}") from exc
    require(back == (value, len(encoded)), "value round trip", f"{value} -> {encoded.hex()} -> {back}")


def _decode_transaction(data: bytes) -> tuple[Transaction, int]:
    return Transaction.deserialize(data, allow_trailing=True)


@dataclass(frozen=True)
class TransactionSubject:
    """``CTransaction::Deserialize`` (with bytes consumed) and ``Serialize``."""

    decode: Callable[[bytes], tuple[Transaction, int]] = _decode_transaction
    encode: Callable[[Transaction], bytes] = Transaction.serialize


def fuzz_transaction(data: bytes, subject: TransactionSubject = TransactionSubject()) -> None:
    """Decode ``data`` as a transaction; round trip it and look at what the C++ target looks at."""
    decoded = attempt(lambda: subject.decode(data), _DECODE_ERRORS, "Transaction.deserialize")
    if decoded is None:
        return
    tx, consumed = decoded
    require(0 < consumed <= len(data), "decode consumes bytes that exist", f"{consumed} of {len(data)}")
    require(len(tx.vin) <= MAX_TX_INPUTS and len(tx.vout) <= MAX_TX_OUTPUTS,
            "input and output counts within limits", f"{len(tx.vin)} in, {len(tx.vout)} out")
    encoded = subject.encode(tx)
    check_reencoding(data[:consumed], encoded, "transaction")
    again = attempt(lambda: subject.decode(encoded), _DECODE_ERRORS, "decoding a re-encoded transaction")
    require(again == (tx, len(encoded)), "re-encoding decodes to the same transaction")
    require(tx.get_hash() == hashlib.sha3_256(encoded).digest(), "txid is SHA3-256 of the encoding")
    total = sum(out.value for out in tx.vout)
    value_out = attempt(tx.get_value_out, (OverflowError,), "get_value_out")
    require(value_out == (total if total <= 0xFFFFFFFFFFFFFFFF else None),
            "value out is the output sum, OverflowError past 64 bits", f"{value_out} for sum {total}")
    attempt(lambda: check_transaction_basic(tx), (TxValidationError,), "check_transaction_basic")


def _decode_block(data: bytes) -> tuple[Block, int]:
    s = DataStream(data)
    return Block.deserialize_from(s), s.tell()


@dataclass(frozen=True)
class BlockSubject:
    """``CBlock`` decoding (trailing bytes allowed, as the P2P layer) and ``Serialize``."""

    decode: Callable[[bytes], tuple[Block, int]] = _decode_block
    encode: Callable[[Block], bytes] = Block.serialize


def fuzz_block(data: bytes, subject: BlockSubject = BlockSubject()) -> None:
    """Header fields, the whole block's round trip, and the body checks on its ``vtx``.

    The C++ target also RandomX-hashes the header; that costs milliseconds per
    input and is left to ``dilithion-diff fuzz``, which compares real nodes.
    """
    if len(data) >= 80:
        header = BlockHeader.deserialize(data[:80])
        require(header.serialize() == data[:80], "header round trip is byte-identical")
        require(header.is_null() == (header.bits == 0), "IsNull looks only at nBits")
    decoded = attempt(lambda: subject.decode(data), _DECODE_ERRORS, "Block.deserialize")
    if decoded is None:
        return
    block, consumed = decoded
    encoded = subject.encode(block)
    check_reencoding(data[:consumed], encoded, "block")
    again = attempt(lambda: subject.decode(encoded), _DECODE_ERRORS, "decoding a re-encoded block")
    require(again == (block, len(encoded)), "re-encoding decodes to the same block")
    attempt(lambda: parse_block_transactions(block), _DECODE_ERRORS, "parse_block_transactions")
    root = attempt(lambda: committed_merkle_root(block), (), "committed_merkle_root")
    require(len(root) == 32, "committed merkle root is 32 bytes")
    attempt(lambda: check_block_body(block), (BlockValidationError,), "check_block_body")


def _parse_frame(data: bytes) -> NetMessage:
    return NetMessage.deserialize(data, TESTNET_MAGIC)


def _build_frame(magic: int, command: str, payload: bytes) -> bytes:
    return NetMessage(magic, command, payload).serialize()


@dataclass(frozen=True)
class FrameSubject:
    """Message framing (``CNetMessage``), its checksum, and the payload decoders."""

    parse: Callable[[bytes], NetMessage] = _parse_frame
    build: Callable[[int, str, bytes], bytes] = _build_frame
    checksum: Callable[[bytes], bytes] = calculate_checksum
    decode_payload: Callable = decode_payload


def fuzz_network_message(data: bytes, subject: FrameSubject = FrameSubject()) -> None:
    """Parse ``data`` as one testnet message (C++ ``network_message_parse``), then build a
    message from values read from it and parse that back (``network_message_create``)."""
    if len(data) >= MESSAGE_HEADER_SIZE:
        header = MessageHeader.deserialize(data)
        require(header.serialize() == data[:MESSAGE_HEADER_SIZE], "header round trip is byte-identical")
    message = attempt(lambda: subject.parse(data), _DECODE_ERRORS, "NetMessage.deserialize")
    if message is not None:
        require(message.serialize() == data, "frame round trip is byte-identical")
        _check_payload(subject, message.command, message.payload)
    _check_built_frame(subject, DataProvider(data))


def _check_payload(subject: FrameSubject, command: str, payload: bytes) -> None:
    decoded = attempt(lambda: subject.decode_payload(command, payload), _DECODE_ERRORS,
                      f"decoding a {command!r} payload")
    if decoded is None:
        return
    encoded = decoded.serialize()
    if not type(decoded).allow_trailing:
        check_reencoding(payload, encoded, f"{command!r} payload")
    again = attempt(lambda: subject.decode_payload(command, encoded), _DECODE_ERRORS,
                    f"decoding a re-encoded {command!r} payload")
    require(again == decoded and again is not None and again.serialize() == encoded,
            "payload re-encoding is a fixed point", f"{command!r}")


def _check_built_frame(subject: FrameSubject, p: DataProvider) -> None:
    magic = p.uint(4)
    command = "".join(chr(0x21 + b % 94) for b in p.random_length_bytes(11))
    payload = p.bytes(p.int_in_range(0, 1000))
    frame = subject.build(magic, command, payload)
    require(len(frame) == MESSAGE_HEADER_SIZE + len(payload), "frame is header plus payload",
            f"{len(frame)} bytes for a {len(payload)}-byte payload")
    require(subject.checksum(payload) == sha3_256d(payload)[:4], "checksum is the first 4 bytes of SHA3d")
    parsed = attempt(lambda: NetMessage.deserialize(frame, magic), _DECODE_ERRORS, "parsing a built frame")
    require(parsed is not None and (parsed.header.magic, parsed.command, parsed.payload) == (magic, command, payload),
            "built frame parses back to its fields", f"{command!r}, {len(payload)} bytes")
