"""Per-connection transport state shared by the network and message-handler threads.

One :class:`Connection` per peer holds what the network thread
(:mod:`dilithion.net.net_transport`) keeps about a socket, plus the two small
structures both threads touch, each with its own lock: the
:class:`InboundBacklog` of framed messages waiting for the handler thread and
the :class:`PingTracker` of the outstanding keepalive ping.
:class:`TransportConfig` gathers the limits and timers.  No single C++
counterpart: the C++ keeps these as loose maps in ``CConnectionManager``
(``peer_sockets``, ``pending_pings``).
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import deque

from dilithion.core.env import env_int
from dilithion.net.peers import Peer, PeerManager
from dilithion.net.serialize import MESSAGE_HEADER_SIZE, NetMessage
from dilithion.primitives.block import HEADER_SIZE, MAX_BLOCK_VTX_SIZE
from dilithion.net.socket import ByteBudget, FrameReader, SendQueue, Socket, TokenBucket

__all__ = ["Connection", "InboundBacklog", "PingTracker", "TransportConfig",
           "send_timeout_ms_from_env", "DEFAULT_MAX_RECEIVE_BUFFER", "DEFAULT_MAX_SEND_BUFFER",
           "DEFAULT_MAX_SEND_TOTAL", "MAX_VALID_PAYLOAD"]

#: The largest payload a valid message can have: a ``block`` (80-byte header, a
#: compact size, at most 4 MiB of ``vtx``); every other message is smaller (an
#: ``inv`` of 50,000 items is 1.8 MB, a ``tx`` at most 1,000,000 bytes).  One peer's
#: unfinished message is capped at this (Core: ``MAX_PROTOCOL_MESSAGE_LENGTH``, 4 MB),
#: not at the wire limit of 32 MiB (``MAX_MESSAGE_SIZE``, the C++ framing limit):
#: an announced size above it is refused at the header, so a peer trickling a
#: message holds at most 4 MiB, not 32.  The C++ node never sends more either.
MAX_VALID_PAYLOAD = HEADER_SIZE + 9 + MAX_BLOCK_VTX_SIZE

#: Node-wide bytes held for all peers' unfinished and unprocessed messages.  64 MiB
#: (224 before issue 21): fifteen of the largest valid messages at once; under the
#: nineteen attacks of ``contrib/bench/bench_hostile.py`` at once, 224 MiB of it was
#: mostly framed messages in attackers' backlogs and the node's RSS grew 147-214 MiB,
#: with 64 MiB (and the 1 MiB backlog below) 61-80 MiB.  A peer holding less than
#: ``RECEIVE_FLOOR_PER_PEER`` is read even when it is spent (``net_receive.py``).
DEFAULT_MAX_RECEIVE_BUFFER = 64 * 1024 * 1024

#: One peer's send queue above this pauses block and transaction service to it until it
#: drains (Core's ``fPauseSend`` at ``-maxsendbuffer``, 1,000 KB there).  1 MiB as in Core:
#: a peer that reads is refilled as soon as its queue falls under it, so its link stays
#: busy, and a peer that does not read holds at most this plus one block (4 MiB vtx).
DEFAULT_MAX_SEND_BUFFER = 1024 * 1024
#: Node-wide bytes queued for all peers before block and transaction service pauses for
#: every peer (:class:`~dilithion.net.socket.ByteBudget`).  64 MiB: sixteen of the
#: largest blocks in flight at once, more than a 500 Mbit/s uplink drains in a second,
#: while 117 inbound non-readers could otherwise pin 117 x (1 MiB + 4 MiB) = 585 MiB; with
#: the 64 MiB receive budget the peers' buffers stay under 128 MiB together.
DEFAULT_MAX_SEND_TOTAL = 64 * 1024 * 1024

#: One peer's framed messages waiting for the handler thread before its socket
#: stops being read (:class:`InboundBacklog`; Core's ``fPauseRecv``).  Bytes: Core
#: pauses a peer whose process queue exceeds its receive flood size (5 MB); here
#: 1 MiB, so 64 paused peers, not 13, fill the 64 MiB node-wide receive budget:
#: the handler takes one message per peer per turn, so a deeper backlog only holds
#: memory, and a peer sending a 4 MiB block is paused after it and read again as
#: soon as it is processed.  Messages:
#: a count bound as well, since in Python every small message is an object; a
#: catch-up peer has at most 16 blocks in flight and never comes near either.
DEFAULT_HANDLER_BACKLOG_MSGS = 1000
DEFAULT_HANDLER_BACKLOG_BYTES = 1024 * 1024


#: Largest ``DIL_SEND_TIMEOUT`` (ms): an hour; a longer deadline means none.
MAX_SEND_TIMEOUT_MS = 3_600_000


def send_timeout_ms_from_env(default_ms: int) -> int:
    """``DIL_SEND_TIMEOUT`` (milliseconds, 1 to an hour) when set, else ``default_ms``.

    Any other value raises :class:`~dilithion.core.env.EnvError` (the node exits 1
    with its one line): the conservative restart of the rollback procedure must
    not run silently with the default.
    """
    return env_int("DIL_SEND_TIMEOUT", 1, MAX_SEND_TIMEOUT_MS, default_ms, unit="ms")


class InboundBacklog:
    """Messages of one connection that the network thread framed and the
    message-handler thread has not processed yet.

    Shared by exactly those two threads; ``_lock`` guards every field.  Past
    ``max_msgs`` or ``max_bytes`` the backlog says *pause*: the network thread
    stops reading the socket (TCP backpressure on the peer) until the handler
    has worked it down to half.  Its bytes count towards the node-wide
    ``budget`` (a :class:`ByteBudget`, own lock) while they wait here.
    """

    __slots__ = ("max_msgs", "max_bytes", "budget", "_lock", "_items", "_bytes", "_paused")

    def __init__(self, max_msgs: int, max_bytes: int, budget: ByteBudget | None = None) -> None:
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.budget = budget
        self._lock = threading.Lock()
        self._items: deque[NetMessage] = deque()
        self._bytes = 0
        self._paused = False

    @staticmethod
    def _size(msg: NetMessage) -> int:
        return len(msg.payload) + MESSAGE_HEADER_SIZE

    def push(self, msg: NetMessage) -> tuple[bool, bool]:
        """Append; returns ``(was_empty, pause_now)``.  ``pause_now`` is True once,
        when this push crossed a limit (set here, under the lock the handler
        checks, so the handler can never drain the backlog unaware of it)."""
        with self._lock:
            was_empty = not self._items
            self._items.append(msg)
            self._bytes += self._size(msg)
            if self.budget is not None:
                self.budget.add(self._size(msg))
            pause = not self._paused and (len(self._items) >= self.max_msgs
                                          or self._bytes >= self.max_bytes)
            if pause:
                self._paused = True
            return was_empty, pause

    def pop(self) -> tuple[NetMessage | None, bool, bool]:
        """The oldest message; returns ``(message, resume_now, more_left)``."""
        with self._lock:
            if not self._items:
                return None, False, False
            msg = self._items.popleft()
            self._bytes -= self._size(msg)
            if self.budget is not None:
                self.budget.add(-self._size(msg))
            resume = (self._paused and len(self._items) <= self.max_msgs // 2
                      and self._bytes <= self.max_bytes // 2)
            if resume:
                self._paused = False
            return msg, resume, bool(self._items)

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    def counts(self) -> tuple[int, int]:
        """``(messages, bytes)`` waiting."""
        with self._lock:
            return len(self._items), self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            if self.budget is not None:
                self.budget.add(-self._bytes)
            self._bytes = 0


class PingTracker:
    """The outstanding keepalive ping of one connection.

    The network thread starts pings (its keepalive timer), notes a matching
    ``pong`` as soon as it is framed (so a busy handler thread never makes a
    live peer look dead) and enforces ``ping_timeout``; the message-handler
    thread matches the ``pong`` for the round-trip time.  ``_lock`` guards
    every field.
    """

    __slots__ = ("_lock", "_nonce", "_sent", "_awaiting")

    def __init__(self, now: float | None = None) -> None:
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._sent = time.monotonic() if now is None else now   # last ping (or creation)
        self._awaiting = False

    def start(self, now: float) -> int:
        """A fresh nonce, remembered as outstanding since ``now``."""
        with self._lock:
            self._nonce = secrets.randbits(64)
            self._sent = now
            self._awaiting = True
            return self._nonce

    def cancel(self) -> None:
        """The ping could not be queued: nothing outstanding (the next one is due
        ``ping_interval`` after this attempt)."""
        with self._lock:
            self._nonce = None
            self._awaiting = False

    def pong_framed(self, payload: bytes) -> None:
        """A ``pong`` was framed (network thread): stop the timeout if it answers our ping."""
        with self._lock:
            if (self._awaiting and len(payload) >= 8
                    and int.from_bytes(payload[:8], "little") == self._nonce):
                self._awaiting = False

    def overdue(self, now: float, timeout: float) -> bool:
        """True when our ping has waited more than ``timeout`` seconds for its pong."""
        with self._lock:
            return self._awaiting and now - self._sent > timeout

    def due(self, now: float, interval: float) -> bool:
        """True when no ping is outstanding and the last one is ``interval`` old."""
        with self._lock:
            return not self._awaiting and now - self._sent > interval

    def answer(self, nonce: int, now: float) -> float | None:
        """The round-trip time if ``nonce`` answers the outstanding ping, else None."""
        with self._lock:
            if self._nonce is None or nonce != self._nonce:
                return None
            self._nonce = None
            self._awaiting = False
            return now - self._sent


class Connection:
    """Transport state of one peer.

    Owned by the network thread, except: ``sendq`` (its own lock; any thread
    pushes), ``backlog`` (its own lock; network thread pushes, handler thread
    pops), ``ping`` (its own lock).  ``local_nonce`` never changes.  ``closed``
    is set once by the network thread; other threads only read it.
    """

    def __init__(self, peer: Peer, sock: Socket, reader: FrameReader, sendq: SendQueue,
                 bucket: TokenBucket, backlog: InboundBacklog, connecting: bool) -> None:
        self.peer = peer
        self.sock = sock
        self.reader = reader
        self.sendq = sendq
        self.bucket = bucket
        self.backlog = backlog
        now = time.monotonic()
        self.ping = PingTracker(now)
        self.connecting = connecting
        self.opened = now            # connect started / accepted / connected (monotonic)
        self.last_recv_mono = now
        self.mask = 0                # selector interest currently registered
        self.closed = False
        self.flood_logged = False
        self.budget_paused = False   # not read until the node-wide receive budget has room
        self.charged = 0             # reader bytes charged to the receive budget
        self.local_nonce = secrets.randbits(64) or 1  # our version nonce on this connection


class TransportConfig:
    """Limits and timers of the transport (seconds and bytes); defaults are the node's.

    ``connect_timeout`` and ``handshake_timeout`` are the C++ ``PEER_CONNECT_TIMEOUT``
    and ``PEER_HANDSHAKE_TIMEOUT``.  ``max_receive_buffer`` is the node-wide
    receive budget (:class:`ByteBudget`); ``ping_timeout`` disconnects a peer
    whose pong has not arrived that long after our ping; inbound connections
    are capped at ``max_peers - max_outbound`` (outbound slots are reserved)
    and at ``max_inbound_per_netgroup`` per netgroup
    (:func:`dilithion.net.eviction.netgroup`; 0 = no limit).  ``max_send_buffer``
    (one peer) and ``max_send_total`` (all peers, a :class:`~dilithion.net.socket.ByteBudget`)
    pause block and transaction service while the queued bytes are over them;
    ``send_queue_cap`` is the hard per-peer cap where pushes are refused.
    """

    def __init__(self, *, send_timeout_ms: int = 5000, max_peers: int = 125, max_outbound: int = 8,
                 recv_buffer_cap: int = MESSAGE_HEADER_SIZE + MAX_VALID_PAYLOAD,
                 send_queue_cap: int = 8 * 1024 * 1024, ping_interval: float = 30.0,
                 ping_timeout: float = 30.0,
                 max_receive_buffer: int = DEFAULT_MAX_RECEIVE_BUFFER,
                 max_inbound_per_netgroup: int = 32,
                 inactivity_timeout: float = 300.0, handshake_timeout: float = 60.0,
                 connect_timeout: float = 5.0, ban_time: float = PeerManager.DEFAULT_BAN_TIME,
                 msg_rate: float = 2000.0, msg_burst: float = 5000.0,
                 handler_backlog_msgs: int = DEFAULT_HANDLER_BACKLOG_MSGS,
                 handler_backlog_bytes: int = DEFAULT_HANDLER_BACKLOG_BYTES,
                 max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
                 max_send_total: int = DEFAULT_MAX_SEND_TOTAL) -> None:
        self.send_timeout = send_timeout_ms / 1000.0
        self.max_peers = max_peers
        self.max_outbound = max_outbound
        self.recv_buffer_cap = recv_buffer_cap
        self.send_queue_cap = send_queue_cap
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_receive_buffer = max_receive_buffer
        self.max_inbound_per_netgroup = max_inbound_per_netgroup
        self.inactivity_timeout = inactivity_timeout
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.ban_time = ban_time
        self.msg_rate = msg_rate
        self.msg_burst = msg_burst
        self.handler_backlog_msgs = handler_backlog_msgs
        self.handler_backlog_bytes = handler_backlog_bytes
        self.max_send_buffer = max_send_buffer
        self.max_send_total = max_send_total
