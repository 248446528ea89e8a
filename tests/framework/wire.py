"""Wire bytes by hand and a blocking raw peer.

``frame``/``frame_raw`` build frames the node's own code would never produce
(bad checksums, lying sizes, unknown commands). ``RawPeer`` is one blocking
socket with no reader thread: the byte-level tests need a peer that reads only
when told to (a stalled peer that never reads, exact byte sequences). For
scripted conversations use :class:`framework.test_peer.TestPeer`.

Both are independent of the node's transport code on purpose.
"""
from __future__ import annotations

import socket
import struct
import time

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import MsgVerack, MsgVersion, decode_payload
from dilithion.net.serialize import (MESSAGE_HEADER_SIZE, MessageHeader, NetMessage,
                                     calculate_checksum)

REGTEST_MAGIC = ChainParams.regtest().magic


def frame(magic: int, msg) -> bytes:
    """The wire bytes of a protocol message object."""
    return msg.to_net_message(magic).serialize()


def frame_raw(magic: int, command: bytes | str, payload: bytes = b"",
              checksum: bytes | None = None, size: int | None = None) -> bytes:
    """Hand-made wire bytes: any command bytes, checksum or announced size."""
    cmd = command.encode() if isinstance(command, str) else command
    cmd = cmd.ljust(12, b"\0")[:12]
    return (struct.pack("<I12sI", magic, cmd, len(payload) if size is None else size)
            + (calculate_checksum(payload) if checksum is None else checksum) + payload)


def split_frame(buf: bytes, magic: int) -> tuple[NetMessage | None, bytes]:
    """The first whole message in ``buf`` and the rest; ``(None, buf)`` if incomplete."""
    if len(buf) < MESSAGE_HEADER_SIZE:
        return None, buf
    end = MESSAGE_HEADER_SIZE + MessageHeader.deserialize(buf).payload_size
    if len(buf) < end:
        return None, buf
    return NetMessage.deserialize(buf[:end], magic), buf[end:]


def open_socket(port: int, host: str = "127.0.0.1", bind_host: str | None = None,
                rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    """A connected TCP socket, optionally from a chosen local address (all of 127/8
    is local on Linux, so each attacker can have its own host for bans)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if bind_host is not None:
        sock.bind((bind_host, 0))
    sock.settimeout(timeout)
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RawPeer:
    """One blocking TCP connection to a node, speaking raw frames."""

    def __init__(self, port: int, magic: int = REGTEST_MAGIC, host: str = "127.0.0.1",
                 rcvbuf: int | None = None, timeout: float = 5.0,
                 bind_host: str | None = None) -> None:
        self.magic = magic
        self.sock = open_socket(port, host, bind_host, rcvbuf, timeout)
        self.buf = b""

    # -- sending -----------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg) -> None:
        self.send_raw(frame(self.magic, msg))

    # -- receiving ---------------------------------------------------------
    def recv_message(self, timeout: float = 5.0) -> NetMessage | None:
        """The next whole message, or None on EOF; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            msg, self.buf = split_frame(self.buf, self.magic)
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete message")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no complete message") from None
            except ConnectionError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def wait_for(self, command: str, timeout: float = 5.0):
        """Read until a message with ``command`` arrives; returns it decoded."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv_message(max(0.01, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError(f"closed while waiting for {command}")
            if msg.command == command:
                return decode_payload(command, msg.payload)

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True once the node closes the connection (reads and discards data)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.recv_message(max(0.01, deadline - time.monotonic())) is None:
                    return True
            except TimeoutError:
                return False
        return False

    def handshake(self, version: MsgVersion | None = None, timeout: float = 5.0) -> MsgVersion:
        """version -> (their version, their verack) -> verack; returns their version."""
        self.send(version or MsgVersion(timestamp=int(time.time()), nonce=42,
                                        user_agent=b"/p2p_util:0.1/"))
        theirs = self.wait_for("version", timeout)
        self.wait_for("verack", timeout)
        self.send(MsgVerack())
        return theirs

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
