"""The network thread: sockets, framing, send queues and timers (``CConnectionManager``).

The C++ node (``net`` 1.6, 1.7, 4.11) reads at most one message per peer per
50 ms sweep with single ``recv`` calls, sends with a single ``send`` that may
leave half a message on the wire, never notices a closed socket and never
closes one.  Here the transport half of the C++ ``net.cpp`` runs on one
**network thread**: one ``selectors`` loop over the listening socket, every
peer socket (all non-blocking) and a wake-up socketpair.  It accepts,
finishes outbound connects, reads and frames bytes, writes queued messages,
and enforces every timer (connect, handshake, send deadline, keepalive, ping
timeout, inactivity: :mod:`dilithion.net.timers`).  This module keeps the
connection table, the selector loop, connecting, flush requests and closing;
the other jobs are collaborators built here with named callbacks (never
mixins): queueing and writing messages (:class:`~dilithion.net.net_send.SendPath`),
reading and framing (:class:`~dilithion.net.net_receive.ReceivePath`), accepting
(:class:`~dilithion.net.net_accept.InboundAcceptor`) and acting on the timers
(:class:`~dilithion.net.timers.ConnectionTimers`).  It is the only thread
that touches a socket.  It also keeps the node's resources bounded: the
node-wide receive budget (:class:`~dilithion.net.socket.ByteBudget`)
and inbound eviction (:mod:`dilithion.net.eviction`) when the inbound slots
are full.

Complete messages go to the message processor
(:mod:`dilithion.net.net_processing`, the message-handler thread) through a
:class:`MessageSink`; each connection's :class:`InboundBacklog` carries them
across.  Other threads only enqueue: :meth:`ConnectionManager.send_message`
appends a whole framed message to the peer's byte-bounded queue and wakes the
selector.
"""
from __future__ import annotations

import os
import selectors
import socket as _stdlib_socket
import threading
import time
from collections import deque
from typing import Callable, Protocol

from loguru import logger

from dilithion.net.banman import BanMan
from dilithion.net.connection import Connection, InboundBacklog, TransportConfig
from dilithion.net.net_accept import InboundAcceptor
from dilithion.net.net_receive import ReceivePath
from dilithion.net.net_send import SendPath
from dilithion.net.peers import Peer, PeerManager
from dilithion.net.protocol import Message
from dilithion.net.serialize import MESSAGE_HEADER_SIZE, NetMessage
from dilithion.net.socket import ByteBudget, FrameReader, SendQueue, Socket, TokenBucket, is_ipv4
from dilithion.net.timers import ConnectionTimers
from dilithion.node.metrics import NULL_METRICS, Metrics

__all__ = ["ConnectionManager", "MessageSink"]

State = Peer.State

#: Pause before accepting again after the process ran out of descriptors: the
#: pending connection keeps the listener readable, so retrying at once would spin.
ACCEPT_RETRY_S = 0.5


class MessageSink(Protocol):
    """Where the network thread hands its work to the message-handler thread
    (implemented by :class:`~dilithion.net.net_processing.NetMessageProcessor`).
    Every method only enqueues and returns at once."""

    def connection_opened(self, conn: Connection) -> None: ...

    def message_ready(self, conn: Connection) -> None:
        """``conn.backlog`` went from empty to non-empty."""

    def connection_closed(self, conn: Connection, reason: str) -> None: ...


