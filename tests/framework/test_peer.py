"""``TestPeer``: a scripted wire peer with its own reader thread.

Modelled on Bitcoin Core's ``P2PInterface``: every message the node sends is
decoded, counted and handed to ``on_<command>(msg)`` on the reader thread, so a
test (or a subclass) reacts to traffic instead of reading a socket in order.
``sync_with_ping`` is the barrier that makes silence observable: the node
answers pings in order, so once our pong arrives it has processed everything
we sent before it.

Hostile-peer tests give each attacker its own ``bind_host`` (127.0.0.10,
127.0.0.11, ...): Linux routes all of 127/8 to loopback, and bans are per host.
"""
from __future__ import annotations

import secrets
import socket
import threading
import time
from collections import Counter

from dilithion.net.protocol import MsgPing, MsgPong, MsgVerack, MsgVersion, decode_payload
from dilithion.net.serialize import SerializationError

from .util import wait_until
from .wire import REGTEST_MAGIC, frame, open_socket, split_frame

DEFAULT_USER_AGENT = b"/dilithion-test-peer:0.1/"


class TestPeer:
    """One connection to a node; subclass and define ``on_<command>`` to script it.

    Callbacks run on the reader thread with ``msg`` the decoded message (None
    for commands the protocol module does not know). They may call ``send``.
    """

    __test__ = False                     # not a pytest test class despite its name

    def __init__(self, magic: int = REGTEST_MAGIC, bind_host: str = "127.0.0.1") -> None:
        self.magic = magic
        self.bind_host = bind_host
        self.message_count: Counter[str] = Counter()
        self.last_message: dict[str, object] = {}
        #: (command, exception) for each message the reader could not decode or whose
        #: callback raised; the reader carries on, the test decides what it means
        self.errors: list[tuple[str, Exception]] = []
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()            # counters, flags below, pong nonces
        self._send_lock = threading.Lock()       # whole frames, from test and reader thread
        self._pong_nonces: set[int] = set()
        self._handshaking = False
        self._verack_sent = False
        self._connected = False
        self._reader: threading.Thread | None = None

    # ---- connection ------------------------------------------------------------
    def connect(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> "TestPeer":
        """Open the TCP connection and start the reader; no message is sent yet."""
        self.sock = open_socket(port, host, self.bind_host, timeout=timeout)
        self.sock.settimeout(None)
        self.local_port = self.sock.getsockname()[1]
        self._connected = True
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"TestPeer-{self.bind_host}:{self.local_port}")
        self._reader.start()
        return self

    @property
    def is_connected(self) -> bool:
        return self._connected

    def wait_for_disconnect(self, timeout: float = 10.0) -> None:
        self.wait_until(lambda: not self._connected, timeout)

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
        self._connected = False

    def __enter__(self) -> "TestPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- sending ---------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def send(self, msg) -> None:
        self.send_raw(frame(self.magic, msg))

    def handshake(self, start_height: int = 0, user_agent: bytes = DEFAULT_USER_AGENT,
                  relay: bool = True, nonce: int | None = None,
                  timeout: float = 10.0) -> MsgVersion:
        """Send our version, answer theirs with verack, wait for their verack.

        Returns the node's version. The node sends its version as soon as it
        accepts the connection, so it may already be here when this is called.
        """
        self.send(MsgVersion(timestamp=int(time.time()), nonce=nonce or secrets.randbits(63) or 1,
                             user_agent=user_agent, start_height=start_height, relay=relay))
        with self._lock:
            self._handshaking = True
            theirs_arrived = self.message_count["version"] > 0
        if theirs_arrived:
            self._send_verack_once()
        self.wait_for("verack", timeout)
        return self.wait_for("version", timeout)

    def _send_verack_once(self) -> None:
        with self._lock:
            if self._verack_sent:
                return
            self._verack_sent = True
        self.send(MsgVerack())

    # ---- waiting ---------------------------------------------------------------
    def wait_until(self, predicate, timeout: float = 10.0) -> None:
        """``framework.util.wait_until`` with this peer's state in the failure message."""
        wait_until(predicate, timeout, message=self.describe)

    def wait_for(self, command: str, timeout: float = 10.0, count: int = 1):
        """Wait until ``count`` ``command`` messages arrived in total; returns the last.

        For "one more from now on" pass ``count=peer.message_count[command] + 1``.
        """
        self.wait_until(lambda: self.message_count[command] >= count, timeout)
        return self.last_message[command]

    def sync_with_ping(self, timeout: float = 10.0) -> None:
        """Ping with a fresh nonce and wait for its pong: the node has processed
        (and answered) everything this peer sent before."""
        nonce = secrets.randbits(64) or 1
        self.send(MsgPing(nonce))
        self.wait_until(lambda: nonce in self._pong_nonces, timeout)

    def describe(self) -> str:
        return (f"TestPeer {self.bind_host}:{getattr(self, 'local_port', '?')} "
                f"connected={self._connected} received={dict(self.message_count)}"
                + (f" errors={self.errors}" if self.errors else ""))

    # ---- default callbacks -------------------------------------------------------
    def on_ping(self, msg: MsgPing) -> None:
        self.send(MsgPong(msg.nonce))

    def on_version(self, msg: MsgVersion) -> None:
        with self._lock:
            answer = self._handshaking
        if answer:
            self._send_verack_once()

    # ---- reader thread -------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while True:
                    net_msg, buf = split_frame(buf, self.magic)
                    if net_msg is None:
                        break
                    self._dispatch(net_msg.command, net_msg.payload)
        except (OSError, SerializationError):
            return                  # reset, closed by us, or a frame we cannot parse
        finally:
            self._connected = False

    def _dispatch(self, command: str, payload: bytes) -> None:
        try:
            msg = decode_payload(command, payload)
        except Exception as exc:    # noqa: BLE001 - recorded; the test decides
            self.errors.append((command, exc))
            return
        with self._lock:
            self.message_count[command] += 1
            self.last_message[command] = msg
            if command == "pong":
                self._pong_nonces.add(msg.nonce)
        callback = getattr(self, f"on_{command}", None)
        if callback is not None:
            try:
                callback(msg)
            except Exception as exc:    # noqa: BLE001 - a dead reader would hide it
                self.errors.append((command, exc))
