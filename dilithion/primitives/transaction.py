"""Transactions: the port of ``src/primitives/transaction.{h,cpp}``.

The txid is the single SHA3-256 of the canonical serialization (``chain`` 1.7).
Non-canonical CompactSize input is accepted, so a transaction parsed from such
bytes gets the txid of its canonical re-encoding (``chain D4``).  Nothing is
cached: objects are mutable and a stale cache is what broke the C++ signer
(``chain D6``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dilithion.net.serialize import DataStream

__all__ = ["OutPoint", "TxIn", "TxOut", "Transaction", "SEQUENCE_FINAL",
           "MAX_TX_INPUTS", "MAX_TX_OUTPUTS", "MAX_SCRIPT_SIZE"]

SEQUENCE_FINAL = 0xFFFFFFFF
NULL_INDEX = 0xFFFFFFFF
#: ``CTransaction::Deserialize`` limits (checked before allocation).
MAX_TX_INPUTS = 100_000
MAX_TX_OUTPUTS = 100_000
MAX_SCRIPT_SIZE = 10_000

# Smallest encodings, used to reject counts that cannot fit in the bytes present.
_MIN_TXIN_SIZE = 32 + 4 + 1 + 4
_MIN_TXOUT_SIZE = 8 + 1


@dataclass(frozen=True, order=True)
class OutPoint:
    """A reference to one output; ordered by (raw hash bytes, n) like ``COutPoint``."""

    hash: bytes = b"\0" * 32
    n: int = NULL_INDEX

    def is_null(self) -> bool:
        return self.n == NULL_INDEX and not any(self.hash)

    def serialize_to(self, s: DataStream) -> None:
        s.write_uint256(self.hash).write_uint32(self.n)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "OutPoint":
        return cls(s.read_uint256("prevout hash"), s.read_uint32("prevout n"))


@dataclass
class TxIn:
    prevout: OutPoint = field(default_factory=OutPoint)
    script_sig: bytes = b""
    sequence: int = SEQUENCE_FINAL

    def serialize_to(self, s: DataStream) -> None:
        self.prevout.serialize_to(s)
        s.write_var_bytes(self.script_sig).write_uint32(self.sequence)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "TxIn":
        prevout = OutPoint.deserialize_from(s)
        script_sig = s.read_var_bytes("scriptSig", MAX_SCRIPT_SIZE)
        return cls(prevout, script_sig, s.read_uint32("nSequence"))


@dataclass
class TxOut:
    value: int = 0
    script_pubkey: bytes = b""

    def is_null(self) -> bool:
        return self.value == 0 and not self.script_pubkey

    def serialize_to(self, s: DataStream) -> None:
        s.write_uint64(self.value).write_var_bytes(self.script_pubkey)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "TxOut":
        value = s.read_uint64("output nValue")
        return cls(value, s.read_var_bytes("scriptPubKey", MAX_SCRIPT_SIZE))


@dataclass
class Transaction:
    version: int = 1
    vin: list[TxIn] = field(default_factory=list)
    vout: list[TxOut] = field(default_factory=list)
    lock_time: int = 0

    # -- encoding ------------------------------------------------------------
    def serialize_to(self, s: DataStream) -> None:
        s.write_int32(self.version)
        s.write_compact_size(len(self.vin))
        for txin in self.vin:
            txin.serialize_to(s)
        s.write_compact_size(len(self.vout))
        for txout in self.vout:
            txout.serialize_to(s)
        s.write_uint32(self.lock_time)

    def serialize(self) -> bytes:
        s = DataStream()
        self.serialize_to(s)
        return s.get_data()

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "Transaction":
        version = s.read_int32("tx nVersion")
        n_in = s.read_count(MAX_TX_INPUTS, "input count", _MIN_TXIN_SIZE)
        vin = [TxIn.deserialize_from(s) for _ in range(n_in)]
        n_out = s.read_count(MAX_TX_OUTPUTS, "output count", _MIN_TXOUT_SIZE)
        vout = [TxOut.deserialize_from(s) for _ in range(n_out)]
        return cls(version, vin, vout, s.read_uint32("tx nLockTime"))

    @classmethod
    def deserialize(cls, data: bytes, allow_trailing: bool = False) -> tuple["Transaction", int]:
        """Parse one transaction; returns it and the number of bytes consumed.

        Without ``allow_trailing`` the input must be consumed exactly
        ("Extra data after transaction", as the C++ ``Deserialize``).
        """
        s = DataStream(data)
        tx = cls.deserialize_from(s)
        if not allow_trailing:
            s.expect_end("transaction")
        return tx, s.tell()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Transaction":
        return cls.deserialize(data)[0]

    # -- identity ------------------------------------------------------------
    def get_hash(self) -> bytes:
        """txid: raw SHA3-256 of the canonical serialization (no cache, ``chain D6``)."""
        return hashlib.sha3_256(self.serialize()).digest()

    txid = property(get_hash)

    def get_serialized_size(self) -> int:
        return len(self.serialize())

    def set_null(self) -> None:
        self.version, self.vin, self.vout, self.lock_time = 1, [], [], 0

    def is_null(self) -> bool:
        return not self.vin and not self.vout

    def is_coinbase(self) -> bool:
        return len(self.vin) == 1 and self.vin[0].prevout.is_null()

    def get_value_out(self) -> int:
        """Sum of outputs; raises ``OverflowError`` past 64 bits, as the C++ throws."""
        total = 0
        for out in self.vout:
            total += out.value
            if total > 0xFFFFFFFFFFFFFFFF:
                raise OverflowError("transaction output values overflow 64 bits")
        return total