class ConnectionManager:
    """All peer connections of one node: the transport half of ``CConnectionManager``.

    Threads: the network thread owns the selector, the listener, every socket
    and the collaborators built here with the callbacks they need: ``sender``
    (:class:`~dilithion.net.net_send.SendPath`, whose ``enqueue`` any thread
    calls), ``receiver`` (:class:`~dilithion.net.net_receive.ReceivePath`), ``acceptor``
    (:class:`~dilithion.net.net_accept.InboundAcceptor`) and ``timers``
    (:class:`~dilithion.net.timers.ConnectionTimers`).  Any thread may call the
    public methods below; they post work to the network thread or touch only
    locked state.
    Locks: ``_cs_conns`` guards the ``_conns`` dict, ``_ops_lock`` the work
    posted to the network thread (``_ops``, ``_flush_ids``).  The peer table
    has its own lock (:class:`PeerManager`), as has the node-wide
    ``receive_buffer`` (:class:`ByteBudget`).  ``sink`` and
    ``delivery_observers`` are set once before :meth:`start`, by the node
    assembly (:mod:`dilithion.node.init`).
    """

    def __init__(self, magic: int, config: TransportConfig | None = None, *,
                 listen_host: str | None = "127.0.0.1", listen_port: int = 0,
                 metrics: Metrics = NULL_METRICS, on_fatal: Callable[[str], None] | None = None,
                 banman: BanMan | None = None) -> None:
        self.magic = magic
        self.config = cfg = config or TransportConfig()
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.send_timeout = cfg.send_timeout
        self.metrics = metrics
        self._on_fatal = on_fatal
        self.peer_manager = PeerManager(cfg.max_peers, cfg.max_outbound, cfg.ban_time, banman,
                                        max_inbound_per_netgroup=cfg.max_inbound_per_netgroup,
                                        metrics=metrics)
        self.receive_buffer = ByteBudget(cfg.max_receive_buffer)
        #: Node-wide bytes queued in every peer's ``SendQueue`` (its own lock).
        self.send_buffer = ByteBudget(cfg.max_send_total)
        metrics.send_buffer_bytes.set_function(self.send_buffer.used)
        self.sink: MessageSink | None = None
        #: ``command -> fn(peer, payload)``, run on the network thread for every
        #: complete message of that command as it is queued for the handler; set
        #: before :meth:`start`; must not block (e.g. the proof-of-work prefetch).
        self.delivery_observers: dict[str, Callable] = {}
        self._log_messages = os.environ.get("DIL_P2P_LOG") == "1"

        self._conns: dict[int, Connection] = {}
        self._cs_conns = threading.Lock()
        self._ops: deque[Callable[[], None]] = deque()
        self._flush_ids: set[int] = set()
        self._ops_lock = threading.Lock()
        #: Queues messages (any thread) and writes them (network thread; net_send.py).
        self.sender = SendPath(magic, metrics, log_messages=self._log_messages,
                               close=self._close, update_interest=self._update_interest)
        #: Network thread only: read, budget and frame (net_receive.py).
        self.receiver = ReceivePath(cfg, self.receive_buffer, metrics,
                                    connections=self._snapshot, deliver=self._deliver,
                                    close=self._close, update_interest=self._update_interest,
                                    misbehaving=self.misbehaving)
        #: Network thread only: acts on each connection's timers (timers.py).
        self.timers = ConnectionTimers(cfg, self.send_timeout, metrics,
                                       send_now=self.sender.send_now, close=self._close)
        #: Network thread only: accepts inbound connections (net_accept.py).
        self.acceptor = InboundAcceptor(
            self.peer_manager, metrics, connections=self._snapshot,
            add=lambda peer, sock: self._new_connection(peer, sock, connecting=False),
            opened=self._opened, close=self._close)

        self._selector: selectors.BaseSelector | None = None
        self._listener: Socket | None = None
        self._accept_resume_at: float | None = None   # listener unregistered until then
        self._wake_r = self._wake_w = None
        self._net_thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self._started = False

    # ======================================================================
    # public API (any thread)
    # ======================================================================
    def start(self) -> None:
        """Bind (when listening), then start the network thread."""
        if self._started:
            return
        if self.sink is None:
            raise RuntimeError("ConnectionManager.start(): no message sink attached")
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = _stdlib_socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.listen_host is not None:
            try:
                self._listener = Socket.listen(self.listen_host, self.listen_port)
            except OSError:
                self._selector.close()
                self._wake_r.close()
                self._wake_w.close()
                raise
            self.listen_port = self._listener.local_port()
            self._selector.register(self._listener.sock, selectors.EVENT_READ, "listen")
            logger.info(f"[P2P] Listening on {self.listen_host}:{self.listen_port}")
        self._started = True
        self._net_thread = threading.Thread(target=self._network_loop, name="p2p-net", daemon=True)
        self._net_thread.start()

    def stop(self) -> None:
        """Close every socket and join the network thread (well under a second when idle).
        C++: ``Cleanup``."""
        if not self._started or self.stopping.is_set():
            return
        self.stopping.set()
        self._wake()
        if self._net_thread is not None:
            self._net_thread.join(2.0)
        for s in (self._wake_r, self._wake_w):
            s.close()
        if self._selector is not None:
            self._selector.close()

    def connect(self, host: str, port: int) -> int | None:
        """Start an outbound connection (``ConnectToPeer``); the id is returned at
        once, the TCP connect and the handshake finish on the network thread.

        ``host`` must be a dotted IPv4 address or ``localhost``; host names are
        resolved by the caller (:func:`dilithion.net.dns.resolve`).
        """
        if host == "localhost":
            host = "127.0.0.1"
        if not self._started or self.stopping.is_set():
            logger.warning(f"[P2P] Not connecting to {host}:{port}: the network is not running")
            return None
        if not is_ipv4(host) or not 0 < int(port) < 65536:
            logger.warning(f"[P2P] Not connecting to {host}:{port}: not an IPv4 address and port")
            return None
        if self.peer_manager.is_banned(host):
            logger.warning(f"[P2P] Not connecting to {host}:{port}: host is banned")
            return None
        peer = self.peer_manager.add_peer(host, int(port), inbound=False,
                                          state=State.STATE_CONNECTING)
        if peer is None:
            logger.warning(f"[P2P] Not connecting to {host}:{port}: connection limit reached")
            return None
        try:
            sock = Socket.connect_nonblocking(host, int(port))
        except OSError as e:
            self.peer_manager.remove_peer(peer.id)
            logger.warning(f"[P2P] Failed to connect to {host}:{port}: {e}")
            self.metrics.socket_errors.inc()
            return None
        conn = self._new_connection(peer, sock, connecting=True)
        self._post(lambda: self._update_interest(conn))
        return peer.id

    def disconnect(self, peer_id: int, reason: str) -> None:
        """Close the peer's connection (``DisconnectPeer``; asynchronously, on the network thread)."""
        self._post(lambda: self._close_id(peer_id, reason, "requested"))

    def send_message(self, peer_id: int, msg: Message | NetMessage,
                     on_written: Callable[[], None] | None = None) -> bool:
        """Queue one whole framed message for the peer; never blocks.

        False when the peer is unknown or closing, or when its queue is over
        the byte cap (backpressure: the caller decides whether to retry).
        ``on_written`` runs on the network thread when the message has left
        the send queue (the propagation record's "written" times).
        """
        conn = self._conns.get(peer_id)
        if conn is None or conn.closed or conn.connecting:
            return False
        if not self.sender.enqueue(conn, msg, on_written):
            return False
        self._request_flush(conn)
        return True

    def resume_reading(self, conn: Connection) -> None:
        """The handler worked the connection's backlog down: read its socket again."""
        self._post(lambda: self.receiver.resume(conn))

    def connection(self, peer_id: int) -> Connection | None:
        """The open connection of ``peer_id``, or None."""
        return self._conns.get(peer_id)

    def queued_bytes(self, peer_id: int) -> int:
        conn = self._conns.get(peer_id)
        return conn.sendq.queued_bytes() if conn is not None else 0

    def send_paused(self, peer_id: int) -> bool:
        """Core's ``fPauseSend``, plus the node-wide cap: True while the peer's queue
        holds more than ``max_send_buffer`` or all peers' queues reach ``max_send_total``
        (block and transaction service waits; small messages still go out)."""
        return (self.queued_bytes(peer_id) > self.config.max_send_buffer
                or self.send_buffer.spent())

    def misbehaving(self, peer_id: int, howmuch: int, reason: str, *, quiet: bool = False) -> None:
        """Score bad input (:meth:`PeerManager.misbehaving
        <dilithion.net.peers.PeerManager.misbehaving>`, which logs and counts it):
        at ``BAN_THRESHOLD`` the host is discouraged and here all its connections
        are closed; score 0 only logs.  Any thread."""
        peer = self.peer_manager.misbehaving(peer_id, howmuch, reason, quiet=quiet)
        if peer is not None:
            host = peer.host
            self.disconnect_hosts(lambda h: h == host, f"discouraged: {reason}")

    def disconnect_hosts(self, match: Callable[[str], bool], reason: str) -> None:
        """Close every connection whose host ``match``es (a ban or discouragement
        closes all of them, not just the offending one).  Any thread; at once on the
        network thread, so a flooding connection reads nothing more."""
        def op() -> None:
            for conn in self._snapshot():
                if not conn.closed and match(conn.peer.host):
                    self._close(conn, reason, "misbehaviour")
        op() if threading.current_thread() is self._net_thread else self._post(op)

    def peer_info(self) -> list[dict]:
        """One dict per connected peer, ascending id (RPC ``getpeerinfo``); C++
        ``CPeerManager::GetStats`` and its ``Stats``."""
        out = []
        for p in self.peer_manager.get_all_peers():
            if p.state == State.STATE_DISCONNECTED:
                continue
            out.append({
                "id": p.id, "addr": p.address(), "inbound": p.inbound, "version": p.version,
                "subver": p.user_agent.decode("ascii", "replace"), "startingheight": p.start_height,
                "services": p.services, "relay": p.relay,
                "bytessent": p.bytes_sent, "bytesrecv": p.bytes_recv,
                "conntime": int(p.connect_time), "lastsend": int(p.last_send),
                "lastrecv": int(p.last_recv), "banscore": p.misbehavior_score,
                "pingtime": p.ping_time, "queued_bytes": self.queued_bytes(p.id),
                "handshake": p.is_handshake_complete(), "state": int(p.state),
            })
        return out

    def connected_count(self) -> int:
        return len(self.peer_manager.get_connected_peers())

    def wait_for_handshake(self, peer_id: int, timeout: float) -> bool:
        """Block until the peer completes the handshake (True) or is gone / time runs out."""
        return self.peer_manager.wait_for_handshake(peer_id, timeout, self.stopping)

    # ======================================================================
    # cross-thread plumbing
    # ======================================================================
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already has unread wake bytes, or closing

    def _post(self, op: Callable[[], None]) -> None:
        with self._ops_lock:
            self._ops.append(op)
        if threading.current_thread() is not self._net_thread:
            self._wake()

    def _request_flush(self, conn: Connection) -> None:
        with self._ops_lock:
            if conn.peer.id in self._flush_ids:
                return
            self._flush_ids.add(conn.peer.id)
        if threading.current_thread() is not self._net_thread:
            self._wake()

    def _deliver(self, conn: Connection, msg: NetMessage) -> None:
        """Hand one framed message to the message-handler thread (the receive
        path's ``deliver``): delivery observers first, then ``conn.backlog``;
        reads pause when the backlog is full."""
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

    # ======================================================================
    # network thread
    # ======================================================================
    def _tick(self) -> float:
        cfg = self.config
        timers = (self.send_timeout, cfg.ping_interval, cfg.ping_timeout, cfg.inactivity_timeout,
                  cfg.handshake_timeout, cfg.connect_timeout)
        return max(0.01, min(0.25, min(timers) / 10))

    def _network_loop(self) -> None:
        tick = self._tick()
        next_maintenance = time.monotonic() + tick
        try:
            while not self.stopping.is_set():
                self.receiver.new_pass()
                # Bytes read but not framed yet: no sleeping until they are.
                for key, mask in self._selector.select(0 if self.receiver.has_unframed() else tick):
                    tag = key.data
                    if tag == "wake":
                        self._drain_wake()
                    elif tag == "listen":
                        self._accept_all()
                    elif not tag.closed:
                        self._guarded(tag, self._service, tag, mask)
                for conn in self.receiver.leftovers():
                    self._guarded(conn, self.receiver.frame, conn)
                self._run_ops()
                now = time.monotonic()
                if self._accept_resume_at is not None and now >= self._accept_resume_at:
                    self._accept_resume_at = None
                    self._selector.register(self._listener.sock, selectors.EVENT_READ, "listen")
                if now >= next_maintenance:
                    self._maintenance(now)
                    next_maintenance = now + tick
        except Exception as exc:
            logger.exception("[P2P] Network thread failed")
            if not self.stopping.is_set() and self._on_fatal is not None:
                # Without this thread the node is deaf and mute: stop it (exit 1) so a
                # supervisor restarts it, rather than run on as if nothing happened.
                self._on_fatal(f"P2P network thread failed: {exc!r}")
        finally:
            for conn in self._snapshot():
                self._close(conn, "shutdown", "shutdown")
            if self._listener is not None:
                self._listener.close()

    def _snapshot(self) -> list[Connection]:
        with self._cs_conns:
            return list(self._conns.values())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_ops(self) -> None:
        with self._ops_lock:
            ops, self._ops = self._ops, deque()
            flush_ids, self._flush_ids = self._flush_ids, set()
        for op in ops:
            self._guarded(None, op)
        for peer_id in flush_ids:
            conn = self._conns.get(peer_id)
            if conn is not None and not conn.closed and not conn.connecting:
                self._guarded(conn, self.sender.flush, conn)

    def _guarded(self, conn: Connection | None, fn: Callable, *args) -> None:
        """Run one unit of network-thread work; a bug in it costs at most that
        connection, never the thread and the other peers."""
        try:
            fn(*args)
        except Exception:
            logger.exception("[P2P] Internal error on the network thread"
                             + (f" (peer {conn.peer.id})" if conn is not None else ""))
            if conn is not None and not conn.closed:
                self._close(conn, "internal error", "error")

    def _new_connection(self, peer: Peer, sock: Socket, connecting: bool) -> Connection:
        cfg = self.config
        conn = Connection(peer, sock, FrameReader(self.magic, cfg.recv_buffer_cap - MESSAGE_HEADER_SIZE),
                          SendQueue(cfg.send_queue_cap, self.send_buffer), TokenBucket(cfg.msg_rate, cfg.msg_burst),
                          InboundBacklog(cfg.handler_backlog_msgs, cfg.handler_backlog_bytes,
                                         self.receive_buffer),
                          connecting)
        with self._cs_conns:
            self._conns[peer.id] = conn
        return conn

    def _update_interest(self, conn: Connection) -> None:
        if conn.closed:
            return
        if conn.connecting:
            mask = selectors.EVENT_WRITE
        else:
            mask = 0 if conn.backlog.paused or conn.budget_paused else selectors.EVENT_READ
            if conn.sendq:
                mask |= selectors.EVENT_WRITE
        if mask == conn.mask:
            return
        if conn.mask == 0:
            self._selector.register(conn.sock.sock, mask, conn)
        elif mask == 0:
            self._selector.unregister(conn.sock.sock)
        else:
            self._selector.modify(conn.sock.sock, mask, conn)
        conn.mask = mask

    def _accept_all(self) -> None:
        """Accept every pending inbound connection (``AcceptConnection``,
        :class:`~dilithion.net.net_accept.InboundAcceptor`); out of descriptors,
        the listener rests for ``ACCEPT_RETRY_S``."""
        if not self.acceptor.accept_all(self._listener):
            self._selector.unregister(self._listener.sock)
            self._accept_resume_at = time.monotonic() + ACCEPT_RETRY_S

    def _opened(self, conn: Connection) -> None:
        """A connection is up (accepted or connected): arm the selector, tell the processor."""
        self._update_interest(conn)
        self.sink.connection_opened(conn)

    def _service(self, conn: Connection, mask: int) -> None:
        if conn.connecting:
            if mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                self._finish_connect(conn)
            return
        if mask & selectors.EVENT_READ:
            self.receiver.read(conn)
        if mask & selectors.EVENT_WRITE and not conn.closed:
            self.sender.flush(conn)

    def _finish_connect(self, conn: Connection) -> None:
        err = conn.sock.finish_connect()
        peer = conn.peer
        if err:
            self.metrics.socket_errors.inc()
            self._close(conn, f"connect failed: {os.strerror(err)}", "closed")
            return
        conn.connecting = False
        conn.opened = conn.last_recv_mono = time.monotonic()
        peer.connect_time = time.time()
        self.peer_manager.transition(peer, (State.STATE_CONNECTING,), State.STATE_CONNECTED)
        logger.bind(**peer.log_fields()).info(
            f"[P2P] Connected to {peer.address()} (peer_id={peer.id})")
        self._opened(conn)

    def _maintenance(self, now: float) -> None:
        """Timers and pings of every connection (``PeriodicMaintenance``,
        ``SendPingMessage``); resumes reads paused for the receive budget."""
        has_room = self.receive_buffer.free() > 0
        for conn in self._snapshot():
            self.receiver.resume_if_room(conn, has_room)
            if not conn.closed:
                self._guarded(conn, self.timers.run, conn, now)
        self.metrics.receive_buffer_bytes.set(self.receive_buffer.used())

    def _close_id(self, peer_id: int, reason: str, category: str) -> None:
        conn = self._conns.get(peer_id)
        if conn is not None:
            self._close(conn, reason, category)

    def _close(self, conn: Connection, reason: str, category: str) -> None:
        """Tear down one connection: unregister, close the socket (``net D-20``),
        drop it from the peer table, and tell the message processor."""
        if conn.closed:
            return
        conn.closed = True
        peer = conn.peer
        # counted first, so an observer of the closed socket sees it
        self.metrics.peer_disconnections.labels(reason=category).inc()
        if conn.mask:
            try:
                self._selector.unregister(conn.sock.sock)
            except (KeyError, ValueError):
                pass
            conn.mask = 0
        with self._cs_conns:
            self._conns.pop(peer.id, None)
        self.receiver.forget(conn)
        self.receive_buffer.add(-conn.charged)
        conn.charged = 0
        self.peer_manager.remove_peer(peer.id)
        conn.sock.close()
        conn.sendq.clear()
        logger.bind(**peer.log_fields()).info(
            f"[P2P] Peer {peer.id} ({peer.address()}) disconnected: {reason}")
        self.metrics.connected_peers.set(len(self.peer_manager.handshake_complete_peers()))
        self.sink.connection_closed(conn, reason)
