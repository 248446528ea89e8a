"""The bounded HTTP layer under the JSON-RPC server, built on ``waitress``.

``waitress`` gives one asyncore accept/IO loop (idle connections cost a
descriptor, not a thread), a fixed pool of worker threads, a connection cap
(``connection_limit``: above it the listener is simply not polled, so extra
clients wait in the kernel backlog) and an idle limit (``channel_timeout``).
This module adds what the node needs on top (issue #11):

* the connection cap evicts: a new connection over ``max_connections``
  closes the one idle longest (no request in progress), so clients holding
  connections open cannot keep the operator out; only when every connection
  has a request queued or running does the listener pause (waitress);
* a bounded work queue: a complete request that finds ``work_queue`` requests
  already waiting is answered ``503`` at once (Core ``-rpcworkqueue``);
* a whole-request deadline: a request whose headers and body are not all in
  within ``request_timeout`` seconds of its first byte is dropped (a client
  trickling a byte every few seconds no longer lives forever);
* descriptor exhaustion (``EMFILE``/``ENFILE``) frees the descriptor of the
  longest-idle connection, or with none pauses accepting for a moment, instead
  of spinning on a listener that stays readable;
* waitress's own refusals (malformed request, oversized headers or body) as
  JSON bodies like the rest of the server's errors, and a short drain of the
  unread body after a ``413`` so the kernel's reset does not destroy it.

C++: replaces ``ServerThread``/``WorkerThread`` of ``CRPCServer``.
"""
from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

__all__ = ["HTTPLimits", "BoundedWSGIServer", "make_http_server", "QUEUE_FULL_ERROR"]

QUEUE_FULL_ERROR = "Work queue depth exceeded"
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE = 0.5                     # seconds without accepting after EMFILE
DRAIN_SECONDS = 2.0                    # reading an unwanted body after a 413


@dataclass
class HTTPLimits:
    """The resource bounds of the RPC HTTP server (the ``--rpc*`` flags)."""

    threads: int = 4                   # Core: 16 since v25; the GIL makes more useless here
    work_queue: int = 64               # Core -rpcworkqueue default (v25+)
    max_connections: int = 128
    request_timeout: float = 30.0      # whole request: first byte to last body byte
    idle_timeout: float = 30.0         # keep-alive connection without a request
    max_request_bytes: int = 1024 * 1024
    max_header_bytes: int = 64 * 1024


def _json_error_body(code: int, reason: str, max_request_bytes: int) -> bytes:
    if code == 413:
        limit = max_request_bytes
        size = f"{limit // (1024 * 1024)}MB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
        return json.dumps({"error": f"Request too large (max {size})", "code": -32700},
                          separators=(",", ":")).encode()
    return json.dumps({"error": reason}, separators=(",", ":")).encode()


class _JSONErrorTask(ErrorTask):
    """waitress's refusal of a request it could not parse, with a JSON body."""

    def execute(self) -> None:
        err = self.request.error
        server = self.channel.server
        body = _json_error_body(err.code, f"{err.reason}: {err.body}" if err.body else err.reason,
                                server.limits.max_request_bytes)
        self.status = f"{err.code} {err.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        if err.code == 413:
            self.channel.drain_until = time.monotonic() + DRAIN_SECONDS
        self.write(body)
        server.on_refused(err.code)


class _RPCTask(WSGITask):
    """A request for the application: ``Connection: close`` unless the client asked
    for keep-alive (the C++ clients read the reply until EOF)."""

    def build_response_header(self) -> bytes:
        if self.request.headers.get("CONNECTION", "").lower() != "keep-alive":
            self.set_close_on_finish()
        return super().build_response_header()


