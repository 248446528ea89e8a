"""The send path of the transport: queue whole framed messages, write them out (``SendMessage``).

A collaborator of :class:`~dilithion.net.net_transport.ConnectionManager`:
:class:`SendPath` serializes a message onto a peer's byte-bounded
:class:`~dilithion.net.socket.SendQueue` (any thread; a full queue refuses the
whole message, never half of it: ``net D-06``) and, on the network thread,
writes what the socket takes and updates the peer's byte counters.  Which peer
to flush and when is the transport's business (its selector and flush
requests); the send path gets ``close`` and ``update_interest`` as callbacks.
"""
from __future__ import annotations

import time
from typing import Callable

from loguru import logger

from dilithion.net.connection import Connection
from dilithion.net.protocol import Message
from dilithion.net.serialize import NetMessage
from dilithion.node.metrics import Metrics

__all__ = ["SendPath"]


class SendPath:
    """Queue and write messages (``SendMessage``).

    :meth:`enqueue` runs on any thread (the queue has its own lock);
    :meth:`flush` and :meth:`send_now` run on the network thread only, which
    owns the sockets.  ``log_messages`` logs every message sent (``DIL_P2P_LOG=1``).
    """

    def __init__(self, magic: int, metrics: Metrics, *, log_messages: bool,
                 close: Callable[[Connection, str, str], None],
                 update_interest: Callable[[Connection], None]) -> None:
        self.magic = magic
        self.metrics = metrics
        self.log_messages = log_messages
        self._close = close
        self._update_interest = update_interest

    def enqueue(self, conn: Connection, msg: Message | NetMessage,
                on_written: Callable[[], None] | None = None) -> bool:
        """Serialize ``msg`` onto ``conn``'s send queue; False when the queue refused it."""
        net_msg = msg if isinstance(msg, NetMessage) else msg.to_net_message(self.magic)
        data = net_msg.serialize()
        if not conn.sendq.push(data, on_written):
            logger.debug(f"[P2P] Send queue of peer {conn.peer.id} full "
                         f"({conn.sendq.queued_bytes()} bytes): {net_msg.command} refused")
            return False
        if self.log_messages:
            logger.debug(f"[P2P] send {net_msg.command} ({len(net_msg.payload)} bytes) "
                         f"peer={conn.peer.id}")
        return True

    def flush(self, conn: Connection) -> None:
        """Write what the socket takes of ``conn``'s queue; a socket error closes it."""
        written, _ = conn.sendq.write_to(conn.sock)
        if written < 0:
            self.metrics.socket_errors.inc()
            self._close(conn, f"socket error: {conn.sock.get_last_error_string()}", "closed")
            return
        if written:
            conn.peer.last_send = time.time()
            conn.peer.bytes_sent += written
            self.metrics.bytes_sent.inc(written)
        self._update_interest(conn)

    def send_now(self, conn: Connection, msg: Message) -> bool:
        """Queue ``msg`` and write at once (the keepalive ping); False when refused."""
        if not self.enqueue(conn, msg):
            return False
        self.flush(conn)
        return True
