"""Connections, the network thread and the message-handler thread.

The C++ node (``net`` 1.6, 1.7, 4.11) reads at most one message per peer per
50 ms sweep with single ``recv`` calls, sends with a single ``send`` that may
leave half a message on the wire, never notices a closed socket and never
closes one.  This module replaces that with two threads per node:

* the **network thread** runs one ``selectors`` loop over the listening
  socket, every peer socket (all non-blocking) and a wake-up socketpair.  It
  accepts, finishes outbound connects, reads and frames bytes, writes queued
  messages, and enforces every timer (connect, handshake, send deadline,
  keepalive, inactivity).  It is the only thread that touches a socket.
* the **message-handler thread** takes complete messages in arrival order,
  decodes them, runs the handshake (``version``/``verack``/``ping``/``pong``)
  and dispatches everything else to the handlers that the node logic
  registered.  Slow handlers (RandomX, database writes) therefore never stall
  the sockets of other peers.

Other threads only enqueue: :meth:`ConnectionManager.send_message` appends a
whole framed message to the peer's byte-bounded queue and wakes the selector.
"""
from __future__ import annotations

import errno
import os
import queue
import secrets
import selectors
import socket as _stdlib_socket
import threading
import time
from collections import deque
from typing import Callable

from loguru import logger

from dilithion.net.peers import Peer, PeerManager
from dilithion.net.protocol import (USER_AGENT, Message, MsgPing, MsgPong, MsgVerack, MsgVersion,
                                    decode_payload)
from dilithion.net.serialize import (MAX_MESSAGE_SIZE, MESSAGE_HEADER_SIZE, NetMessage,
                                     SerializationError)
from dilithion.net.socket import FrameError, FrameReader, SendQueue, Socket, TokenBucket, is_ipv4

__all__ = ["ConnectionManager", "Connection"]

State = Peer.State

#: Scores for bad input found above the framing layer (framing scores live in FrameReader).
SCORE_UNDECODABLE = 20
SCORE_HANDLER_REJECTED = 10
SCORE_DUPLICATE_VERSION = 10
SCORE_TRUNCATED = 20
SCORE_FLOOD = 1
#: Pause before accepting again after the process ran out of descriptors: the
#: pending connection keeps the listener readable, so retrying at once would spin.
ACCEPT_RETRY_S = 0.5
#: How long stop() waits for a handler that is inside a chain or database call.
HANDLER_STOP_TIMEOUT_S = 30.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _send_timeout_from(ctx, explicit_ms: int | None) -> float:
    """Seconds: constructor argument, else ``DIL_SEND_TIMEOUT`` (ms), else chain params."""
    if explicit_ms is not None:
        return explicit_ms / 1000.0
    env = os.environ.get("DIL_SEND_TIMEOUT")
    if env:
        try:
            ms = int(env)
        except ValueError:
            ms = 0
        if ms > 0:
            return ms / 1000.0
        logger.warning(f"[P2P] Ignoring DIL_SEND_TIMEOUT={env!r}: not a positive number of ms")
    return ctx.chain_params.send_timeout_ms / 1000.0


class Connection:
    """Transport state of one peer.

    Owned by the network thread, except: ``sendq`` (its own lock, any thread
    pushes) and ``pending_msgs``/``pending_bytes`` (messages handed to the
    handler thread and not yet processed; guarded by
    ``ConnectionManager._pending_lock``).  ``closed`` is set once by the
    network thread; other threads only read it.
    """

    def __init__(self, peer: Peer, sock: Socket, reader: FrameReader, sendq: SendQueue,
                 bucket: TokenBucket, connecting: bool) -> None:
        self.peer = peer
        self.sock = sock
        self.reader = reader
        self.sendq = sendq
        self.bucket = bucket
        self.connecting = connecting
        now = time.monotonic()
        self.opened = now            # connect started / accepted / connected (monotonic)
        self.last_recv_mono = now
        self.last_send_mono = now
        self.mask = 0                # selector interest currently registered
        self.closed = False
        self.read_paused = False
        self.flood_logged = False
        self.pending_msgs = 0
        self.pending_bytes = 0
        self.local_nonce = secrets.randbits(64) or 1  # our version nonce on this connection
        self.ping_nonce: int | None = None
        self.ping_sent = 0.0