class _Channel(HTTPChannel):
    """One client connection: adds the request start time and the post-413 drain.

    Fields are written by the IO loop thread only, except ``drain_until``
    (set once by the worker that answers 413, read by the loop).
    """

    task_class = _RPCTask
    error_task_class = _JSONErrorTask
    request_started = 0.0
    drain_until = 0.0
    draining = False

    def received(self, data: bytes) -> bool:
        before = self.request
        result = super().received(data)
        if self.request is not None and self.request is not before:
            self.request_started = time.monotonic()
        return result

    def readable(self) -> bool:
        return True if self.draining else super().readable()

    def writable(self) -> bool:
        if self.draining:
            return time.monotonic() >= self.drain_until      # then handle_write closes
        return super().writable()

    def handle_write(self) -> None:
        if self.draining:
            self.handle_close()
            return
        super().handle_write()

    def handle_read(self) -> None:
        if not self.draining:
            super().handle_read()
            return
        try:
            data = self.socket.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.handle_close()

    def handle_close(self) -> None:
        if (not self.draining and self.connected and self.drain_until
                and time.monotonic() < self.drain_until and not self.total_outbufs_len):
            try:
                self.socket.shutdown(socket.SHUT_WR)           # the client sees EOF after the 413
                self.draining = True
                self.will_close = self.close_when_flushed = False
                return
            except OSError:
                pass
        self.draining = False
        super().handle_close()


