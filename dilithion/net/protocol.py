"""Wire structures and messages: the port of ``src/net/protocol.{h,cpp}``.

One class per wire structure, each with a symmetric ``serialize`` /
``deserialize`` pair, in the style of Bitcoin Core's
``test_framework/messages.py``.  Message classes carry their ``command`` and
turn a payload into an object or back; framing (magic, checksum) lives in
:mod:`dilithion.net.serialize`.  Every ``deserialize`` raises only
:class:`~dilithion.net.serialize.SerializationError`.

Layouts are the C++ node's, not Bitcoin's: ``version`` has no address fields and
a mandatory relay byte (``net D-08``), ``addr`` ports are little-endian
(``net D-31``), and a block's ``vtx`` is opaque (``net D-33``).

Where the C++ parsers are laxer than this module: they ignore trailing bytes
after *every* payload, while here only ``version``, ``verack``, ``getaddr``,
``ping``, ``pong`` and ``block`` ignore them (only the longest prefix their
fields can take is decoded, so the rest is never copied) (the C++ never sends trailing bytes
in ``inv``/``getdata``/``addr``/``tx``); and they resize before checking the
remaining length (``net D-09``), while here every count and length is checked
against its limit and the bytes present first.  Two limits are Bitcoin Core's,
not the C++'s: a ``version`` user agent of at most 256 bytes
(``MAX_SUBVERSION_LENGTH``; the C++ reads up to 1 MiB) and an ``addr`` of at
most 1,000 entries (``MAX_ADDR_SIZE``; the C++ reads up to 50,000).
"""
from __future__ import annotations

import enum
import time as _time
from dataclasses import dataclass, field
from typing import ClassVar

from dilithion.consensus.params import MAX_TRANSACTION_SIZE
from dilithion.core.chainparams import MAINNET_MAGIC, REGTEST_MAGIC, TESTNET_MAGIC
from dilithion.net.serialize import (MAX_MESSAGE_SIZE, DataStream, MessageHeader, NetMessage,
                                     SerializationError)
from dilithion.primitives.block import HEADER_SIZE, MAX_BLOCK_VTX_SIZE, Block, Uint256
from dilithion.primitives.transaction import Transaction

__all__ = [
    "MAINNET_MAGIC", "TESTNET_MAGIC", "REGTEST_MAGIC", "PROTOCOL_VERSION", "MIN_PEER_PROTO_VERSION",
    "DEFAULT_PORT", "TESTNET_PORT", "MAX_MESSAGE_SIZE", "MAX_INV_SIZE", "MAX_HEADERS_SIZE",
    "CPP_USER_AGENT", "USER_AGENT", "ServiceFlags", "InvType", "Inv", "Address", "MessageHeader",
    "NetMessage", "SerializationError", "MsgVersion", "MsgVerack", "MsgPing", "MsgPong",
    "MsgGetaddr", "MsgAddr", "MsgInv", "MsgGetdata", "MsgNotfound", "MsgBlock", "MsgTx",
    "MsgGetblocks",
    "MAX_LOCATOR_SIZE", "MAX_SUBVERSION_LENGTH", "MAX_ADDR_SIZE", "MESSAGE_TYPES",
    "decode_payload", "MessageType", "get_message_command",
]

