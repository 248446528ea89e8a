"""A tiny raw-socket test peer: connect, send framed messages, read framed messages.

It is deliberately independent of the node's transport code (blocking socket,
its own framing), so tests can send bytes the node would never produce.
"""
from __future__ import annotations

import socket
import struct
import time

from dilithion.net.protocol import MsgVerack, MsgVersion, decode_payload
from dilithion.net.serialize import MESSAGE_HEADER_SIZE, MessageHeader, NetMessage, calculate_checksum

__all__ = ["RawPeer", "NodeFactory", "frame", "frame_raw", "metric", "wait_until"]


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


class RawPeer:
    """One blocking TCP connection to a node, speaking raw frames."""

    def __init__(self, port: int, magic: int, host: str = "127.0.0.1", rcvbuf: int | None = None,
                 timeout: float = 5.0) -> None:
        self.magic = magic
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
            if len(self.buf) >= MESSAGE_HEADER_SIZE:
                header = MessageHeader.deserialize(self.buf)
                end = MESSAGE_HEADER_SIZE + header.payload_size
                if len(self.buf) >= end:
                    msg = NetMessage.deserialize(self.buf[:end], self.magic)
                    self.buf = self.buf[end:]
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


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true (returns True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class NodeFactory:
    """Builds started transports (a :class:`ConnectionManager` with its
    :class:`NetMessageProcessor`) on fresh contexts and stops them all at the end.

    Each transport gets its own context, metrics and peer table, so bans of the
    shared loopback host never leak between tests.  ``processor(cm)`` and
    ``ctx(cm)`` give a transport's message processor and context.
    """

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.managers = []
        self._parts: dict[int, tuple] = {}

    def __call__(self, params=None, listen_host: str | None = "127.0.0.1", listen_port: int = 0,
                 **kwargs):
        from dilithion.core.chainparams import ChainParams
        from dilithion.net.connection import TransportConfig, send_timeout_ms_from_env
        from dilithion.net.net_processing import NetMessageProcessor
        from dilithion.net.net_transport import ConnectionManager
        from dilithion.node.context import NodeContext
        from dilithion.node.metrics import NodeMetrics

        params = params or ChainParams.regtest()
        ctx = NodeContext(params, self.tmp_path / f"n{len(self.managers)}", hasher=None,
                          metrics=NodeMetrics(process_metrics=False))
        kwargs.setdefault("send_timeout_ms", send_timeout_ms_from_env(params.send_timeout_ms))
        cm = ConnectionManager(params.magic, TransportConfig(**kwargs), listen_host=listen_host,
                               listen_port=listen_port, metrics=ctx.metrics,
                               on_fatal=ctx.fatal_error)
        processor = NetMessageProcessor(cm, metrics=ctx.metrics)
        processor.start()
        cm.start()
        self.managers.append(cm)
        self._parts[id(cm)] = (ctx, processor)
        return cm

    def processor(self, cm):
        return self._parts[id(cm)][1]

    def ctx(self, cm):
        return self._parts[id(cm)][0]

    def stop_all(self) -> None:
        for cm in self.managers:
            cm.stop()
            self.processor(cm).stop()


def metric(cm, name: str, **labels) -> float:
    """Current value of a sample in the transport's node metrics (0 when absent)."""
    return cm.metrics.registry.get_sample_value(name, labels) or 0.0
