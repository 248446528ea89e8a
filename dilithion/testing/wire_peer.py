"""A scripted wire peer with one blocking socket per node and no reader thread.

``dilithion-diff`` drives both nodes with it (step by step) and ``dilithion-lab``'s
``mixed`` scenario feeds blocks to its origin node with it.  After each step the
peer sends a ``ping`` with a fresh nonce and reads until the matching ``pong``:
a node handles one peer's messages in order, so everything the step caused
synchronously has arrived by then (a barrier, not a timer).  It then waits a
short settle time and repeats the barrier, to catch replies a node sends from
another thread.  A connection that ends before the ``pong`` is a disconnect;
whether the node then accepts the same source address again tells a ban from a
plain disconnect.

Each connection comes from its own loopback address (``127.0.0.N``), so one
step's misbehaviour score never decides the next step's outcome.
"""
from __future__ import annotations

import itertools
import socket
import struct
import time

from dilithion.net.protocol import MsgPing, MsgVerack, MsgVersion
from dilithion.net.serialize import MESSAGE_HEADER_SIZE, calculate_checksum

DRIVER_USER_AGENT = b"/dilithion-diff:0.1/"
BARRIER_TIMEOUT_S = 10.0
SETTLE_S = 0.3


class NoReply(Exception):
    """The node kept the connection but did not answer the barrier in time (a hang)."""


def frame(magic: int, command: str, payload: bytes, checksum: bytes | None = None,
          size: int | None = None) -> bytes:
    """Wire bytes with any command, checksum or announced size (malformed frames too)."""
    return (struct.pack("<I12sI", magic, command.encode("ascii", "replace")[:12].ljust(12, b"\0"),
                        len(payload) if size is None else size)
            + (calculate_checksum(payload) if checksum is None else checksum) + payload)


class WirePeer:
    """One connection to one node (``connect`` -> ``handshake`` -> ``send`` / ``barrier``)."""

    _hosts = itertools.count(2)

    def __init__(self, port: int, magic: int, timeout: float = BARRIER_TIMEOUT_S) -> None:
        self.port, self.magic, self.timeout = port, magic, timeout
        self.host = f"127.0.0.{next(self._hosts) % 250 + 2}"
        self.sock: socket.socket | None = None
        self.buf = b""
        self.closed = False
        self._nonce = itertools.count(0x5EED0000)

    def connect(self, host: str | None = None) -> None:
        self.host = host or self.host
        self.sock = socket.socket()
        self.sock.bind((self.host, 0))
        self.sock.settimeout(self.timeout)
        self.sock.connect(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.closed = True

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def send(self, command: str, payload: bytes = b"", **kw) -> None:
        self.send_raw(frame(kw.pop("magic", None) or self.magic, command, payload, **kw))

    def _read_message(self, deadline: float) -> tuple[str, bytes] | None:
        """The next whole message; ``None`` at EOF; :class:`NoReply` at the deadline."""
        while True:
            if len(self.buf) >= MESSAGE_HEADER_SIZE:
                _, raw_cmd, size, _ = struct.unpack("<I12sI4s", self.buf[:MESSAGE_HEADER_SIZE])
                end = MESSAGE_HEADER_SIZE + size
                if len(self.buf) >= end:
                    payload, self.buf = self.buf[MESSAGE_HEADER_SIZE:end], self.buf[end:]
                    return raw_cmd.rstrip(b"\0").decode("ascii", "replace"), payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply()
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise NoReply() from None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk

    def _until_pong(self, timeout: float) -> list[tuple[str, bytes]]:
        """Ping, then everything received before its pong (pings answered, not recorded)."""
        got: list[tuple[str, bytes]] = []
        if self.closed:
            return got
        nonce = next(self._nonce)
        self.send("ping", MsgPing(nonce).serialize())
        deadline = time.monotonic() + timeout
        while not self.closed:
            msg = self._read_message(deadline)
            if msg is None:
                break
            command, payload = msg
            if command == "pong" and payload[:8] == struct.pack("<Q", nonce):
                break
            if command == "ping":
                self.send("pong", payload[:8])
                continue
            got.append(msg)
        return got

    def barrier(self, timeout: float | None = None) -> list[tuple[str, bytes]]:
        """Everything the node sent in reply to the step (see the module docstring)."""
        timeout = timeout or self.timeout
        got = self._until_pong(timeout)
        if not self.closed:
            time.sleep(SETTLE_S)
            got += self._until_pong(timeout)
        return got

    def handshake(self, timeout: float | None = None) -> list[tuple[str, bytes]]:
        """Send our ``version``, answer theirs with ``verack``; return what the node sent."""
        timeout = timeout or self.timeout
        self.send("version", MsgVersion(timestamp=int(time.time()), nonce=0x1234,
                                        user_agent=DRIVER_USER_AGENT).serialize())
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        seen = set()
        while not self.closed and not {"version", "verack"} <= seen:
            msg = self._read_message(deadline)
            if msg is None:
                break
            got.append(msg)
            seen.add(msg[0])
            if msg[0] == "version":
                self.send("verack", MsgVerack().serialize())
        return got + self.barrier(timeout)

    def accepted_again(self, timeout: float = 10.0) -> bool:
        """After a disconnect: does the node complete a handshake from the same address?"""
        try:
            self.connect(self.host)
            got = self.handshake(timeout)
            accepted = not self.closed and any(c == "verack" for c, _ in got)
        except (OSError, NoReply):
            accepted = False
        finally:
            self.close()
        return accepted
