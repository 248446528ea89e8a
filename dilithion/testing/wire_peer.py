"""The harness's wire peer: one connection to a node, speaking frames by hand.

The tests, ``dilithion-diff``, ``dilithion-lab`` and the benchmarks all speak to a
node through :class:`WirePeer`; there is no other wire peer in the repository.
It is independent of the node's transport code on purpose (a bug there must not
hide itself from the peer that tests it).

* **Frames**: :func:`frame` (a protocol message object), :func:`frame_raw` (any
  command, checksum or announced size: malformed frames too), :func:`split_frame`.
* **One connection**: :func:`open_socket` from an own source address
  (``bind_host``: Linux routes all of 127/8 to loopback and bans are per host,
  so each attacker gets 127.0.0.10, 127.0.0.11, ...), optional receive buffer.
* **One handshake**: our ``version`` (configurable user agent, start height,
  relay), ``verack`` to theirs, done when their ``version`` and ``verack`` are here.
* **Two ways of reading**, over the same bookkeeping (:meth:`WirePeer._account`:
  counters, the handshake, pong nonces):

  - *blocking* (default): nothing is read until the caller asks
    (:meth:`~WirePeer.read_message`, :meth:`~WirePeer.wait_for`,
    :meth:`~WirePeer.sync_with_ping`, :meth:`~WirePeer.barrier`), so a byte-level
    test controls every read and a stalled peer that never reads is just a peer
    nobody asks;
  - *reader thread* (``connect(..., reader=True)``; :class:`TestPeer` by
    default): every message is decoded, counted and handed to
    ``on_<command>(msg)`` on the reader thread, like Bitcoin Core's
    ``P2PInterface``, and the waits poll the counters.

``sync_with_ping`` is the barrier that makes silence observable in both modes:
a node handles one peer's messages in order, so once the pong of a fresh nonce
arrives, the node has processed (and answered) everything sent before it.
"""
from __future__ import annotations

import itertools
import secrets
import socket
import struct
import threading
import time
from collections import Counter

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import MsgPing, MsgPong, MsgVerack, MsgVersion, decode_payload
from dilithion.net.serialize import (MESSAGE_HEADER_SIZE, MessageHeader, NetMessage,
                                     SerializationError, calculate_checksum)

__all__ = ["DEFAULT_USER_AGENT", "NoReply", "REGTEST_MAGIC", "LoopbackHosts", "RawPeer", "TestPeer",
           "WirePeer", "frame", "frame_raw", "open_socket", "split_frame"]

REGTEST_MAGIC = ChainParams.regtest().magic
DEFAULT_USER_AGENT = b"/dilithion-test-peer:0.1/"
#: Bytes asked of the socket per read: one large frame arrives in a few reads,
#: and a peer reading many small messages does not make one syscall per message.
READ_CHUNK = 65536
#: How often a wait in reader-thread mode looks at the counters again: the reader
#: thread, not the poll, receives; a short interval only shortens the wait's tail.
POLL_INTERVAL_S = 0.02
#: :meth:`WirePeer.barrier`'s pause between its two pings: replies a node sends from
#: another thread (relay, the broadcaster) come after the first pong but within this.
SETTLE_S = 0.3


class NoReply(TimeoutError):
    """The node kept the connection but did not send what we waited for in time."""


def frame(magic: int, msg) -> bytes:
    """The wire bytes of a protocol message object."""
    return msg.to_net_message(magic).serialize()


def frame_raw(magic: int, command: bytes | str, payload: bytes = b"",
              checksum: bytes | None = None, size: int | None = None) -> bytes:
    """Hand-made wire bytes: any command bytes, checksum or announced size."""
    cmd = command.encode("ascii", "replace") if isinstance(command, str) else command
    cmd = cmd[:12].ljust(12, b"\0")
    return (struct.pack("<I12sI", magic, cmd, len(payload) if size is None else size)
            + (calculate_checksum(payload) if checksum is None else checksum) + payload)


def split_frame(buf: bytes, magic: int) -> tuple[NetMessage | None, bytes]:
    """The first whole message in ``buf`` and the rest; ``(None, buf)`` if incomplete.
    Raises :class:`SerializationError` for a frame that cannot be parsed (wrong magic,
    bad checksum): the stream is lost then."""
    if len(buf) < MESSAGE_HEADER_SIZE:
        return None, buf
    end = MESSAGE_HEADER_SIZE + MessageHeader.deserialize(buf).payload_size
    if len(buf) < end:
        return None, buf
    return NetMessage.deserialize(buf[:end], magic), buf[end:]


