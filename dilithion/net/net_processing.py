"""The message-handler thread: decoding, the handshake and dispatch (``CNetMessageProcessor``).

The processing half of the C++ ``net.cpp``.  The network thread
(:mod:`dilithion.net.net_transport`) frames bytes into messages and leaves
them in each connection's backlog; this module's one thread takes them one
message at a time, **fair by cost between peers**: the peer whose messages
have used the least handler time goes next (:mod:`dilithion.net.fair_queue`;
Bitcoin Core serves one message per peer in turn, which makes an honest
block wait a round of everyone's costliest messages).  It decodes each
payload (before the handshake only ``version``/``verack``/``ping``/``pong``;
anything else is dropped undecoded and counted), runs the handshake
(``version``/``verack``/``ping``/``pong``) and hands every other message to
the handlers registered for its type.  Slow handlers (RandomX, database
writes) therefore never stall any socket.

Handlers are added by message class (:meth:`NetMessageProcessor.add_handler`);
a class that is not a wire message fails when it is added, i.e. at start-up.
The node assembly (:mod:`dilithion.node.init`) adds them, and attaches the
processor to its transport as the transport's ``sink``; nothing here wires
itself.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from loguru import logger

from dilithion.net.fair_queue import FairQueue
from dilithion.net.net_transport import Connection, ConnectionManager
from dilithion.net.peers import Peer
from dilithion.net.protocol import (MESSAGE_TYPES, USER_AGENT, Message, MsgPing, MsgPong, MsgVerack,
                                    MsgVersion, decode_payload)
from dilithion.net.serialize import SerializationError
from dilithion.node.metrics import NULL_METRICS, Metrics

__all__ = ["NetMessageProcessor", "MessageHandler"]

State = Peer.State

#: Scores for bad input found above the framing layer (framing scores live in FrameReader).
SCORE_UNDECODABLE = 20
SCORE_HANDLER_REJECTED = 10
SCORE_DUPLICATE_VERSION = 10
#: How long stop() waits for a handler that is inside a chain or database call.
HANDLER_STOP_TIMEOUT_S = 30.0

MessageHandler = Callable[[Peer, Message], None]


class NetMessageProcessor:
    """Processes the messages of every connection on one handler thread.

    Ownership: ``_cv`` (a condition on its own lock) guards ``_ready`` (the
    :class:`~dilithion.net.fair_queue.FairQueue` of connections with messages
    waiting), ``_control`` (connection opened/closed events and calls queued by
    :meth:`post`, served before messages so a peer's ``version`` goes out
    before its messages are read and its clean-up runs after) and
    ``_running``.  The handler tables and listener lists are filled before
    :meth:`start` and only read afterwards.  ``_local_nonces``
    and ``dropped_before_handshake`` belong to the handler thread alone.
    """

    def __init__(self, transport: ConnectionManager, *, metrics: Metrics = NULL_METRICS,
                 start_height: Callable[[], int] = lambda: 0) -> None:
        self.transport = transport
        self.peer_manager = transport.peer_manager
        self.metrics = metrics
        self._start_height = start_height
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._handshake_listeners: list[Callable[[Peer], None]] = []
        self._disconnect_listeners: list[Callable[[Peer, str], None]] = []
        self._internal: dict[str, Callable[[Connection, Message], None]] = {
            MsgVersion.command: self.on_version, MsgVerack.command: self.on_verack,
            MsgPing.command: self.on_ping, MsgPong.command: self.on_pong}
        self._local_nonces: set[int] = set()
        #: Messages dropped undecoded before the handshake (handler thread only).
        self.dropped_before_handshake = 0
        self._cv = threading.Condition(threading.Lock())
        self._ready: FairQueue[Connection] = FairQueue()
        self._control: deque[tuple] = deque()
        self._deferred: dict[Connection, deque[Callable[[], None]]] = {}
        self._running = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ wiring (before start)
    def add_handler(self, msg_type: type[Message], fn: MessageHandler) -> None:
        """Call ``fn(peer, msg)`` on the handler thread for every decoded ``msg_type``
        message (after the handshake; the handshake types also before it, after
        the built-in handling).  Raises ``TypeError`` for a class that is not a
        wire message, so a typo fails when the node starts, not when a peer
        sends something.

        C++: ``SetVersionHandler``, ``SetPingHandler``, ``SetPongHandler``,
        ``SetAddrHandler``, ``SetInvHandler``, ``SetGetDataHandler``,
        ``SetBlockHandler`` and ``SetTxHandler``.
        """
        if MESSAGE_TYPES.get(getattr(msg_type, "command", None)) is not msg_type:
            raise TypeError(f"{msg_type!r} is not a wire message class of dilithion.net.protocol")
        self._handlers.setdefault(msg_type.command, []).append(fn)

    def add_handshake_listener(self, fn: Callable[[Peer], None]) -> None:
        self._handshake_listeners.append(fn)

    def add_disconnect_listener(self, fn: Callable[[Peer, str], None]) -> None:
        self._disconnect_listeners.append(fn)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._cv:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="p2p-msg", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the message in progress and end the thread (queued messages are
        skipped).  The caller closes the databases next, so wait for a handler
        that is inside a chain or database call."""
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(HANDLER_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                logger.error(f"[P2P] Message handler still busy after {HANDLER_STOP_TIMEOUT_S:.0f} s")

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # ------------------------------------------------------------ MessageSink (network thread)
    def connection_opened(self, conn: Connection) -> None:
        self._post_control("opened", conn, "")

    def connection_closed(self, conn: Connection, reason: str) -> None:
        conn.backlog.clear()
        self._post_control("closed", conn, reason)

    def message_ready(self, conn: Connection) -> None:
        with self._cv:
            self._ready.add(conn)
            self._cv.notify()

    def post(self, fn: Callable[[], None], peer_id: int | None = None) -> None:
        """Run ``fn()`` on the handler thread; any thread.

        Without ``peer_id``: before any further peer message, as a connection
        event is.  With ``peer_id``: as that peer's work, in the fair queue,
        charged to the peer and run before the peer's next message (Core
        finishes a peer's pending ``getdata`` before reading its next message);
        dropped when the peer is not connected.  For work that continues in
        slices (serving a big ``getdata`` a part at a time): each slice posts
        the next for its peer, so other peers are served between slices and
        the requester pays for all of them.
        """
        if peer_id is None:
            with self._cv:
                self._control.append(("call", fn, ""))
                self._cv.notify()
            return
        conn = self.transport.connection(peer_id)
        if conn is None or conn.closed:
            return
        with self._cv:
            self._deferred.setdefault(conn, deque()).append(fn)
            self._ready.add(conn)
            self._cv.notify()

    def _post_control(self, kind: str, conn, reason: str) -> None:
        with self._cv:
            self._control.append((kind, conn, reason))
            self._cv.notify()

    # ------------------------------------------------------------ handler thread
    def _next_work(self):
        with self._cv:
            while self._running:
                if self._control:
                    return self._control.popleft()
                if self._ready:
                    return self._ready.pop()
                self._cv.wait()
            return None

    def _loop(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                return
            try:
                if isinstance(work, Connection):
                    self._serve_one(work)
                elif work[0] == "call":
                    work[1]()
                elif work[0] == "opened":
                    self.send_version(work[1])
                else:
                    self._on_closed(work[1], work[2])
            except Exception:
                logger.exception("[P2P] Message handler failed")

    def _serve_one(self, conn: Connection) -> None:
        """Run one piece of ``conn``'s work (a call posted for it with
        :meth:`post`, else its oldest message), charge ``conn`` the time it took
        and requeue it by its virtual time if it has more."""
        started = time.thread_time()
        with self._cv:
            calls = self._deferred.get(conn)
            call = calls.popleft() if calls else None
            if calls is not None and not calls:
                del self._deferred[conn]
        try:
            if call is not None:
                if not conn.closed:
                    call()
            else:
                net_msg, resume, _ = conn.backlog.pop()
                if resume:
                    self.transport.resume_reading(conn)
                if net_msg is not None and not conn.closed and conn.peer.is_connected():
                    self.process_message(conn, net_msg)
        finally:
            # This thread's CPU time, not wall time: other threads holding the GIL
            # meanwhile (the network thread framing other peers' floods) must not
            # be charged to this peer.  A wait for a block hash being prefetched is
            # not charged either; the prefetch has its own per-peer fairness.
            cost = time.thread_time() - started
            more = conn.backlog.counts()[0] > 0     # (a push from now on re-adds conn)
            with self._cv:
                self._ready.charge(conn, cost, more or conn in self._deferred)
                if conn.closed:       # a call posted as it closed must not linger
                    self._ready.forget(conn)
                    self._deferred.pop(conn, None)
            self.metrics.handler_seconds.inc(cost)

    def _on_closed(self, conn: Connection, reason: str) -> None:
        with self._cv:
            self._ready.forget(conn)
            self._deferred.pop(conn, None)
        self._local_nonces.discard(conn.local_nonce)
        self._notify(self._disconnect_listeners, conn.peer, reason)

    def process_message(self, conn: Connection, net_msg) -> None:
        """Decode one framed message and run its handlers (``ProcessMessage``)."""
        peer, command = conn.peer, net_msg.command
        if command not in self._internal and not peer.is_handshake_complete():
            # Not decoded: before the handshake a big payload costs no CPU (D-35).
            self.dropped_before_handshake += 1
            self.metrics.prehandshake_dropped.inc()
            logger.debug(f"[P2P] Ignoring {command} ({len(net_msg.payload)} bytes) from peer "
                         f"{peer.id} before the handshake")
            return
        try:
            msg = decode_payload(command, net_msg.payload)
        except SerializationError as e:
            self.transport.misbehaving(peer.id, SCORE_UNDECODABLE, f"undecodable {command}: {e}")
            if command == MsgVersion.command:
                # No handshake without a version we can hold (e.g. a user agent over
                # MAX_SUBVERSION_LENGTH): free the slot now, as Core does.
                self.transport.disconnect(peer.id, f"undecodable version: {e}")
            return
        if msg is None:
            logger.debug(f"[P2P] Ignoring unknown command {command!r} from peer {peer.id}")
            return
        internal = self._internal.get(command)
        if internal is not None:
            internal(conn, msg)
        for fn in self._handlers.get(command, ()):
            if conn.closed:
                return
            try:
                fn(peer, msg)
            except (SerializationError, ValueError) as e:
                self.transport.misbehaving(peer.id, SCORE_HANDLER_REJECTED,
                                           f"handler rejected: {command}: {e}")
            except Exception:
                logger.exception(f"[P2P] Handler for {command} from peer {peer.id} failed")

    def _notify(self, listeners: list[Callable], *args) -> None:
        for fn in listeners:
            try:
                fn(*args)
            except Exception:
                logger.exception(f"[P2P] Listener {fn!r} failed")

    def _height_for_version(self) -> int:
        try:
            return int(self._start_height())
        except Exception:
            logger.exception("[P2P] Could not read the chain height for version")
            return 0

    # ------------------------------------------------------------ the handshake
    def send_version(self, conn: Connection) -> None:
        """Our one ``version``, before anything else on this connection (``net`` 7.1 item 3).

        C++: ``SendVersionMessage``, the only active step of ``PerformHandshake``.
        """
        if conn.closed:
            return
        peer = conn.peer
        self._local_nonces.add(conn.local_nonce)
        version = MsgVersion(timestamp=int(time.time()), nonce=conn.local_nonce,
                             user_agent=USER_AGENT, start_height=self._height_for_version(),
                             relay=True)
        if self.transport.send_message(peer.id, version):
            self.peer_manager.transition(peer, (State.STATE_CONNECTED,), State.STATE_VERSION_SENT)
            logger.info(f"[P2P] Sent version message to peer {peer.id}")
        else:
            logger.warning(f"[P2P] Failed to send version to peer {peer.id}")

    def on_version(self, conn: Connection, msg: MsgVersion) -> None:
        """Record the peer's ``version`` and answer ``verack``
        (``ProcessVersionMessage``, ``SendVerackMessage``)."""
        peer = conn.peer
        if peer.version_received:
            # The C++ demotes the peer here (net D-11); we keep the handshake and score it.
            self.transport.misbehaving(peer.id, SCORE_DUPLICATE_VERSION,
                                       "duplicate version: version received twice")
            return
        if msg.nonce and msg.nonce in self._local_nonces:
            logger.warning(f"[P2P] Self-connection detected on peer {peer.id} "
                           f"({peer.address()}): disconnecting")
            self.transport.disconnect(peer.id, "self-connection")
            return
        peer.version_received = True
        peer.version, peer.services, peer.nonce = msg.version, msg.services, msg.nonce
        peer.user_agent, peer.start_height, peer.relay = msg.user_agent, msg.start_height, msg.relay
        logger.info(f"[P2P] Handshake with peer {peer.id} "
                    f"({msg.user_agent.decode('ascii', 'replace')})")
        self.transport.send_message(peer.id, MsgVerack())
        self._maybe_complete(conn)

    def on_verack(self, conn: Connection, msg: MsgVerack) -> None:
        """Note the ``verack``; the handshake completes with both (``ProcessVerackMessage``)."""
        # A verack may precede the peer's version (C++ accept race, net D-13):
        # remember it; the handshake completes when both have arrived.
        if not conn.peer.verack_received:
            conn.peer.verack_received = True
            self._maybe_complete(conn)

    def _maybe_complete(self, conn: Connection) -> None:
        peer = conn.peer
        if not (peer.version_received and peer.verack_received):
            return
        if not self.peer_manager.transition(peer, (State.STATE_CONNECTED, State.STATE_VERSION_SENT),
                                            State.STATE_HANDSHAKE_COMPLETE):
            return  # already complete, or banned / closed meanwhile
        logger.info(f"[P2P] Handshake complete with peer {peer.id}")
        self.metrics.connected_peers.set(len(self.peer_manager.handshake_complete_peers()))
        self._notify(self._handshake_listeners, peer)

    def on_ping(self, conn: Connection, msg: MsgPing) -> None:
        """Answer with a ``pong`` (``ProcessPingMessage``, ``SendPongMessage``)."""
        self.transport.send_message(conn.peer.id, MsgPong(msg.nonce))

    def on_pong(self, conn: Connection, msg: MsgPong) -> None:
        """Record the round trip if the nonce is the one we sent (``ProcessPongMessage``)."""
        rtt = conn.ping.answer(msg.nonce, time.monotonic())
        if rtt is not None:
            conn.peer.ping_time = rtt
            if conn.peer.min_ping_time is None or rtt < conn.peer.min_ping_time:
                conn.peer.min_ping_time = rtt