PROTOCOL_VERSION = 70001
MIN_PEER_PROTO_VERSION = 70001
DEFAULT_PORT = 8444
TESTNET_PORT = 18444
MAX_INV_SIZE = 50_000
MAX_HEADERS_SIZE = 2000
#: Most hashes a ``getblocks`` locator may carry (Bitcoin's limit).
MAX_LOCATOR_SIZE = 101
#: Longest user agent accepted in ``version`` (Bitcoin Core's ``MAX_SUBVERSION_LENGTH``).
#: The peer chooses it and the node keeps it for the connection's life and
#: returns it in ``getpeerinfo``; the C++ reads up to 1 MiB (``net`` 2.3), so a
#: hundred peers could make a node hold 100 MiB of agents.  Real agents are
#: short (the C++ node's is 17 bytes, ours 19); a longer one makes the
#: ``version`` undecodable and the peer is disconnected before ``verack``.
MAX_SUBVERSION_LENGTH = 256
#: Most entries one ``addr`` may carry (Bitcoin Core's ``MAX_ADDR_TO_SEND``; more
#: is misbehaviour there too).  The C++ node allows 50,000 (``MAX_INV_SIZE``
#: reused, ``net`` 3.6) but never sends ``addr``; we send at most 1,000.
MAX_ADDR_SIZE = 1000
#: What the C++ node announces; peers with this agent get C++-compatible treatment.
CPP_USER_AGENT = b"/Dilithion:0.1.0/"
USER_AGENT = b"/DilithionPy:0.1.0/"


class ServiceFlags(enum.IntFlag):
    NODE_NONE = 0
    NODE_NETWORK = 1
    NODE_BLOOM = 4
    NODE_WITNESS = 8
    NODE_NETWORK_LIMITED = 1024


class MessageType(enum.IntEnum):
    """``NetProtocol::MessageType``; the last five are defined but never sent or handled."""

    MSG_VERSION = 0
    MSG_VERACK = 1
    MSG_PING = 2
    MSG_PONG = 3
    MSG_GETADDR = 4
    MSG_ADDR = 5
    MSG_INV = 6
    MSG_GETDATA = 7
    MSG_BLOCK = 8
    MSG_TX = 9
    MSG_GETHEADERS = 10
    MSG_HEADERS = 11
    MSG_GETBLOCKS = 12
    MSG_MEMPOOL = 13
    MSG_REJECT = 14


def get_message_command(msg_type: MessageType) -> str:
    """``GetMessageCommand``: the wire name, e.g. ``MSG_GETDATA`` -> ``"getdata"``.

    Values outside the enum give ``"unknown"``, as the C++ ``default`` case does.
    """
    try:
        return MessageType(msg_type).name[4:].lower()
    except ValueError:
        return "unknown"


class InvType(enum.IntEnum):
    MSG_TX_INV = 1
    MSG_BLOCK_INV = 2
    MSG_FILTERED_BLOCK = 3
    MSG_CMPCT_BLOCK = 4


INV_SIZE = 36
ADDRESS_SIZE = 30


@dataclass(frozen=True, order=True)
class Inv:
    """An inventory item (``CInv``): u32 type and a raw 32-byte hash."""

    type: int
    hash: bytes

    def __post_init__(self) -> None:
        # Always hold a Uint256 (a bytes subclass, so comparisons with plain bytes
        # still work) and fail at construction, not at send time, on a bad length.
        if not isinstance(self.hash, Uint256):
            object.__setattr__(self, "hash", Uint256(bytes(self.hash)))
        if not 0 <= self.type <= 0xFFFFFFFF:
            raise ValueError(f"inv type must fit in a u32, got {self.type}")

    def serialize_to(self, s: DataStream) -> None:
        s.write_uint32(self.type).write_uint256(self.hash)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "Inv":
        return cls(s.read_uint32("inv type"), s.read_uint256("inv hash"))

    def to_string(self) -> str:
        name = {1: "tx", 2: "block"}.get(self.type, f"type{self.type}")
        return f"{name} {Uint256(self.hash).get_hex()}"