def open_socket(port: int, host: str = "127.0.0.1", bind_host: str | None = None,
                rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    """A connected TCP socket, optionally from a chosen local address and with a small
    receive buffer (a peer that reads slowly fills up after a few KiB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if bind_host is not None:
            sock.bind((bind_host, 0))
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


class LoopbackHosts:
    """Source addresses 127.0.0.2 ... 127.0.0.251 in turn, so one connection's
    misbehaviour score never decides the next one's outcome.  One instance per
    user (a diff side, a scenario); not shared between threads."""

    def __init__(self) -> None:
        self._next = itertools.count(0)

    def next(self) -> str:
        return f"127.0.0.{next(self._next) % 250 + 2}"


class WirePeer:
    """One connection to one node: ``connect`` -> ``handshake`` -> ``send`` / reads.

    Counters (``message_count``, ``last_message``, ``errors``) and the handshake
    state are written by the reading thread (the caller in blocking mode, the
    reader thread otherwise) under ``_lock``; whole frames are sent under
    ``_send_lock``, since the test thread and the reader thread (callbacks) both
    send.  In blocking mode ``last_message`` holds only ``version`` and ``pong``
    (the messages the peer itself needs decoded); the reader decodes everything.
    """

    __test__ = False                     # not a pytest test class despite subclasses' names
    #: the reading mode ``connect`` uses unless told otherwise
    reads_in_thread = False

    def __init__(self, magic: int = REGTEST_MAGIC, bind_host: str | None = None,
                 user_agent: bytes = DEFAULT_USER_AGENT, keep_transcript: bool = False) -> None:
        self.magic = magic
        self.bind_host = bind_host
        self.user_agent = user_agent
        self.message_count: Counter[str] = Counter()
        self.last_message: dict[str, object] = {}
        #: (command, exception) for each message that could not be decoded or whose
        #: callback raised; the reader carries on, the caller decides what it means
        self.errors: list[tuple[str, Exception]] = []
        #: every (command, payload) read in blocking mode, for :meth:`barrier` (the diff)
        self.transcript: list[tuple[str, bytes]] | None = [] if keep_transcript else None
        self.sock: socket.socket | None = None
        self.buf = b""
        self.closed = True
        self.port: int | None = None
        self.host = "127.0.0.1"
        self.local_port: int | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pong_nonces: set[int] = set()
        self._last_frame: dict[str, NetMessage] = {}   # blocking mode decodes on demand
        self._ping_nonces: set[int] = set()
        self._answer_pings = False
        self._reader: threading.Thread | None = None
        self._reset_handshake()

    def _reset_handshake(self) -> None:
        self.their_version: MsgVersion | None = None
        self.their_verack = False
        self._handshaking = False
        self._verack_sent = False

    # ---- connection ------------------------------------------------------------
    def connect(self, port: int, host: str = "127.0.0.1", *, rcvbuf: int | None = None,
                timeout: float = 5.0, reader: bool | None = None) -> "WirePeer":
        """Open the TCP connection (from ``bind_host``); with ``reader`` start the reader
        thread.  No message is sent yet.  A peer may connect again after a close."""
        self.sock = open_socket(port, host, self.bind_host, rcvbuf, timeout)
        self.port, self.host = port, host
        self.local_port = self.sock.getsockname()[1]
        self.buf = b""
        self.closed = False
        self._reset_handshake()
        if self.reads_in_thread if reader is None else reader:
            self.sock.settimeout(None)
            self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                            name=f"WirePeer-{self.bind_host}:{self.local_port}")
            self._reader.start()
        return self

    @property
    def is_connected(self) -> bool:
        return not self.closed

    @property
    def handshake_complete(self) -> bool:
        return self.their_version is not None and self.their_verack and self._verack_sent

    def close(self) -> None:
        """Close our end and wait for the reader to finish (idempotent)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self._reader = None
        self.closed = True

    def __enter__(self) -> "WirePeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- sending ---------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are; an ``OSError`` (the node closed) marks us closed."""
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError:
            self.closed = True
            raise

    def send(self, msg) -> None:
        self.send_raw(frame(self.magic, msg))

    def send_frame(self, command: str, payload: bytes = b"", checksum: bytes | None = None,
                   size: int | None = None, magic: int | None = None) -> None:
        """A frame with any command, checksum, announced size or magic."""
        self.send_raw(frame_raw(self.magic if magic is None else magic, command, payload,
                                checksum, size))

    # ---- the handshake -------------------------------------------------------------
    def version_message(self, start_height: int = 0, relay: bool = True,
                        nonce: int | None = None, user_agent: bytes | None = None) -> MsgVersion:
        return MsgVersion(timestamp=int(time.time()), nonce=nonce or secrets.randbits(63) or 1,
                          user_agent=user_agent or self.user_agent, start_height=start_height,
                          relay=relay)

    def begin_handshake(self, version: MsgVersion | None = None) -> None:
        """Send our version; their version is answered with verack as it arrives."""
        self.send(version or self.version_message())
        with self._lock:
            self._handshaking = True
            theirs_arrived = self.their_version is not None
        if theirs_arrived:
            self._send_verack_once()

    def handshake(self, version: MsgVersion | None = None, *, start_height: int = 0,
                  user_agent: bytes | None = None, relay: bool = True, nonce: int | None = None,
                  timeout: float = 10.0) -> MsgVersion:
        """Send our version, answer theirs with verack, wait for their verack; returns
        their version.  The node sends its version as soon as it accepts the connection,
        so it may already be here.  ``ConnectionError`` if the node closes instead."""
        self.begin_handshake(version or self.version_message(start_height, relay, nonce,
                                                             user_agent))
        self.wait_until(lambda: self.their_version is not None and self.their_verack, timeout)
        return self.their_version

    def _send_verack_once(self) -> None:
        with self._lock:
            if self._verack_sent:
                return
            self._verack_sent = True
        self.send(MsgVerack())

    # ---- waiting (both modes) ------------------------------------------------------
    def wait_until(self, predicate, timeout: float = 10.0) -> None:
        """Until ``predicate()``: in blocking mode by reading messages, with the reader
        by polling.  :class:`NoReply` at the timeout, ``ConnectionError`` if the
        connection ends first (blocking mode)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._reader is None:
                if self.read_message(deadline - time.monotonic()) is None and not predicate():
                    raise ConnectionError(f"closed while waiting: {self.describe()}")
                continue
            if time.monotonic() >= deadline:
                raise NoReply(f"timed out after {timeout:g} s: {self.describe()}")
            time.sleep(POLL_INTERVAL_S)

    def wait_for(self, command: str, timeout: float = 10.0, count: int | None = None):
        """Until ``count`` ``command`` messages arrived in total; returns the last, decoded.

        ``count`` defaults to the next one in blocking mode (it reads only now) and to
        the first one ever with the reader (it has been reading all along); for "one
        more from now on" with the reader pass ``count=peer.message_count[command] + 1``.
        """
        if count is None:
            count = self.message_count[command] + 1 if self._reader is None else 1
        self.wait_until(lambda: self.message_count[command] >= count, timeout)
        if self._reader is None:
            return decode_payload(command, self._last_frame[command].payload)
        return self.last_message[command]

    def sync_with_ping(self, timeout: float = 10.0) -> None:
        """Ping with a fresh nonce and wait for its pong: the node has processed (and
        answered) everything this peer sent before.  Pings from the node are answered
        meanwhile (a peer that waits is alive)."""
        nonce = secrets.randbits(64) or 1
        with self._lock:
            self._ping_nonces.add(nonce)
        self.send(MsgPing(nonce))
        self._answer_pings = True
        try:
            self.wait_until(lambda: nonce in self._pong_nonces, timeout)
        finally:
            self._answer_pings = False

    def wait_for_disconnect(self, timeout: float = 10.0) -> None:
        self.wait_until(lambda: self.closed, timeout)

    def describe(self) -> str:
        return (f"peer {self.bind_host or '-'}:{self.local_port} -> {self.host}:{self.port} "
                f"connected={not self.closed} received={dict(self.message_count)}"
                + (f" errors={self.errors}" if self.errors else ""))

    # ---- blocking reads --------------------------------------------------------------
    def read_message(self, timeout: float = 5.0) -> NetMessage | None:
        """The next whole message (counted), or None once the connection ended;
        :class:`NoReply` (a ``TimeoutError``) if none arrives in time."""
        assert self._reader is None, "the reader thread reads this connection"
        deadline = time.monotonic() + timeout
        while True:
            msg, self.buf = split_frame(self.buf, self.magic)
            if msg is not None:
                self._account(msg)
                return msg
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply("no complete message")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(READ_CHUNK)
            except socket.timeout:
                raise NoReply("no complete message") from None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True once the node closes the connection (reads and discards data)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.read_message(max(0.01, deadline - time.monotonic())) is None:
                    return True
            except TimeoutError:
                return False
        return False

    def barrier(self, timeout: float = 10.0, settle: float = SETTLE_S) -> list[tuple[str, bytes]]:
        """Everything the node sent since the last barrier (needs ``keep_transcript``):
        a ping barrier, a pause of ``settle`` for replies a node sends from another
        thread, a second barrier.  Pings and our pongs are left out.  A connection that
        ends before a pong ends the barrier (``closed`` says so); :class:`NoReply` if
        the node keeps the connection but does not answer."""
        for attempt in range(2):
            if self.closed:
                break
            if attempt:
                time.sleep(settle)
            try:
                self.sync_with_ping(timeout)
            except NoReply:
                raise
            except OSError:              # closed (ConnectionError) or the send failed
                self.closed = True
                break
        return self.take_transcript()

    def take_transcript(self) -> list[tuple[str, bytes]]:
        """The transcript so far without pings and our pongs; the transcript restarts."""
        got = self.transcript or []
        self.transcript = [] if self.transcript is not None else None
        ours = {struct.pack("<Q", n) for n in self._ping_nonces}
        return [(c, p) for c, p in got if c != "ping" and not (c == "pong" and p[:8] in ours)]

    def accepted_again(self, timeout: float = 10.0) -> bool:
        """After a disconnect: does the node complete a handshake from the same address?"""
        probe = WirePeer(self.magic, self.bind_host, self.user_agent)
        try:
            probe.connect(self.port, self.host, timeout=timeout)
            probe.handshake(timeout=timeout)
            probe.sync_with_ping(timeout)
            return not probe.closed
        except OSError:                  # refused, closed, or NoReply
            return False
        finally:
            probe.close()

    # ---- what every read does ----------------------------------------------------------
    def _account(self, net_msg: NetMessage) -> object | None:
        """Count one message and run the handshake and ping bookkeeping; returns the
        decoded message (in blocking mode only the ones the peer needs decoded)."""
        command, payload = net_msg.command, net_msg.payload
        if self.transcript is not None:
            self.transcript.append((command, payload))
        self._last_frame[command] = net_msg
        msg = None
        if self._reader is not None or command in ("version", "pong", "ping"):
            try:
                msg = decode_payload(command, payload)
            except Exception as exc:    # noqa: BLE001 - recorded; the caller decides
                with self._lock:
                    self.errors.append((command, exc))
                    self.message_count[command] += 1
                return None
        answer_verack = False
        with self._lock:
            self.message_count[command] += 1
            if msg is not None:
                self.last_message[command] = msg
            if command == "pong":
                self._pong_nonces.add(msg.nonce)
            elif command == "verack":
                self.their_verack = True
            elif command == "version":
                self.their_version = msg
                answer_verack = self._handshaking
        if answer_verack:
            self._send_verack_once()
        if command == "ping" and self._answer_pings and self._reader is None:
            self.answer_ping(msg)
        return msg

    def answer_ping(self, msg: MsgPing) -> None:
        self.send(MsgPong(msg.nonce))

    # ---- the reader thread --------------------------------------------------------------
    def on_ping(self, msg: MsgPing) -> None:
        """Default callback: a live peer answers pings (override to stay silent)."""
        self.answer_ping(msg)

    def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(READ_CHUNK)
                if not chunk:
                    return
                buf += chunk
                while True:
                    net_msg, buf = split_frame(buf, self.magic)
                    if net_msg is None:
                        break
                    msg = self._account(net_msg)
                    callback = getattr(self, f"on_{net_msg.command}", None)
                    if msg is not None and callback is not None:
                        try:
                            callback(msg)
                        except Exception as exc:    # noqa: BLE001 - a dead reader would hide it
                            self.errors.append((net_msg.command, exc))
        except (OSError, SerializationError):
            return                  # reset, closed by us, or the framing is lost
        finally:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)   # lost framing: the stream is useless
            except OSError:
                pass


class TestPeer(WirePeer):
    """The harness peer with its reader thread by default, from 127.0.0.1 unless told
    (the test-facing name of Bitcoin Core's ``P2PInterface``)."""

    reads_in_thread = True

    def __init__(self, magic: int = REGTEST_MAGIC, bind_host: str = "127.0.0.1",
                 **kw) -> None:
        super().__init__(magic, bind_host, **kw)


class RawPeer(WirePeer):
    """The harness peer in blocking mode, connected at construction (the byte-level
    tests' ``RawPeer(port, magic, bind_host=...)``)."""

    def __init__(self, port: int, magic: int = REGTEST_MAGIC, host: str = "127.0.0.1",
                 rcvbuf: int | None = None, timeout: float = 5.0,
                 bind_host: str | None = None, user_agent: bytes = b"/p2p_util:0.1/") -> None:
        super().__init__(magic, bind_host, user_agent)
        self.connect(port, host, rcvbuf=rcvbuf, timeout=timeout)
