"""256-bit values, block headers and blocks: the port of ``src/primitives/block.{h,cpp}``.

A block's ``vtx`` is an opaque byte string (``chain`` 1.5, ``net D-33``): the
genesis carries raw ASCII text, node-mined blocks one bare coinbase transaction.
It is carried byte for byte and never re-encoded, because the header commits to
it only through ``hashMerkleRoot``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dilithion.net.serialize import DataStream

__all__ = ["Uint256", "BlockHeader", "Block", "HEADER_SIZE", "MAX_BLOCK_VTX_SIZE"]

HEADER_SIZE = 80
#: Upper bound for a ``vtx`` we are willing to decode from the wire: the chain
#: parameters' ``maxBlockSize`` (4 MiB).  Larger blocks cannot be valid on any network.
MAX_BLOCK_VTX_SIZE = 4 * 1024 * 1024

_HEADER_TAIL = struct.Struct("<III")


class Uint256(bytes):
    """32 raw bytes as the C++ ``uint256`` holds them.

    Being a ``bytes`` subclass, equality, hashing and ``<`` are the C++ ``memcmp``
    order over the raw bytes (``chain D5``); numeric comparisons go through
    :meth:`to_int` (little-endian), as ``HashLessThan`` does.
    """

    ZERO: "Uint256"

    def __new__(cls, raw: bytes = b"\0" * 32) -> "Uint256":
        if len(raw) != 32:
            raise ValueError(f"a uint256 is 32 bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_hex(cls, text: str) -> "Uint256":
        """Inverse of :meth:`get_hex`; accepts exactly 64 hex digits (``chain`` 1.1)."""
        if len(text) != 64:
            raise ValueError(f"a hash in text form has 64 hex digits, got {len(text)}: {text!r}")
        try:
            return cls(bytes.fromhex(text)[::-1])
        except ValueError:
            raise ValueError(f"not a hex hash: {text!r}") from None

    @classmethod
    def from_int(cls, value: int) -> "Uint256":
        return cls(value.to_bytes(32, "little"))

    def get_hex(self) -> str:
        """Display form: the raw bytes reversed, lowercase (``GetHex``)."""
        return self[::-1].hex()

    def to_int(self) -> int:
        return int.from_bytes(self, "little")

    def is_null(self) -> bool:
        return not any(self)

    def short(self) -> str:
        """The 16-character prefix the C++ logs print as ``<h16>...``."""
        return self.get_hex()[:16]

    def __str__(self) -> str:
        return self.get_hex()

    def __repr__(self) -> str:
        return f"Uint256({self.get_hex()})"


Uint256.ZERO = Uint256()


@dataclass
class BlockHeader:
    """The 80-byte header that RandomX hashes (``CBlockHeader``)."""

    version: int = 1
    hash_prev_block: Uint256 = Uint256.ZERO
    hash_merkle_root: Uint256 = Uint256.ZERO
    time: int = 0
    bits: int = 0
    nonce: int = 0

    def __post_init__(self) -> None:
        # Accept plain 32-byte values but always hold Uint256, so get_hex() works on
        # every header and a wrong length fails here rather than as a short header.
        for name in ("hash_prev_block", "hash_merkle_root"):
            value = getattr(self, name)
            if not isinstance(value, Uint256):
                setattr(self, name, Uint256(bytes(value)))

    def serialize(self) -> bytes:
        """The 80 bytes RandomX hashes, all integers little-endian (``chain`` 1.3, D1)."""
        return (struct.pack("<i", self.version) + self.hash_prev_block + self.hash_merkle_root
                + _HEADER_TAIL.pack(self.time, self.bits, self.nonce))

    def serialize_to(self, s: DataStream) -> None:
        s.write(self.serialize())

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "BlockHeader":
        return cls(
            version=s.read_int32("header nVersion"),
            hash_prev_block=Uint256(s.read_uint256("header hashPrevBlock")),
            hash_merkle_root=Uint256(s.read_uint256("header hashMerkleRoot")),
            time=s.read_uint32("header nTime"),
            bits=s.read_uint32("header nBits"),
            nonce=s.read_uint32("header nNonce"),
        )

    @classmethod
    def deserialize(cls, data: bytes) -> "BlockHeader":
        s = DataStream(data)
        header = cls.deserialize_from(s)
        s.expect_end("block header")
        return header

    def set_null(self) -> None:
        self.version, self.time, self.bits, self.nonce = 0, 0, 0, 0
        self.hash_prev_block = self.hash_merkle_root = Uint256.ZERO

    def is_null(self) -> bool:
        """``IsNull``: the C++ looks only at ``nBits``."""
        return self.bits == 0

    def get_hash(self, hasher) -> Uint256:
        """RandomX hash of the 80 header bytes; ``hasher`` is a :class:`RandomXHasher`."""
        return Uint256(hasher.hash(self.serialize()))


@dataclass
class Block:
    """A header plus the opaque ``vtx`` bytes (``CBlock``).

    Blocks travel between threads (miner, chain state, P2P senders) without a
    lock: once a block has been handed on, nobody mutates it.  ``deserialize``
    caps ``vtx`` at 4 MiB (the chain parameters' ``maxBlockSize``) where the
    C++ has no cap at all (``net D-09``).
    """

    header: BlockHeader = field(default_factory=BlockHeader)
    vtx: bytes = b""

    def serialize(self) -> bytes:
        """The ``block`` message payload: header, CompactSize length, ``vtx``."""
        s = DataStream(self.header.serialize())
        s.write_var_bytes(self.vtx)
        return s.get_data()

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "Block":
        header = BlockHeader.deserialize_from(s)
        vtx = s.read_var_bytes("block vtx", MAX_BLOCK_VTX_SIZE)
        return cls(header, vtx)

    @classmethod
    def deserialize(cls, data: bytes, allow_trailing: bool = False) -> "Block":
        """Parse a ``block`` payload.

        The C++ ignores bytes after ``vtx``; pass ``allow_trailing=True`` for that
        leniency (the P2P layer does, to accept whatever a C++ peer accepts).
        """
        s = DataStream(data)
        block = cls.deserialize_from(s)
        if not allow_trailing:
            s.expect_end("block vtx")
        return block

    def get_hash(self, hasher) -> Uint256:
        return self.header.get_hash(hasher)