@dataclass
class Address:
    """A network address (``CAddress``) as carried in ``addr``: 30 bytes, port LE."""

    time: int = 0
    services: int = ServiceFlags.NODE_NETWORK
    ip: bytes = bytes(16)
    port: int = 0

    def __post_init__(self) -> None:
        if len(self.ip) != 16:
            raise ValueError(f"an address ip is 16 bytes (IPv6 or IPv4-mapped), got {len(self.ip)}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of range: {self.port}")

    @classmethod
    def from_ipv4(cls, dotted: str, port: int, services: int = ServiceFlags.NODE_NETWORK,
                  time: int | None = None) -> "Address":
        """An IPv4-mapped address (C++ ``CAddress::SetIPv4``, ``CDNSResolver::MakeAddress``)."""
        octets = bytes(int(p) for p in dotted.split("."))
        if len(octets) != 4:
            raise ValueError(f"not a dotted IPv4 address: {dotted!r}")
        return cls(int(_time.time()) if time is None else time, services,
                   bytes(10) + b"\xff\xff" + octets, port)

    def is_ipv4(self) -> bool:
        return self.ip[:12] == bytes(10) + b"\xff\xff"

    def to_string_ip(self) -> str:
        """Dotted quad for IPv4-mapped, else the C++'s lossy ``[b0b1::b14b15]`` form."""
        if self.is_ipv4():
            return ".".join(str(b) for b in self.ip[12:])
        return f"[{self.ip[0]:02x}{self.ip[1]:02x}::{self.ip[14]:02x}{self.ip[15]:02x}]"

    def to_string(self) -> str:
        return f"{self.to_string_ip()}:{self.port}"

    def serialize_to(self, s: DataStream) -> None:
        s.write_uint32(self.time).write_uint64(self.services).write(self.ip).write_uint16(self.port)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "Address":
        return cls(s.read_uint32("addr time"), s.read_uint64("addr services"),
                   s.read(16, "addr ip"), s.read_uint16("addr port"))


class Message:
    """Base of all message classes: ``command`` plus payload (de)serialization."""

    command: ClassVar[str] = ""
    #: Bytes after the known fields are ignored by the C++ for this message.
    allow_trailing: ClassVar[bool] = False
    #: For a message with ``allow_trailing``: the most bytes its fields can take.
    #: Only that prefix is decoded, so trailing bytes (up to 32 MiB after an
    #: 8-byte ``ping``) are never copied: their only cost is the receive budget
    #: and the checksum every payload byte pays anyway.
    max_decoded_size: ClassVar[int | None] = None
    #: A longer payload is refused before any decoding (``None``: only the framing
    #: limit of 32 MiB applies).
    max_payload_size: ClassVar[int | None] = None

    def serialize_to(self, s: DataStream) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "Message":  # pragma: no cover - overridden
        raise NotImplementedError

    def serialize(self) -> bytes:
        """The payload bytes, written by each class's :meth:`serialize_to`.

        C++: the private ``SerializeVersionMessage``, ``SerializePingPong``,
        ``SerializeAddrMessage`` and ``SerializeInvMessage``.
        """
        s = DataStream()
        self.serialize_to(s)
        return s.get_data()

    @classmethod
    def deserialize(cls, payload: bytes) -> "Message":
        if cls.max_payload_size is not None and len(payload) > cls.max_payload_size:
            raise SerializationError(f"{cls.command} payload of {len(payload)} bytes exceeds "
                                     f"limit {cls.max_payload_size}")
        if cls.allow_trailing and cls.max_decoded_size is not None:
            payload = payload[:cls.max_decoded_size]
        s = DataStream(payload)
        msg = cls.deserialize_from(s)
        if not cls.allow_trailing:
            s.expect_end(f"{cls.command} payload")
        return msg

    def to_net_message(self, magic: int) -> NetMessage:
        return NetMessage(magic, self.command, self.serialize())


