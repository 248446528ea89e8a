"""The receive path of the network thread: read, budget, frame, hand over (``ReceiveMessages``).

Split out of :mod:`dilithion.net.net_transport` (same class, same thread):
:class:`ReceivePath` is the part of ``ConnectionManager`` that reads a
readable socket within the per-peer cap and the node-wide receive budget,
frames the bytes, scores framing faults and floods, and pushes complete
messages onto the connection's backlog for the message-handler thread.
"""
from __future__ import annotations

import time

from loguru import logger

from dilithion.net.banman import discouraged
from dilithion.net.connection import Connection
from dilithion.net.serialize import NetMessage
from dilithion.net.socket import FrameError

__all__ = ["ReceivePath", "SCORE_TRUNCATED", "SCORE_FLOOD"]

SCORE_TRUNCATED = 20
SCORE_FLOOD = 1


class ReceivePath:
    """Mixin of :class:`~dilithion.net.net_transport.ConnectionManager`; every
    method runs on the network thread, which owns each connection's reader
    and ``charged`` count.  Uses the manager's ``config``, ``peer_manager``,
    ``receive_buffer``, ``sink``, ``delivery_observers``, ``misbehaving``,
    ``_close``, ``_metric``, ``_snapshot`` and ``_update_interest``.
    """

    READ_CHUNK = 256 * 1024

    def _read(self, conn: Connection) -> None:
        """Read what the socket has and frame it into messages (``ReceiveMessages``)."""
        free = self._make_room_to_read(conn)
        if free <= 0:
            return
        data = conn.sock.recv(min(self.READ_CHUNK, max(conn.reader.room(), 1), free))
        if data is None:
            if conn.sock.last_error:
                self._metric("socket_errors")
                self._close(conn, f"socket error: {conn.sock.get_last_error_string()}", "closed")
            return
        if not data:
            partial = conn.reader.pending_bytes()
            if partial:
                self.misbehaving(conn.peer.id, SCORE_TRUNCATED,
                                 f"truncated message: connection closed with {partial} bytes "
                                 f"of an unfinished message")
            self._close(conn, "connection closed by peer", "closed")
            return
        now = time.monotonic()
        conn.last_recv_mono = now
        conn.peer.last_recv = time.time()
        conn.peer.bytes_recv += len(data)
        self._metric("bytes_received", len(data))
        conn.reader.feed(data)
        self._charge(conn)
        while not conn.closed:
            try:
                msg = conn.reader.next_message()
            except FrameError as e:
                self._charge(conn)
                self.misbehaving(conn.peer.id, e.score, f"{e.kind}: {e.reason}")
                if e.fatal:
                    self._close(conn, f"{e.kind}: stream cannot be resynchronised", "misbehaviour")
                    return
                continue
            self._charge(conn)
            if msg is None:
                break
            if not conn.bucket.try_take():
                self._on_flood(conn, msg)
                continue
            self._deliver(conn, msg)

    def _charge(self, conn: Connection) -> None:
        """Bring the receive budget up to date with ``conn``'s reader buffer."""
        if not conn.closed:
            pending = conn.reader.pending_bytes()
            self.receive_buffer.add(pending - conn.charged)
            conn.charged = pending

    def _make_room_to_read(self, conn: Connection) -> int:
        """How many bytes ``conn`` may read within the node-wide receive budget.

        With the budget spent, the connection holding the largest unfinished
        message (possibly ``conn`` itself) is disconnected: many peers
        trickling huge messages cost their own connections, never the node's
        memory.  When no reader holds anything (the budget sits in unprocessed
        backlogs) ``conn`` stops being read until the maintenance tick sees
        room again.  Returns 0 when ``conn`` must not read now.
        """
        free = self.receive_buffer.free()
        if free > 0:
            return free
        holder = max((c for c in self._snapshot() if not c.closed),
                     key=lambda c: c.charged, default=None)
        if holder is not None and holder.charged > 0:
            logger.warning(f"[P2P] Receive buffer budget of {self.receive_buffer.limit} bytes "
                           f"spent: disconnecting peer {holder.peer.id} "
                           f"({holder.peer.address()}), the largest holder "
                           f"({holder.charged} bytes of an unfinished message)")
            self._close(holder, "receive buffer budget exceeded", "receive_buffer")
            return 0 if conn.closed else self.receive_buffer.free()
        conn.budget_paused = True
        self._update_interest(conn)
        return 0

    def _on_flood(self, conn: Connection, msg: NetMessage) -> None:
        cfg = self.config
        detail = f"more than {cfg.msg_rate:g} messages/s (burst {cfg.msg_burst:g})"
        if not conn.flood_logged:
            conn.flood_logged = True
            self.misbehaving(conn.peer.id, SCORE_FLOOD, f"flood: {detail}; dropping {msg.command}")
            return
        if self.peer_manager.misbehaving(conn.peer.id, SCORE_FLOOD):
            discouraged(self, conn.peer, f"flood: {detail}")

    def _deliver(self, conn: Connection, msg: NetMessage) -> None:
        if msg.command == "pong":
            conn.ping.pong_framed(msg.payload)
        if self._log_messages:
            logger.debug(f"[P2P] recv {msg.command} ({len(msg.payload)} bytes) peer={conn.peer.id}")
        observer = self.delivery_observers.get(msg.command)
        if observer is not None:
            observer(conn.peer, msg.payload)
        was_empty, pause = conn.backlog.push(msg)
        if was_empty:
            self.sink.message_ready(conn)
        if pause:
            pending, _bytes = conn.backlog.counts()
            logger.debug(f"[P2P] Pausing reads from peer {conn.peer.id}: "
                         f"{pending} messages unprocessed")
            self._update_interest(conn)

    def _resume_reading(self, conn: Connection) -> None:
        if not conn.closed and not conn.backlog.paused:
            conn.last_recv_mono = time.monotonic()  # our stall, not the peer's silence
            self._update_interest(conn)
