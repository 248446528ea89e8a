"""The receive path of the network thread: read, budget, frame, hand over (``ReceiveMessages``).

Split out of :mod:`dilithion.net.net_transport` (same class, same thread):
:class:`ReceivePath` is the part of ``ConnectionManager`` that reads a
readable socket within the per-peer cap and the node-wide receive budget,
frames the bytes, scores framing faults and floods, and pushes complete
messages onto the connection's backlog for the message-handler thread.

**Work per pass.**  One pass of the network loop serves every ready socket in
turn, so what one peer may cost in a pass is what every other peer waits.  A
readable socket is read once, at most :data:`READ_BYTES_PER_PASS`, and at most
:data:`FRAMES_PER_PASS` messages are cut from a peer's buffer per pass; bytes
already read but not framed are framed in the following passes (the loop does
not sleep while any are left) and the socket is not read again until they are,
nor framed while the peer's backlog is paused for the handler (Core's
``fPauseRecv``).  A pass over N busy peers therefore costs O(N x small) and an
honest socket is read and framed in the same pass as the busy ones.
"""
from __future__ import annotations

import time

from loguru import logger

from dilithion.net.banman import discouraged
from dilithion.net.connection import Connection
from dilithion.net.serialize import NetMessage
from dilithion.net.socket import FrameError

__all__ = ["ReceivePath", "RECEIVE_FLOOR_PER_PEER", "SCORE_TRUNCATED", "SCORE_FLOOD", "READ_BYTES_PER_PASS",
           "FRAMES_PER_PASS"]

SCORE_TRUNCATED = 20
SCORE_FLOOD = 1

#: Bytes read from one socket in one pass of the network loop.  Core reads one
#: 64 KiB chunk (``pchBuf[0x10000]``) per peer per ``SocketHandler`` loop; the same
#: here keeps a pass over 117 busy inbound peers at ~7 MiB of copying while a
#: catch-up peer still moves a 1 MB block in 16 passes (a pass is a ``select`` of
#: microseconds when only that peer is busy).
READ_BYTES_PER_PASS = 64 * 1024

#: Messages framed (checksummed, handed to the handler, observers run) for one
#: peer in one pass.  Framing is the Python cost of the network thread (about
#: 10-20 us a message); 64 KiB of 32-byte pings is 2,048 messages, i.e. tens of
#: milliseconds per peer per pass before this bound.  16 keeps one peer's share of
#: a pass near 0.3 ms, so 117 flooding peers cost a pass ~35 ms of framing,
#: and is above what an honest peer needs: the handler takes one message
#: per peer per turn and block download has 16 blocks in flight per peer.
FRAMES_PER_PASS = 16

#: Bytes a peer may always hold (unfinished plus unprocessed), even with the
#: node-wide receive budget spent: one pass's read.  The budget can be spent by
#: other peers' backlogs, which drain only at the handler's pace; without this
#: floor a peer that holds nothing (an honest peer's ``inv``, ``ping`` or small
#: block) was not read until a maintenance tick found room, and under a sustained
#: flood that took seconds.  It overdraws the budget by at most 64 KiB per
#: connection (8 MiB for 125), and a peer holding more waits like any other.
RECEIVE_FLOOR_PER_PEER = 64 * 1024


class ReceivePath:
    """Mixin of :class:`~dilithion.net.net_transport.ConnectionManager`; every
    method runs on the network thread, which owns each connection's reader
    and ``charged`` count.  Uses the manager's ``config``, ``peer_manager``,
    ``receive_buffer``, ``sink``, ``delivery_observers``, ``metrics``, ``misbehaving``,
    ``_close``, ``_guarded``, ``_snapshot`` and ``_update_interest``, and
    owns the manager's ``_unframed`` (connection -> the pass that last framed it,
    for the connections whose buffers may still hold complete messages) and
    ``_pass`` (the loop's pass counter).
    """

    def _read(self, conn: Connection) -> None:
        """Read what the socket has and frame it into messages (``ReceiveMessages``);
        a peer with bytes still to frame is framed instead of read."""
        if conn in self._unframed:
            self._frame(conn)
            return
        free = self._make_room_to_read(conn)
        if free <= 0:
            return
        data = conn.sock.recv(min(READ_BYTES_PER_PASS, max(conn.reader.room(), 1), free))
        if data is None:
            if conn.sock.last_error:
                self.metrics.socket_errors.inc()
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
        self.metrics.bytes_received.inc(len(data))
        conn.reader.feed(data)
        self._charge(conn)
        self._frame(conn)

    def _frame(self, conn: Connection) -> None:
        """Cut up to :data:`FRAMES_PER_PASS` messages from ``conn``'s buffer and
        hand them over.  While complete messages may be left, ``conn`` stays in
        ``_unframed`` (framed again next pass, its socket not read); a paused
        backlog stops framing until the handler resumes the peer."""
        self._unframed.pop(conn, None)
        framed = 0
        while not conn.closed and not conn.backlog.paused:
            if framed == FRAMES_PER_PASS:
                self._unframed[conn] = self._pass
                self.metrics.frames_deferred.inc()
                return
            try:
                msg = conn.reader.next_message()
            except FrameError as e:
                framed += 1
                self._charge(conn)
                self.misbehaving(conn.peer.id, e.score, f"{e.kind}: {e.reason}")
                if e.fatal:
                    self._close(conn, f"{e.kind}: stream cannot be resynchronised", "misbehaviour")
                    return
                continue
            self._charge(conn)
            if msg is None:
                return
            framed += 1
            if not conn.bucket.try_take():
                self._on_flood(conn, msg)
                continue
            self._deliver(conn, msg)

    def _frame_leftovers(self) -> None:
        """Frame on for the peers whose buffers still held messages after their
        turn in an earlier pass (and that were not served in this one)."""
        for conn, framed_in in list(self._unframed.items()):
            if conn.closed:
                self._unframed.pop(conn, None)
            elif framed_in != self._pass:
                self._guarded(conn, self._frame, conn)

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
        room again.  A peer holding less than ``RECEIVE_FLOOR_PER_PEER`` is read
        up to that floor whatever the others hold.  Returns 0 when ``conn``
        must not read now.
        """
        free = self.receive_buffer.free()
        if free > 0:
            return free
        held = self._held(conn)
        if held < RECEIVE_FLOOR_PER_PEER:
            return RECEIVE_FLOOR_PER_PEER - held
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

    @staticmethod
    def _held(conn: Connection) -> int:
        """Bytes ``conn`` holds in the receive budget: its unfinished message and
        its messages waiting for the handler."""
        return conn.charged + conn.backlog.counts()[1]

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
            self._frame(conn)                       # what was read before the pause