@dataclass
class MsgVersion(Message):
    """``version`` as the C++ lays it out (51 bytes with its own user agent).

    The C++ always sends nonce 0 and start height 0 and ignores both on receipt,
    so the Python node may send a random nonce (self-connection detection) and
    its real height (catch-up) without confusing a C++ peer.
    C++: ``struct CVersionMessage``; built by ``CreateVersionMessage``.
    """

    command: ClassVar[str] = "version"
    allow_trailing: ClassVar[bool] = True
    #: version, services, timestamp, nonce, agent (a CompactSize of up to 9 bytes,
    #: non-canonical forms are accepted, ``net D-10``), start height, relay.
    max_decoded_size: ClassVar[int] = 4 + 8 + 8 + 8 + 9 + MAX_SUBVERSION_LENGTH + 4 + 1

    version: int = PROTOCOL_VERSION
    services: int = ServiceFlags.NODE_NETWORK
    timestamp: int = 0
    nonce: int = 0
    user_agent: bytes = USER_AGENT
    start_height: int = 0
    relay: bool = True

    def serialize_to(self, s: DataStream) -> None:
        (s.write_int32(self.version).write_uint64(self.services).write_int64(self.timestamp)
         .write_uint64(self.nonce).write_string(self.user_agent).write_int32(self.start_height)
         .write_uint8(1 if self.relay else 0))

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgVersion":
        return cls(version=s.read_int32("version"), services=s.read_uint64("services"),
                   timestamp=s.read_int64("timestamp"), nonce=s.read_uint64("nonce"),
                   user_agent=s.read_var_bytes("user agent", MAX_SUBVERSION_LENGTH),
                   start_height=s.read_int32("start height"), relay=s.read_uint8("relay") != 0)


class _EmptyMessage(Message):
    """A payload-less message; any payload is accepted and ignored (``net`` 3.2)."""

    allow_trailing: ClassVar[bool] = True
    max_decoded_size: ClassVar[int] = 0

    def serialize_to(self, s: DataStream) -> None:
        pass

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "_EmptyMessage":
        return cls()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MsgVerack(_EmptyMessage):
    """``verack``: no payload (C++ ``CreateVerackMessage``)."""

    command: ClassVar[str] = "verack"


class MsgGetaddr(_EmptyMessage):
    """``getaddr``: no payload (C++ ``CreateGetAddrMessage``)."""

    command: ClassVar[str] = "getaddr"


@dataclass
class MsgPing(Message):
    """``ping``/``pong``: a u64 nonce; extra bytes are ignored, as the C++ does.

    C++: ``struct CPingPong``; built by ``CreatePingMessage``.
    """

    command: ClassVar[str] = "ping"
    allow_trailing: ClassVar[bool] = True
    max_decoded_size: ClassVar[int] = 8
    nonce: int = 0

    def serialize_to(self, s: DataStream) -> None:
        s.write_uint64(self.nonce)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgPing":
        return cls(s.read_uint64(f"{cls.command} nonce"))


@dataclass
class MsgPong(MsgPing):
    """``pong``: the nonce of the ``ping`` it answers (C++ ``CreatePongMessage``)."""

    command: ClassVar[str] = "pong"


@dataclass
class MsgAddr(Message):
    """``addr``: count (at most ``MAX_ADDR_SIZE``, 1,000, as Core) then 30-byte addresses.

    Unlike the C++, trailing bytes after the last entry are rejected (the C++
    never sends any).  C++: built by ``CreateAddrMessage``.
    """

    command: ClassVar[str] = "addr"
    addrs: list[Address] = field(default_factory=list)

    def serialize_to(self, s: DataStream) -> None:
        s.write_compact_size(len(self.addrs))
        for a in self.addrs:
            a.serialize_to(s)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgAddr":
        n = s.read_count(MAX_ADDR_SIZE, "addr count", ADDRESS_SIZE)
        return cls([Address.deserialize_from(s) for _ in range(n)])


@dataclass
class MsgInv(Message):
    """``inv`` (and, as subclass, ``getdata``): count <= 50,000 then 36-byte items.

    A count that cannot fit in the remaining bytes fails before any list is
    built; trailing bytes are rejected (the C++ ignores them and never sends any).
    C++: built by ``CreateInvMessage``.
    """

    command: ClassVar[str] = "inv"
    inv: list[Inv] = field(default_factory=list)

    def serialize_to(self, s: DataStream) -> None:
        s.write_compact_size(len(self.inv))
        for item in self.inv:
            item.serialize_to(s)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgInv":
        n = s.read_count(MAX_INV_SIZE, f"{cls.command} count", INV_SIZE)
        return cls([Inv.deserialize_from(s) for _ in range(n)])


