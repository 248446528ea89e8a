"""Byte streams and message framing: the port of ``src/net/serialize.{h,cpp}``.

Every decoder in the node works on untrusted bytes, so there is exactly one
failure type, :class:`SerializationError`.  It always names what was being read
and at which offset, and no reader ever allocates more than the bytes that are
actually present (the C++ ``resize`` before a length check, ``net D-09``, is not
reproduced).
"""
from __future__ import annotations

import hashlib
import struct

__all__ = [
    "SerializationError",
    "DataStream",
    "ser_compact_size",
    "calculate_checksum",
    "MAX_STRING_LENGTH",
    "MESSAGE_HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "MessageHeader",
    "NetMessage",
]

#: ``ReadString`` refuses longer strings ("String too large"); exactly 1 MiB is allowed.
MAX_STRING_LENGTH = 1024 * 1024

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class SerializationError(ValueError):
    """Raised by every decoder on malformed, truncated or over-limit input.

    The message says what was being read and where, e.g.
    ``"read past end: wanted 32 bytes for uint256 at offset 4, 3 remain"``.
    """


def ser_compact_size(n: int) -> bytes:
    """Minimal CompactSize encoding, exactly as ``WriteCompactSize``."""
    if n < 0:
        raise ValueError(f"CompactSize cannot encode a negative value: {n}")
    if n < 253:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + _U16.pack(n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + _U32.pack(n)
    if n <= 0xFFFFFFFFFFFFFFFF:
        return b"\xff" + _U64.pack(n)
    raise ValueError(f"CompactSize cannot encode {n}")


def calculate_checksum(payload: bytes) -> bytes:
    """First four bytes of SHA3-256(SHA3-256(payload)) (``net`` 1.4, D-32)."""
    return hashlib.sha3_256(hashlib.sha3_256(payload).digest()).digest()[:4]


class DataStream:
    """A growable byte buffer with a read cursor (``CDataStream``).

    Writes append at the end; reads advance ``read_pos``.  A stream is owned by
    the single thread that builds or parses one message, so it has no lock.
    """

    __slots__ = ("_buf", "read_pos")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._buf = bytearray(data)
        self.read_pos = 0

    # -- state -------------------------------------------------------------
    def size(self) -> int:
        return len(self._buf)

    def remaining(self) -> int:
        return len(self._buf) - self.read_pos

    def eof(self) -> bool:
        return self.read_pos >= len(self._buf)

    def tell(self) -> int:
        return self.read_pos

    def get_data(self) -> bytes:
        return bytes(self._buf)

    def seek(self, pos: int) -> None:
        """Move the read cursor (``CDataStream::seek``); must stay inside the buffer."""
        if not 0 <= pos <= len(self._buf):
            raise SerializationError(f"seek to {pos} outside a {len(self._buf)}-byte stream")
        self.read_pos = pos

    def clear(self) -> None:
        self._buf.clear()
        self.read_pos = 0

    def expect_end(self, what: str) -> None:
        """Reject trailing bytes where the format allows none."""
        if self.remaining():
            raise SerializationError(
                f"{self.remaining()} unexpected trailing bytes after {what} at offset {self.read_pos}"
            )

    # -- writing -----------------------------------------------------------
    def write(self, data: bytes) -> "DataStream":
        self._buf += data
        return self

    def write_uint8(self, v: int) -> "DataStream":
        self._buf.append(v & 0xFF)
        return self

    def write_uint16(self, v: int) -> "DataStream":
        return self.write(_U16.pack(v & 0xFFFF))

    def write_uint32(self, v: int) -> "DataStream":
        return self.write(_U32.pack(v & 0xFFFFFFFF))

    def write_int32(self, v: int) -> "DataStream":
        return self.write(_I32.pack(v))

    def write_uint64(self, v: int) -> "DataStream":
        return self.write(_U64.pack(v & 0xFFFFFFFFFFFFFFFF))

    def write_int64(self, v: int) -> "DataStream":
        return self.write(_I64.pack(v))

    def write_compact_size(self, n: int) -> "DataStream":
        return self.write(ser_compact_size(n))

    def write_var_bytes(self, data: bytes) -> "DataStream":
        """CompactSize length followed by the raw bytes (``WriteString``)."""
        return self.write(ser_compact_size(len(data))).write(data)

    write_string = write_var_bytes

    def write_uint256(self, raw: bytes) -> "DataStream":
        if len(raw) != 32:
            raise ValueError(f"uint256 must be 32 bytes, got {len(raw)}")
        return self.write(raw)

    # -- reading -----------------------------------------------------------
    def read(self, n: int, what: str = "bytes") -> bytes:
        if n < 0:
            raise SerializationError(f"negative length {n} for {what} at offset {self.read_pos}")
        end = self.read_pos + n
        if end > len(self._buf):
            raise SerializationError(
                f"read past end: wanted {n} bytes for {what} at offset {self.read_pos}, "
                f"{self.remaining()} remain"
            )
        out = bytes(self._buf[self.read_pos:end])
        self.read_pos = end
        return out

    def _unpack(self, st: struct.Struct, what: str) -> int:
        return st.unpack(self.read(st.size, what))[0]

    def read_uint8(self, what: str = "uint8") -> int:
        return self.read(1, what)[0]

    def read_uint16(self, what: str = "uint16") -> int:
        return self._unpack(_U16, what)

    def read_uint32(self, what: str = "uint32") -> int:
        return self._unpack(_U32, what)

    def read_int32(self, what: str = "int32") -> int:
        return self._unpack(_I32, what)

    def read_uint64(self, what: str = "uint64") -> int:
        return self._unpack(_U64, what)

    def read_int64(self, what: str = "int64") -> int:
        return self._unpack(_I64, what)

    def read_compact_size(self, what: str = "CompactSize") -> int:
        """Decode a CompactSize; non-canonical forms are accepted (``net D-10``)."""
        first = self.read_uint8(what)
        if first < 253:
            return first
        if first == 253:
            return self.read_uint16(what)
        if first == 254:
            return self.read_uint32(what)
        return self.read_uint64(what)

    def read_count(self, limit: int, what: str, item_size: int = 1) -> int:
        """A CompactSize element count, bounded by ``limit`` and by the bytes present.

        ``item_size`` is the minimum encoded size of one element, so a count that
        cannot possibly fit in the remaining bytes is rejected before any
        allocation happens.
        """
        if item_size < 1:
            raise ValueError(f"item_size must be at least 1, got {item_size}")
        start = self.read_pos
        n = self.read_compact_size(what)
        if n > limit:
            raise SerializationError(f"{what} {n} at offset {start} exceeds limit {limit}")
        if n * item_size > self.remaining():
            raise SerializationError(
                f"{what} {n} at offset {start} needs at least {n * item_size} bytes, "
                f"{self.remaining()} remain"
            )
        return n

    def read_var_bytes(self, what: str = "bytes", limit: int | None = None) -> bytes:
        """CompactSize length then that many bytes; the length is checked against
        ``limit`` and against the bytes present before anything is copied."""
        start = self.read_pos
        n = self.read_compact_size(f"length of {what}")
        if limit is not None and n > limit:
            raise SerializationError(f"{what} length {n} at offset {start} exceeds limit {limit}")
        return self.read(n, what)

    def read_string(self, what: str = "string") -> bytes:
        """A length-prefixed byte string of at most 1 MiB (``ReadString``)."""
        return self.read_var_bytes(what, MAX_STRING_LENGTH)

    def read_uint256(self, what: str = "uint256") -> bytes:
        return self.read(32, what)


#: Size of the fixed message header on the wire.
MESSAGE_HEADER_SIZE = 24
#: ``MAX_MESSAGE_SIZE`` (``net`` 1.5): a payload of exactly this size is allowed.
MAX_MESSAGE_SIZE = 32 * 1024 * 1024
_HEADER = struct.Struct("<I12sI4s")


class MessageHeader:
    """The 24-byte header (``CMessageHeader``): magic, command, size, checksum.

    ``command`` is kept as the raw 12 bytes so that a header re-serializes to
    exactly what was received.
    """

    __slots__ = ("magic", "command", "payload_size", "checksum")

    def __init__(self, magic: int, command: bytes, payload_size: int, checksum: bytes) -> None:
        if len(command) != 12 or len(checksum) != 4:
            raise ValueError(f"command must be 12 bytes and checksum 4, got {len(command)} "
                             f"and {len(checksum)}")
        self.magic = magic
        self.command = command
        self.payload_size = payload_size
        self.checksum = checksum

    @staticmethod
    def encode_command(command: str) -> bytes:
        """``SetCommand``: zero-fill 12 bytes, copy at most 11 characters."""
        return command.encode("ascii")[:11].ljust(12, b"\0")

    def get_command(self) -> str:
        """Bytes up to the first NUL, as ``GetCommand``; non-ASCII shows as escapes."""
        return self.command.split(b"\0", 1)[0].decode("ascii", "backslashreplace")

    def serialize(self) -> bytes:
        """The 24 header bytes (C++ ``SerializeHeader``)."""
        return _HEADER.pack(self.magic, self.command, self.payload_size, self.checksum)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageHeader):
            return NotImplemented
        return self.serialize() == other.serialize()

    __hash__ = None  # mutable

    @classmethod
    def deserialize(cls, data: bytes) -> "MessageHeader":
        """The first 24 bytes of ``data`` (a receive buffer may hold more).

        No validity check here: the C++ reads the fields first and judges them
        in ``IsValid``; call :meth:`check` for that.  C++: ``DeserializeHeader``.
        """
        if len(data) < MESSAGE_HEADER_SIZE:
            raise SerializationError(
                f"message header needs {MESSAGE_HEADER_SIZE} bytes, got {len(data)}"
            )
        return cls(*_HEADER.unpack_from(data))

    def check(self, expected_magic: int) -> None:
        """``CMessageHeader::IsValid`` with a reason instead of a bare ``false``."""
        if self.magic != expected_magic:
            raise SerializationError(
                f"wrong magic 0x{self.magic:08x} (expected 0x{expected_magic:08x})"
            )
        if self.payload_size > MAX_MESSAGE_SIZE:
            raise SerializationError(
                f"payload size {self.payload_size} exceeds MAX_MESSAGE_SIZE {MAX_MESSAGE_SIZE}"
            )
        if self.command[11] != 0:
            raise SerializationError("command field is not NUL-terminated (byte 12 is non-zero)")

    def __repr__(self) -> str:
        return (f"MessageHeader(magic=0x{self.magic:08x}, command={self.get_command()!r}, "
                f"size={self.payload_size}, checksum={self.checksum.hex()})")


