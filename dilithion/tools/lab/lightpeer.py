"""Lightweight scripted peers: many handshaken connections on one thread.

The load scenario needs 50+ concurrent peers without 50 node processes on two
cores.  A :class:`LightPeers` swarm opens connections to lab nodes, does the
version/verack handshake, answers pings and reads (and discards) everything
else, so to the node each is a live, well-behaved peer that receives every
block ``inv``.  One selector thread serves all of them; every wait is bounded.
"""
from __future__ import annotations

import random
import selectors
import socket
import threading
import time

from dilithion.net.protocol import MsgPong, MsgVerack, MsgVersion, decode_payload
from dilithion.net.socket import FrameError, FrameReader

__all__ = ["LightPeers"]


class LightPeers:
    """``count`` scripted peers spread round-robin over ``targets`` (host, port)."""

    def __init__(self, magic: int, targets: list[tuple[str, int]], count: int) -> None:
        self.magic = magic
        self.targets = targets
        self.count = count
        self._sel = selectors.DefaultSelector()
        self._socks: dict[socket.socket, FrameReader] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.invs_received = 0
        self.handshaken = 0

    def _send(self, sock: socket.socket, msg) -> None:
        sock.setblocking(True)
        try:
            sock.sendall(msg.to_net_message(self.magic).serialize())
        finally:
            sock.setblocking(False)

    def start(self) -> "LightPeers":
        for i in range(self.count):
            host, port = self.targets[i % len(self.targets)]
            sock = socket.create_connection((host, port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self._send(sock, MsgVersion(timestamp=int(time.time()), nonce=random.getrandbits(63),
                                        user_agent=b"/dilithion-lab:light/"))
            self._socks[sock] = FrameReader(self.magic)
            self._sel.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="lab-lightpeers", daemon=True)
        self._thread.start()
        return self

    def connected(self) -> int:
        return len(self._socks)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                self._on_readable(key.fileobj)

    def _on_readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._forget(sock)
            return
        reader = self._socks[sock]
        reader.feed(data)
        while True:
            try:
                msg = reader.next_message()
            except FrameError as exc:
                if exc.fatal:                  # the stream is lost: calling again would spin
                    self._forget(sock)
                    return
                continue
            if msg is None:
                return
            command = msg.command
            if command == "version":
                self._send(sock, MsgVerack())
                self.handshaken += 1
            elif command == "ping":
                self._send(sock, MsgPong(nonce=decode_payload("ping", msg.payload).nonce))
            elif command == "inv":
                self.invs_received += 1

    def _forget(self, sock: socket.socket) -> None:
        self._sel.unregister(sock)
        self._socks.pop(sock, None)
        sock.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in list(self._socks):
            self._forget(sock)
        self._sel.close()