@dataclass
class MsgGetdata(MsgInv):
    """``getdata``: the ``inv`` layout (C++ ``CreateGetDataMessage``)."""

    command: ClassVar[str] = "getdata"


@dataclass
class MsgNotfound(MsgInv):
    """``notfound``: the ``inv`` layout (Bitcoin); the items of a ``getdata`` we lack.

    The C++ never sends nor handles it (``net D-15``): sent to Python peers only.
    """

    command: ClassVar[str] = "notfound"


@dataclass
class MsgBlock(Message):
    """``block``: the C++ ignores bytes after ``vtx``, and so does this parser.

    C++: built by ``CreateBlockMessage``.
    """

    command: ClassVar[str] = "block"
    allow_trailing: ClassVar[bool] = True
    #: Header, then ``vtx`` (a CompactSize of up to 9 bytes and at most 4 MiB).
    max_decoded_size: ClassVar[int] = HEADER_SIZE + 9 + MAX_BLOCK_VTX_SIZE
    block: Block = field(default_factory=Block)

    def serialize_to(self, s: DataStream) -> None:
        s.write(self.block.serialize())

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgBlock":
        return cls(Block.deserialize_from(s))


@dataclass
class MsgTx(Message):
    """``tx``: one transaction, parsed with the ``CTransaction::Deserialize`` limits.

    The C++ P2P path parses without any limit and ignores trailing bytes
    (``net`` 3.10, D-09); here the payload may be at most 1,000,000 bytes (the
    consensus size limit), the 100,000 input/output and 10,000-byte script
    limits apply and the payload must be consumed exactly.
    C++: built by ``CreateTxMessage``.
    """

    command: ClassVar[str] = "tx"
    #: No valid transaction is longer (``MAX_TRANSACTION_SIZE``, 1,000,000 bytes), and
    #: decoding is the cost: a 5 MB ``tx`` of 100,000 minimal inputs and outputs took
    #: 0.8 s of the handler thread and 44 MiB while it lasted.
    max_payload_size: ClassVar[int] = MAX_TRANSACTION_SIZE
    tx: Transaction = field(default_factory=Transaction)

    def serialize_to(self, s: DataStream) -> None:
        self.tx.serialize_to(s)

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgTx":
        return cls(Transaction.deserialize_from(s))


@dataclass
class MsgGetblocks(Message):
    """``getblocks``: "send me your main chain after the first of these I share with you".

    The C++ node defines the command name but never sends or handles it (it
    ignores unknown commands, ``net`` 3.11), so Python nodes use it among
    themselves to heal forks deeper than a parent-by-parent walk can follow.
    Bitcoin's layout: version, a locator of block hashes (newest first,
    spacing doubling back to genesis) and a stop hash (zero: no stop).
    """

    command: ClassVar[str] = "getblocks"
    locator: list[bytes] = field(default_factory=list)
    hash_stop: bytes = bytes(32)
    version: int = PROTOCOL_VERSION

    def serialize_to(self, s: DataStream) -> None:
        s.write_uint32(self.version).write_compact_size(len(self.locator))
        for h in self.locator:
            s.write_uint256(bytes(h))
        s.write_uint256(bytes(self.hash_stop))

    @classmethod
    def deserialize_from(cls, s: DataStream) -> "MsgGetblocks":
        version = s.read_uint32("getblocks version")
        n = s.read_count(MAX_LOCATOR_SIZE, "locator count", 32)
        locator = [Uint256(s.read_uint256("locator hash")) for _ in range(n)]
        return cls(locator, Uint256(s.read_uint256("hash_stop")), version)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.command: cls
    for cls in (MsgVersion, MsgVerack, MsgPing, MsgPong, MsgGetaddr, MsgAddr, MsgInv, MsgGetdata,
                MsgNotfound, MsgBlock, MsgTx, MsgGetblocks)
}


def decode_payload(command: str, payload: bytes) -> Message | None:
    """Decode a payload by command; ``None`` for commands the node ignores (as the C++)."""
    cls = MESSAGE_TYPES.get(command)
    return cls.deserialize(payload) if cls else None