class NetMessage:
    """A framed message (``CNetMessage``): header plus payload.

    Built by one thread and immutable afterwards, so a broadcaster may hand the
    same object to every peer's sender thread without a lock.
    """

    __slots__ = ("header", "payload")

    def __init__(self, magic: int, command: str, payload: bytes) -> None:
        self.header = MessageHeader(magic, MessageHeader.encode_command(command), len(payload),
                                    calculate_checksum(payload))
        self.payload = bytes(payload)

    @property
    def command(self) -> str:
        return self.header.get_command()

    def serialize(self) -> bytes:
        return self.header.serialize() + self.payload

    @classmethod
    def from_parts(cls, header: MessageHeader, payload: bytes) -> "NetMessage":
        msg = cls.__new__(cls)
        msg.header = header
        msg.payload = bytes(payload)
        return msg

    @classmethod
    def deserialize(cls, data: bytes, expected_magic: int) -> "NetMessage":
        """Parse exactly one whole message; used by tests and tools, not the socket loop."""
        header = MessageHeader.deserialize(data)
        header.check(expected_magic)
        payload = data[MESSAGE_HEADER_SIZE:]
        if len(payload) != header.payload_size:
            what = "missing" if len(payload) < header.payload_size else "trailing"
            raise SerializationError(
                f"{header.get_command()!r} message: payload is {len(payload)} bytes at offset "
                f"{MESSAGE_HEADER_SIZE} but the header announces {header.payload_size} "
                f"({what} bytes)")
        msg = cls.from_parts(header, payload)
        msg.verify_checksum()
        return msg

    def check(self, expected_magic: int) -> None:
        """``CNetMessage::IsValid``: header rules, payload length and checksum.

        Raises :class:`SerializationError` naming the first rule broken.  The
        C++ sender refuses to send a message that fails this, and so should we.
        """
        self.header.check(expected_magic)
        if len(self.payload) != self.header.payload_size:
            raise SerializationError(
                f"payload is {len(self.payload)} bytes but the header announces "
                f"{self.header.payload_size}")
        self.verify_checksum()

    def __repr__(self) -> str:
        return f"NetMessage({self.header!r}, payload={len(self.payload)} bytes)"

    def verify_checksum(self) -> None:
        actual = calculate_checksum(self.payload)
        if actual != self.header.checksum:
            raise SerializationError(
                f"bad checksum for {self.command!r}: header {self.header.checksum.hex()}, "
                f"payload hashes to {actual.hex()}"
            )
