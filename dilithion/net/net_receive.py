"""The receive path of the network thread: read, budget, frame, hand over (``ReceiveMessages``).

A collaborator of :class:`~dilithion.net.net_transport.ConnectionManager`,
owned by its network thread: :class:`ReceivePath` reads a readable socket
within the per-peer cap and the node-wide receive budget, frames the bytes,
scores framing faults and floods, and hands each complete message to the
transport's ``deliver`` callback (which queues it for the message-handler
thread).  It is built with exactly what it needs, as named callbacks: it never
touches the transport's connection table, selector or sockets other than the
one it reads.

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
from typing import Callable, Iterable, Protocol

from loguru import logger

from dilithion.net.connection import Connection, TransportConfig
from dilithion.net.serialize import NetMessage
from dilithion.net.socket import ByteBudget, FrameError
from dilithion.node.metrics import Metrics

__all__ = ["ReceivePath", "Misbehaving", "RECEIVE_FLOOR_PER_PEER", "SCORE_TRUNCATED", "SCORE_FLOOD",
           "READ_BYTES_PER_PASS", "FRAMES_PER_PASS"]

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


class Misbehaving(Protocol):
    """Score bad input of a peer (``ConnectionManager.misbehaving``); ``quiet``
    scores without the per-event log line and metric (a flood already logged)."""

    def __call__(self, peer_id: int, howmuch: int, reason: str, *, quiet: bool = False) -> None: ...


class ReceivePath:
    """Read, budget and frame on the network thread (``ReceiveMessages``).

    Owner: the network thread; every method runs there.  It owns each
    connection's reader and ``charged`` count, ``_unframed`` (connection -> the
    pass that last framed it, for the connections whose buffers may still hold
    complete messages) and ``_pass`` (the network loop's pass counter, advanced
    by :meth:`new_pass`).  What it needs from the transport comes in at
    construction: ``connections()`` (a snapshot of the open connections, to find
    the largest holder of the budget), ``deliver(conn, msg)`` (queue a framed
    message for the handler), ``close(conn, reason, category)``,
    ``update_interest(conn)`` (re-arm the selector after a pause or resume) and
    ``misbehaving`` (score bad input).
    """

    def __init__(self, config: TransportConfig, receive_buffer: ByteBudget, metrics: Metrics, *,
                 connections: Callable[[], Iterable[Connection]],
                 deliver: Callable[[Connection, NetMessage], None],
                 close: Callable[[Connection, str, str], None],
                 update_interest: Callable[[Connection], None],
                 misbehaving: Misbehaving) -> None:
        self.config = config
        self.receive_buffer = receive_buffer
        self.metrics = metrics
        self._connections = connections
        self._deliver = deliver
        self._close = close
        self._update_interest = update_interest
        self._misbehaving = misbehaving
        self._unframed: dict[Connection, int] = {}
        self._pass = 0

    def new_pass(self) -> None:
        """The network loop starts a pass."""
        self._pass += 1

    def has_unframed(self) -> bool:
        """Bytes were read but not framed yet: the loop must not sleep."""
        return bool(self._unframed)

    def forget(self, conn: Connection) -> None:
        """``conn`` was closed."""
        self._unframed.pop(conn, None)

    def read(self, conn: Connection) -> None:
        """Read what the socket has and frame it into messages (``ReceiveMessages``);
        a peer with bytes still to frame is framed instead of read."""
        if conn in self._unframed:
            self.frame(conn)
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
                self._misbehaving(conn.peer.id, SCORE_TRUNCATED,
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
        self.frame(conn)

    def frame(self, conn: Connection) -> None:
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
                self._misbehaving(conn.peer.id, e.score, f"{e.kind}: {e.reason}")
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

    def leftovers(self) -> list[Connection]:
        """The peers to frame on (:meth:`frame`): their buffers still held messages
        after their turn in an earlier pass, and they were not served in this one."""
        todo = []
        for conn, framed_in in list(self._unframed.items()):
            if conn.closed:
                self._unframed.pop(conn, None)
            elif framed_in != self._pass:
                todo.append(conn)
        return todo

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
        holder = max((c for c in self._connections() if not c.closed),
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
            self._misbehaving(conn.peer.id, SCORE_FLOOD, f"flood: {detail}; dropping {msg.command}")
            return
        self._misbehaving(conn.peer.id, SCORE_FLOOD, f"flood: {detail}", quiet=True)

    def resume(self, conn: Connection) -> None:
        """The handler worked ``conn``'s backlog down: read and frame it again."""
        if not conn.closed and not conn.backlog.paused:
            conn.last_recv_mono = time.monotonic()  # our stall, not the peer's silence
            self._update_interest(conn)
            self.frame(conn)                        # what was read before the pause

    def resume_if_room(self, conn: Connection, has_room: bool) -> None:
        """The maintenance tick: read ``conn`` again if it was paused for the
        receive budget and the budget has room (``has_room``) or ``conn`` holds
        less than its floor."""
        if conn.budget_paused and not conn.closed and (
                has_room or self._held(conn) < RECEIVE_FLOOR_PER_PEER):
            conn.budget_paused = False
            self._update_interest(conn)