class ConnectionManager:
    """All peer connections of one node (``CConnectionManager``).

    Threads: the network thread (sockets, timers) and the message-handler
    thread (decoding, handshake, handlers); see the module docstring.
    Locks: ``_cs_conns`` guards the ``_conns`` dict, ``_ops_lock`` the queue of
    work posted to the network thread, ``_pending_lock`` the per-connection
    handler backlog counters, ``_handshake_cond`` wakes ``wait_for_handshake``.
    The peer table has its own lock (:class:`PeerManager`).
    """

    READ_CHUNK = 256 * 1024

    def __init__(self, ctx, listen_host: str | None = "127.0.0.1", listen_port: int = 0,
                 send_timeout_ms: int | None = None, max_peers: int = 125, max_outbound: int = 8,
                 recv_buffer_cap: int = MESSAGE_HEADER_SIZE + MAX_MESSAGE_SIZE,
                 send_queue_cap: int = 8 * 1024 * 1024, *, ping_interval: float = 60.0,
                 inactivity_timeout: float = 300.0, handshake_timeout: float = 60.0,
                 connect_timeout: float = 5.0, ban_time: float = PeerManager.DEFAULT_BAN_TIME,
                 msg_rate: float = 2000.0, msg_burst: float = 5000.0,
                 handler_backlog_msgs: int = 1000,
                 handler_backlog_bytes: int = 16 * 1024 * 1024) -> None:
        self.ctx = ctx
        self.magic = ctx.magic
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.send_timeout = _send_timeout_from(ctx, send_timeout_ms)
        self.recv_buffer_cap = recv_buffer_cap
        self.send_queue_cap = send_queue_cap
        self.ping_interval = ping_interval
        self.inactivity_timeout = inactivity_timeout
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.msg_rate = msg_rate
        self.msg_burst = msg_burst
        self.handler_backlog_msgs = handler_backlog_msgs
        self.handler_backlog_bytes = handler_backlog_bytes
        self.peer_manager = PeerManager(max_peers, max_outbound, ban_time)
        if getattr(ctx, "peer_manager", None) is None:
            ctx.peer_manager = self.peer_manager
        if getattr(ctx, "connman", None) is None:
            ctx.connman = self
        self._log_messages = os.environ.get("DIL_P2P_LOG") == "1"

        self._conns: dict[int, Connection] = {}
        self._cs_conns = threading.Lock()
        self._ops: deque[Callable[[], None]] = deque()
        self._flush_ids: set[int] = set()
        self._ops_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._handshake_cond = threading.Condition()
        self._local_nonces: set[int] = set()

        self._handlers: dict[str, list[Callable]] = {}
        self._handshake_listeners: list[Callable] = []
        self._disconnect_listeners: list[Callable] = []
        self._internal = {"version": self._on_version, "verack": self._on_verack,
                          "ping": self._on_ping, "pong": self._on_pong}

        self._selector: selectors.BaseSelector | None = None
        self._listener: Socket | None = None
        self._accept_resume_at: float | None = None   # listener unregistered until then
        self._wake_r = self._wake_w = None
        self._handler_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._net_thread: threading.Thread | None = None
        self._msg_thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._started = False

    # ======================================================================
    # public API (any thread)
    # ======================================================================
    def start(self) -> None:
        """Bind (when listening), then start the network and message-handler threads."""
        if self._started:
            return
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
        self._msg_thread = threading.Thread(target=self._handler_loop, name="p2p-msg", daemon=True)
        self._net_thread.start()
        self._msg_thread.start()

    def stop(self) -> None:
        """Close every socket and join both threads (well under a second when idle)."""
        if not self._started or self._stop_event.is_set():
            return
        self._stop_event.set()
        self._wake()
        if self._net_thread is not None:
            self._net_thread.join(2.0)
        self._handler_queue.put(None)
        if self._msg_thread is not None:
            # The handler may be inside a chain or database call: the caller closes the
            # databases next, so wait for it to leave (queued messages are skipped).
            self._msg_thread.join(HANDLER_STOP_TIMEOUT_S)
            if self._msg_thread.is_alive():
                logger.error(f"[P2P] Message handler still busy after {HANDLER_STOP_TIMEOUT_S:.0f} s")
        for s in (self._wake_r, self._wake_w):
            s.close()
        if self._selector is not None:
            self._selector.close()
        with self._handshake_cond:
            self._handshake_cond.notify_all()

    def connect(self, host: str, port: int) -> int | None:
        """Start an outbound connection; the id is returned at once, the TCP
        connect and the handshake finish on the network thread.

        ``host`` must be a dotted IPv4 address or ``localhost``; host names are
        resolved by the caller (:func:`dilithion.net.dns.resolve`).
        """
        if host == "localhost":
            host = "127.0.0.1"
        if not self._started or self._stop_event.is_set():
            logger.warning(f"[P2P] Not connecting to {host}:{port}: the network is not running")
            return None
        if not is_ipv4(host) or not 0 < int(port) < 65536:
            logger.warning(f"[P2P] Not connecting to {host}:{port}: not an IPv4 address and port")
            return None
        if self.peer_manager.is_banned(host):
            logger.warning(f"[P2P] Not connecting to {host}:{port}: host is banned")
            return None
        peer = self.peer_manager.add_peer(host, int(port), inbound=False)
        if peer is None:
            logger.warning(f"[P2P] Not connecting to {host}:{port}: connection limit reached")
            return None
        try:
            sock = Socket.connect_nonblocking(host, int(port))
        except OSError as e:
            self.peer_manager.remove_peer(peer.id)
            logger.warning(f"[P2P] Failed to connect to {host}:{port}: {e}")
            self._metric("socket_errors")
            return None
        peer.state = State.STATE_CONNECTING
        conn = self._new_connection(peer, sock, connecting=True)
        self._post(lambda: self._update_interest(conn))
        return peer.id

    def disconnect(self, peer_id: int, reason: str) -> None:
        """Close the peer's connection (asynchronously, on the network thread)."""
        self._post(lambda: self._close_id(peer_id, reason, "requested"))

    def send_message(self, peer_id: int, msg: Message | NetMessage) -> bool:
        """Queue one whole framed message for the peer; never blocks.

        False when the peer is unknown or closing, or when its queue is over
        the byte cap (backpressure: the caller decides whether to retry).
        """
        conn = self._conns.get(peer_id)
        if conn is None or conn.closed or conn.connecting:
            return False
        if not self._enqueue(conn, msg):
            return False
        self._request_flush(conn)
        return True

    def queued_bytes(self, peer_id: int) -> int:
        conn = self._conns.get(peer_id)
        return conn.sendq.queued_bytes() if conn is not None else 0

    def register_handler(self, command: str, fn: Callable[[Peer, Message], None]) -> None:
        """``fn(peer, msg)`` on the message-handler thread for every decoded ``command``
        (after the handshake; ``version``/``verack``/``ping``/``pong`` also before it,
        after the built-in handling)."""
        self._handlers.setdefault(command, []).append(fn)

    def add_handshake_listener(self, fn: Callable[[Peer], None]) -> None:
        self._handshake_listeners.append(fn)

    def add_disconnect_listener(self, fn: Callable[[Peer, str], None]) -> None:
        self._disconnect_listeners.append(fn)

    def misbehaving(self, peer_id: int, howmuch: int, reason: str) -> None:
        """Score bad input; at ``BAN_THRESHOLD`` the host is banned and the peer closed.

        ``reason`` reads ``"<kind>: <detail>"``; ``<kind>`` labels the metric.
        """
        peer = self.peer_manager.get_peer(peer_id)
        if peer is None:
            return
        crossed = self.peer_manager.misbehaving(peer_id, howmuch)
        kind = reason.split(":", 1)[0].strip() or "other"
        logger.warning(f"[P2P] Misbehaving peer {peer_id} ({peer.address()}): {reason} "
                       f"(+{howmuch}, score {peer.misbehavior_score})")
        if self.ctx.metrics is not None:
            self.ctx.metrics.misbehaviour_events.labels(reason=kind).inc()
        if crossed:
            logger.warning(f"[P2P] Banning {peer.host} for {self.peer_manager.ban_time:g} s "
                           f"(peer {peer_id} reached score {peer.misbehavior_score})")
            self._post(lambda: self._close_id(peer_id, f"banned: {reason}", "misbehaviour"))

    def peer_info(self) -> list[dict]:
        """One dict per connected peer, ascending id (RPC ``getpeerinfo``)."""
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
        deadline = time.monotonic() + timeout
        with self._handshake_cond:
            while True:
                peer = self.peer_manager.get_peer(peer_id)
                if peer is None:
                    return False
                if peer.is_handshake_complete():
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._stop_event.is_set():
                    return False
                self._handshake_cond.wait(min(left, 0.1))

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

    def _enqueue(self, conn: Connection, msg: Message | NetMessage) -> bool:
        net_msg = msg if isinstance(msg, NetMessage) else msg.to_net_message(self.magic)
        data = net_msg.serialize()
        if not conn.sendq.push(data):
            logger.debug(f"[P2P] Send queue of peer {conn.peer.id} full "
                         f"({conn.sendq.queued_bytes()} bytes): {net_msg.command} refused")
            return False
        if self._log_messages:
            logger.debug(f"[P2P] send {net_msg.command} ({len(net_msg.payload)} bytes) "
                         f"peer={conn.peer.id}")
        return True

    def _metric(self, name: str, amount: float = 1) -> None:
        m = self.ctx.metrics
        if m is not None:
            getattr(m, name).inc(amount)

    # ======================================================================
    # network thread
    # ======================================================================
    def _tick(self) -> float:
        timers = (self.send_timeout, self.ping_interval, self.inactivity_timeout,
                  self.handshake_timeout, self.connect_timeout)
        return max(0.01, min(0.25, min(timers) / 10))

    def _network_loop(self) -> None:
        tick = self._tick()
        next_maintenance = time.monotonic() + tick
        try:
            while not self._stop_event.is_set():
                for key, mask in self._selector.select(tick):
                    tag = key.data
                    if tag == "wake":
                        self._drain_wake()
                    elif tag == "listen":
                        self._accept_all()
                    elif not tag.closed:
                        self._guarded(tag, self._service, tag, mask)
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
            if not self._stop_event.is_set():
                # Without this thread the node is deaf and mute: stop it (exit 1) so a
                # supervisor restarts it, rather than run on as if nothing happened.
                self.ctx.fatal_error(f"P2P network thread failed: {exc!r}")
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
                self._guarded(conn, self._flush, conn)

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
        conn = Connection(peer, sock, FrameReader(self.magic, self.recv_buffer_cap - MESSAGE_HEADER_SIZE),
                          SendQueue(self.send_queue_cap), TokenBucket(self.msg_rate, self.msg_burst),
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
            mask = 0 if conn.read_paused else selectors.EVENT_READ
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
        while True:
            try:
                accepted = self._listener.accept()
            except OSError as e:
                logger.warning(f"[P2P] Failed to accept peer connection: {e}")
                self._metric("socket_errors")
                if e.errno in _OUT_OF_RESOURCES:
                    self._selector.unregister(self._listener.sock)
                    self._accept_resume_at = time.monotonic() + ACCEPT_RETRY_S
                return
            if accepted is None:
                return
            sock, host, port = accepted
            if self.peer_manager.is_banned(host):
                logger.info(f"[P2P] Refused connection from banned host {host}:{port}")
                sock.close()
                continue
            peer = self.peer_manager.add_peer(host, port, inbound=True)
            if peer is None:
                logger.info(f"[P2P] Failed to accept peer connection from {host}:{port}: "
                            f"{self.peer_manager.max_peers} connections already")
                sock.close()
                continue
            peer.state = State.STATE_CONNECTED
            conn = self._new_connection(peer, sock, connecting=False)
            logger.info(f"[P2P] New peer connected: {host}:{port}")
            logger.info(f"[P2P] Peer accepted and added to connection pool (peer_id={peer.id})")
            self._update_interest(conn)
            self._handler_queue.put(("connected", conn))

    def _service(self, conn: Connection, mask: int) -> None:
        if conn.connecting:
            if mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                self._finish_connect(conn)
            return
        if mask & selectors.EVENT_READ:
            self._read(conn)
        if mask & selectors.EVENT_WRITE and not conn.closed:
            self._flush(conn)

    def _finish_connect(self, conn: Connection) -> None:
        err = conn.sock.finish_connect()
        peer = conn.peer
        if err:
            self._metric("socket_errors")
            self._close(conn, f"connect failed: {os.strerror(err)}", "closed")
            return
        conn.connecting = False
        conn.opened = conn.last_recv_mono = conn.last_send_mono = time.monotonic()
        peer.connect_time = time.time()
        self.peer_manager.transition(peer, (State.STATE_CONNECTING,), State.STATE_CONNECTED)
        logger.info(f"[P2P] Connected to {peer.address()} (peer_id={peer.id})")
        self._update_interest(conn)
        self._handler_queue.put(("connected", conn))

    def _read(self, conn: Connection) -> None:
        room = conn.reader.room()
        data = conn.sock.recv(min(self.READ_CHUNK, max(room, 1)))
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
        while not conn.closed:
            try:
                msg = conn.reader.next_message()
            except FrameError as e:
                self.misbehaving(conn.peer.id, e.score, f"{e.kind}: {e.reason}")
                if e.fatal:
                    self._close(conn, f"{e.kind}: stream cannot be resynchronised", "misbehaviour")
                    return
                continue
            if msg is None:
                break
            if not conn.bucket.try_take():
                self._on_flood(conn, msg)
                continue
            self._deliver(conn, msg)

    def _on_flood(self, conn: Connection, msg: NetMessage) -> None:
        detail = f"more than {self.msg_rate:g} messages/s (burst {self.msg_burst:g})"
        if not conn.flood_logged:
            conn.flood_logged = True
            self.misbehaving(conn.peer.id, SCORE_FLOOD, f"flood: {detail}; dropping {msg.command}")
            return
        crossed = self.peer_manager.misbehaving(conn.peer.id, SCORE_FLOOD)
        if crossed:
            logger.warning(f"[P2P] Banning {conn.peer.host} for {self.peer_manager.ban_time:g} s "
                           f"(peer {conn.peer.id} flood: {detail})")
            self._close(conn, f"banned: flood: {detail}", "misbehaviour")

    def _deliver(self, conn: Connection, msg: NetMessage) -> None:
        if self._log_messages:
            logger.debug(f"[P2P] recv {msg.command} ({len(msg.payload)} bytes) peer={conn.peer.id}")
        size = len(msg.payload) + MESSAGE_HEADER_SIZE
        with self._pending_lock:
            conn.pending_msgs += 1
            conn.pending_bytes += size
            over = (conn.pending_msgs >= self.handler_backlog_msgs
                    or conn.pending_bytes >= self.handler_backlog_bytes)
            # Set under the lock the handler thread checks, before the message is
            # queued: otherwise it could drain the backlog unaware of the pause.
            pause = over and not conn.read_paused
            if pause:
                conn.read_paused = True
        self._handler_queue.put(("msg", conn, msg))
        if pause:
            logger.debug(f"[P2P] Pausing reads from peer {conn.peer.id}: "
                         f"{conn.pending_msgs} messages unprocessed")
            self._update_interest(conn)

    def _resume_reading(self, conn: Connection) -> None:
        if conn.read_paused and not conn.closed:
            conn.read_paused = False
            conn.last_recv_mono = time.monotonic()  # our stall, not the peer's silence
            self._update_interest(conn)

    def _flush(self, conn: Connection) -> None:
        written, _ = conn.sendq.write_to(conn.sock)
        if written < 0:
            self._metric("socket_errors")
            self._close(conn, f"socket error: {conn.sock.get_last_error_string()}", "closed")
            return
        if written:
            conn.last_send_mono = time.monotonic()
            conn.peer.last_send = time.time()
            conn.peer.bytes_sent += written
            self._metric("bytes_sent", written)
        self._update_interest(conn)

    def _maintenance(self, now: float) -> None:
        for conn in self._snapshot():
            if not conn.closed:
                self._guarded(conn, self._maintain, conn, now)

    def _maintain(self, conn: Connection, now: float) -> None:
        """The timers of one connection (see the table in docs/P2P.md)."""
        peer = conn.peer
        if conn.connecting:
            if now - conn.opened > self.connect_timeout:
                self._close(conn, f"connect timeout ({self.connect_timeout:g} s)", "timeout")
            return
        if conn.sendq and now - conn.sendq.progress_time > self.send_timeout:
            logger.warning(f"[P2P] send timeout: peer {peer.id} ({peer.address()}) took no "
                           f"bytes for {self.send_timeout * 1000:.0f} ms with "
                           f"{conn.sendq.queued_bytes()} bytes queued")
            self._metric("send_timeout_errors")
            self._close(conn, "send timeout", "send_timeout")
            return
        if not peer.is_handshake_complete():
            if now - conn.opened > self.handshake_timeout:
                self._close(conn, f"handshake timeout ({self.handshake_timeout:g} s)", "timeout")
            return
        if not conn.read_paused and now - conn.last_recv_mono > self.inactivity_timeout:
            self._close(conn, f"inactivity timeout ({self.inactivity_timeout:g} s)", "timeout")
            return
        if not conn.sendq and now - conn.last_send_mono > self.ping_interval:
            conn.ping_nonce = secrets.randbits(64)
            conn.ping_sent = now
            if self._enqueue(conn, MsgPing(conn.ping_nonce)):
                self._flush(conn)

    def _close_id(self, peer_id: int, reason: str, category: str) -> None:
        conn = self._conns.get(peer_id)
        if conn is not None:
            self._close(conn, reason, category)

    def _close(self, conn: Connection, reason: str, category: str) -> None:
        """Tear down one connection: unregister, close the socket (``net D-20``),
        drop it from the peer table, and tell the handler thread."""
        if conn.closed:
            return
        conn.closed = True
        peer = conn.peer
        m = self.ctx.metrics
        if m is not None:  # counted first, so an observer of the closed socket sees it
            m.peer_disconnections.labels(reason=category).inc()
        if conn.mask:
            try:
                self._selector.unregister(conn.sock.sock)
            except (KeyError, ValueError):
                pass
            conn.mask = 0
        with self._cs_conns:
            self._conns.pop(peer.id, None)
        self._local_nonces.discard(conn.local_nonce)
        self.peer_manager.remove_peer(peer.id)
        conn.sock.close()
        conn.sendq.clear()
        logger.info(f"[P2P] Peer {peer.id} ({peer.address()}) disconnected: {reason}")
        if m is not None:
            m.connected_peers.set(len(self.peer_manager.handshake_complete_peers()))
        with self._handshake_cond:
            self._handshake_cond.notify_all()
        self._handler_queue.put(("closed", peer, reason))

    # ======================================================================
    # message-handler thread
    # ======================================================================
    def _handler_loop(self) -> None:
        while True:
            item = self._handler_queue.get()
            if item is None:
                return
            try:
                kind = item[0]
                if kind == "msg":
                    self._handle_message(item[1], item[2])
                elif kind == "connected":
                    self._send_version(item[1])
                elif kind == "closed":
                    self._notify_listeners(self._disconnect_listeners, item[1], item[2])
            except Exception:
                logger.exception("[P2P] Message handler failed")

    def _handle_message(self, conn: Connection, net_msg: NetMessage) -> None:
        try:
            if conn.closed or not conn.peer.is_connected() or self._stop_event.is_set():
                return
            self._dispatch(conn, net_msg)
        finally:
            size = len(net_msg.payload) + MESSAGE_HEADER_SIZE
            with self._pending_lock:
                conn.pending_msgs -= 1
                conn.pending_bytes -= size
                resume = (conn.read_paused and conn.pending_msgs <= self.handler_backlog_msgs // 2
                          and conn.pending_bytes <= self.handler_backlog_bytes // 2)
            if resume:
                self._post(lambda: self._resume_reading(conn))

    def _dispatch(self, conn: Connection, net_msg: NetMessage) -> None:
        peer, command = conn.peer, net_msg.command
        try:
            msg = decode_payload(command, net_msg.payload)
        except SerializationError as e:
            self.misbehaving(peer.id, SCORE_UNDECODABLE, f"undecodable {command}: {e}")
            return
        if msg is None:
            logger.debug(f"[P2P] Ignoring unknown command {command!r} from peer {peer.id}")
            return
        internal = self._internal.get(command)
        if internal is not None:
            internal(conn, msg)
        elif not peer.is_handshake_complete():
            logger.debug(f"[P2P] Ignoring {command} from peer {peer.id} before the handshake")
            return
        for fn in self._handlers.get(command, ()):
            if conn.closed:
                return
            try:
                fn(peer, msg)
            except (SerializationError, ValueError) as e:
                self.misbehaving(peer.id, SCORE_HANDLER_REJECTED, f"handler rejected: {command}: {e}")
            except Exception:
                logger.exception(f"[P2P] Handler for {command} from peer {peer.id} failed")

    def _notify_listeners(self, listeners: list[Callable], *args) -> None:
        for fn in listeners:
            try:
                fn(*args)
            except Exception:
                logger.exception(f"[P2P] Listener {fn!r} failed")

    def _start_height(self) -> int:
        chainstate = self.ctx.chainstate
        if chainstate is None:
            return 0
        try:
            return int(chainstate.height())
        except Exception:
            logger.exception("[P2P] Could not read the chain height for version")
            return 0

    def _send_version(self, conn: Connection) -> None:
        """Our one ``version``, before anything else on this connection (``net`` 7.1 item 3)."""
        if conn.closed:
            return
        peer = conn.peer
        self._local_nonces.add(conn.local_nonce)
        version = MsgVersion(timestamp=int(time.time()), nonce=conn.local_nonce,
                             user_agent=USER_AGENT, start_height=self._start_height(), relay=True)
        if self.send_message(peer.id, version):
            self.peer_manager.transition(peer, (State.STATE_CONNECTED,), State.STATE_VERSION_SENT)
            logger.info(f"[P2P] Sent version message to peer {peer.id}")
        else:
            logger.warning(f"[P2P] Failed to send version to peer {peer.id}")

    def _on_version(self, conn: Connection, msg: MsgVersion) -> None:
        peer = conn.peer
        if peer.version_received:
            # The C++ demotes the peer here (net D-11); we keep the handshake and score it.
            self.misbehaving(peer.id, SCORE_DUPLICATE_VERSION,
                             "duplicate version: version received twice")
            return
        if msg.nonce and msg.nonce in self._local_nonces:
            logger.warning(f"[P2P] Self-connection detected on peer {peer.id} "
                           f"({peer.address()}): disconnecting")
            self.disconnect(peer.id, "self-connection")
            return
        peer.version_received = True
        peer.version, peer.services, peer.nonce = msg.version, msg.services, msg.nonce
        peer.user_agent, peer.start_height, peer.relay = msg.user_agent, msg.start_height, msg.relay
        logger.info(f"[P2P] Handshake with peer {peer.id} "
                    f"({msg.user_agent.decode('ascii', 'replace')})")
        self.send_message(peer.id, MsgVerack())
        self._maybe_complete(conn)

    def _on_verack(self, conn: Connection, msg: MsgVerack) -> None:
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
        if self.ctx.metrics is not None:
            self.ctx.metrics.connected_peers.set(len(self.peer_manager.handshake_complete_peers()))
        with self._handshake_cond:
            self._handshake_cond.notify_all()
        self._notify_listeners(self._handshake_listeners, peer)

    def _on_ping(self, conn: Connection, msg: MsgPing) -> None:
        self.send_message(conn.peer.id, MsgPong(msg.nonce))

    def _on_pong(self, conn: Connection, msg: MsgPong) -> None:
        if conn.ping_nonce is not None and msg.nonce == conn.ping_nonce:
            conn.peer.ping_time = time.monotonic() - conn.ping_sent
            conn.ping_nonce = None