class _BoundedDispatcher(ThreadedTaskDispatcher):
    """waitress's worker pool with a bounded queue (C++: the ``WorkerThread`` pool).

    Owner: the server.  Lock: waitress's ``self.lock`` guards ``queue``.  A
    task (a connection with a complete request) that finds ``max_queue``
    tasks waiting is answered 503 on the IO thread and the connection closed.
    """

    def __init__(self, max_queue: int, on_reject: Callable[[], None]) -> None:
        super().__init__()
        self.max_queue = max_queue
        self._on_reject = on_reject

    def add_task(self, task) -> None:
        with self.lock:
            full = len(self.queue) >= self.max_queue
            if not full:
                self.queue.append(task)
                self.queue_cv.notify()
        if full:
            self._reject(task)

    def _reject(self, channel) -> None:
        """Answer 503 (Core: ``HTTP_SERVICE_UNAVAILABLE``) and close.

        Runs where ``add_task`` was called, with the channel's ``requests_lock``
        already held by the caller, so it only touches the request list and the
        output buffer (which has its own lock).
        """
        body = json.dumps({"error": QUEUE_FULL_ERROR}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
        for request in channel.requests:
            request.close()
        channel.requests = []
        channel.close_when_flushed = True
        try:
            channel.write_soon(head.encode() + body)
        except Exception:  # noqa: BLE001 - the client went away: nothing to answer
            channel.will_close = True
        channel.server.pull_trigger()
        self._on_reject()


class BoundedWSGIServer(TcpWSGIServer):
    """The listening socket, the IO loop and the worker pool of the RPC server.

    Owner: :class:`dilithion.rpc.server.RPCServer`.  The loop thread alone
    touches the socket map and channels (waitress's model); ``stop`` only sets
    ``_stopping`` and pulls the trigger, and the loop thread shuts down.
    """

    channel_class = _Channel

    def __init__(self, app, limits: HTTPLimits, adj: Adjustments,
                 on_refused: Callable[[int], None] = lambda code: None) -> None:
        self.limits = limits
        self.on_refused = on_refused
        self._stopping = False
        self._accept_paused_until = 0.0
        dispatcher = _BoundedDispatcher(limits.work_queue, lambda: on_refused(503))
        map_: dict = {}
        try:
            super().__init__(app, map=map_, adj=adj, dispatcher=dispatcher)
        except BaseException:
            self.asyncore.close_all(map_)              # the trigger and the unbound socket
            raise
        dispatcher.set_thread_count(limits.threads)

    # -- accepting ------------------------------------------------------------------------
    def readable(self) -> bool:
        listening = super().readable()                 # also runs maintenance
        if self._stopping:
            return False
        return listening and time.monotonic() >= self._accept_paused_until

    def handle_accept(self) -> None:
        try:
            pair = self.accept()
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                # Free a descriptor held by an idle RPC client and retry at once; with
                # none to free, stop polling the listener for a moment (no spinning).
                if self._evict_one():
                    return
                if time.monotonic() >= self._accept_paused_until + 10 * ACCEPT_PAUSE:
                    logger.warning(f"[RPC] accept failed ({exc.strerror}): pausing accepts")
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
            else:
                logger.debug(f"[RPC] accept failed: {exc}")
            return
        if pair is None:
            return
        conn, addr = pair
        try:
            self.set_socket_options(conn)
        except OSError:
            conn.close()
            return
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)
        if len(self.active_channels) > self.limits.max_connections:
            self._evict_one()

    def _evict_one(self) -> bool:
        """Over the cap (or out of descriptors): close the connection that has
        waited longest without a complete request (idle first, then the slowest
        sender), never one whose request is queued or running; False if there
        is none.  New clients are thus always accepted, and the operator's
        ``dilithion-cli`` (whole request in one write) is never the one evicted.
        """
        idle = [ch for ch in self.active_channels.values()
                if not ch.requests and not ch.draining and not ch.total_outbufs_len]
        if not idle:
            return False                   # all busy: waitress stops accepting at the cap
        victim = min(idle, key=lambda ch: ch.last_activity)
        victim.handle_close()
        self.on_refused(0)
        return True

    # -- timers -----------------------------------------------------------------------------
    def maintenance(self, now: float) -> None:
        """Idle keep-alive connections (waitress) and the whole-request deadline."""
        super().maintenance(now)
        deadline = time.monotonic() - self.limits.request_timeout
        for channel in list(self.active_channels.values()):
            request = channel.request
            if (request is not None and not request.completed and not channel.draining
                    and channel.request_started < deadline):
                logger.debug(f"[RPC] {channel.addr[0] if channel.addr else '?'}: request not "
                             f"complete within {self.limits.request_timeout:g} s, dropped")
                channel.will_close = True
                self.on_refused(408)

    # -- life cycle ---------------------------------------------------------------------------
    def serve(self) -> None:
        """The IO loop (run on the server thread) until :meth:`request_stop`.

        C++: ``ServerThread`` (accept loop), here also reading every connection.
        """
        poll = self.adj.asyncore_loop_timeout
        while not self._stopping:
            self.asyncore.loop(timeout=poll, map=self._map, use_poll=True, count=1)
        # Finish the requests being served, flush their answers, then close everything.
        self.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and any(
                getattr(ch, "total_outbufs_len", 0) for ch in list(self.active_channels.values())):
            self.asyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
        self.asyncore.close_all(self._map)

    def request_stop(self) -> None:
        self._stopping = True
        self.pull_trigger()

    def open_connections(self) -> int:
        return len(self.active_channels)


def make_http_server(app, host: str, port: int, limits: HTTPLimits,
                     on_refused: Callable[[int], None] = lambda code: None) -> BoundedWSGIServer:
    """Bind ``host:port`` (raises ``OSError``) and return the server, not yet serving."""
    adj = Adjustments(
        host=host, port=port, ipv4=":" not in host, ipv6=":" in host,
        threads=limits.threads,
        connection_limit=limits.max_connections + 3,     # + listener, trigger, one to evict
        asyncore_use_poll=True,                          # select() fails past descriptor 1023
        max_request_body_size=limits.max_request_bytes + 1,   # waitress: >= is too large
        max_request_header_size=limits.max_header_bytes,
        ident="DilithionRPC", expose_tracebacks=False, log_socket_errors=False,
        backlog=128, channel_request_lookahead=0,
    )
    # Adjustments casts these to int (0 would make the loop spin): set them as floats.
    tick = max(0.05, min(1.0, limits.request_timeout / 4, limits.idle_timeout / 4))
    adj.channel_timeout = float(limits.idle_timeout)
    adj.cleanup_interval = tick
    adj.asyncore_loop_timeout = tick
    return BoundedWSGIServer(app, limits, adj, on_refused)
