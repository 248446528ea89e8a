"""JSON-RPC over HTTP for the node (``src/rpc/server.*``).

What changes from the C++ ``CRPCServer`` (``cli`` 3.1-3.6, defects ``cli 6.3``):

* HTTP is parsed by the standard library (``http.server``): ``Content-Length``
  is honoured, so the body may arrive in any number of segments and be larger
  than 4096 bytes (#27, #28); only POST carries a request.
* The body is parsed as JSON: standard ``params`` arrays/objects as well as
  the C++ ``[{...}]`` convention, batches, ids echoed as sent, error messages
  escaped, real -32700/-32600/-32602 codes (#29-#32).
* Authentication is always on: cookie file plus optional ``dilithion.conf``
  credentials (#34); the rate limit is configurable (#35); handlers run
  concurrently (#33); a thread per connection, so idle connections cannot
  starve the server (#38); ``--rpcbind`` may choose the address (#39).

One request per connection and ``Connection: close`` are kept from the C++.
"""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

from loguru import logger

from dilithion.rpc.auth import CONF_FILENAME, AuthResult, Authenticator, CookieFile, read_config
from dilithion.rpc.methods import (RPC_INTERNAL_ERROR, RPC_INVALID_PARAMS, RPC_INVALID_REQUEST,
                                   RPC_METHOD_NOT_FOUND, RPC_PARSE_ERROR, NodeRPC, RPCError,
                                   RPCMethod)
from dilithion.rpc.params import ParamsError, bind_params
from dilithion.rpc.ratelimiter import RateLimiter

__all__ = ["RPCServer", "JSONRPCDispatcher", "MAX_REQUEST_SIZE", "DEFAULT_RATE_LIMIT"]

MAX_REQUEST_SIZE = 1024 * 1024
DEFAULT_RATE_LIMIT = RateLimiter.MAX_REQUESTS_PER_MINUTE
SOCKET_TIMEOUT = 30.0                    # C++: 30 s send/receive timeouts per client
AUTH_REALM = 'Basic realm="Dilithion RPC"'

# The C++ bodies that are not JSON-RPC (cli 3.10), kept so clients can match them.
LOCKOUT_ERROR = "Too many failed authentication attempts. Try again later."
RATE_LIMIT_ERROR = "Rate limit exceeded. Please slow down your requests."
UNAUTHORIZED_ERROR = "Unauthorized - Invalid or missing credentials"
INVALID_HTTP_ERROR = "Invalid HTTP request"


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _error_response(code: int, message: str, request_id: Any) -> dict:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


class JSONRPCDispatcher:
    """Request body in, response body out; stateless, so any thread may call it."""

    def __init__(self, methods: Mapping[str, RPCMethod]) -> None:
        self._methods = dict(methods)

    def handle(self, body: bytes) -> str:
        """Parse a request or batch and return the JSON response text.

        C++: ``ParseRPCRequest`` into ``struct RPCRequest``, and ``SerializeResponse``.
        """
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):           # includes UnicodeDecodeError
            return _dump(_error_response(RPC_PARSE_ERROR, "Parse error", None))
        if isinstance(payload, list):
            if not payload:
                return _dump(_error_response(RPC_INVALID_REQUEST, "Invalid Request: empty batch",
                                             None))
            return "[" + ",".join(self._handle_one(item) for item in payload) + "]"
        return self._handle_one(payload)

    def _handle_one(self, request: Any) -> str:
        """Run one request object and build its response (C++ ``ExecuteRPC``; the
        ``struct RPCResponse`` and ``RPCResponse::Success`` it fills)."""
        if not isinstance(request, dict):
            return _dump(_error_response(RPC_INVALID_REQUEST,
                                         "Invalid Request: expected a JSON object", None))
        request_id = request.get("id")
        if request_id is not None and (isinstance(request_id, bool)
                                       or not isinstance(request_id, (str, int, float))):
            return _dump(_error_response(RPC_INVALID_REQUEST,
                                         "Invalid Request: id must be a string, number or null",
                                         None))
        method_name = request.get("method")
        if not isinstance(method_name, str):
            return _dump(_error_response(RPC_INVALID_REQUEST,
                                         "Invalid Request: method must be a string", request_id))
        method = self._methods.get(method_name)
        if method is None:
            return _dump(_error_response(RPC_METHOD_NOT_FOUND, "Method not found", request_id))
        try:
            params = bind_params(method_name, request.get("params"))
            result = method.handler(**params)
            return _dump({"jsonrpc": "2.0", "result": result, "id": request_id})
        except ParamsError as exc:
            return _dump(_error_response(RPC_INVALID_PARAMS, str(exc), request_id))
        except RPCError as exc:
            return _dump(_error_response(exc.code, exc.message, request_id))
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the connection
            logger.opt(exception=exc).error(f"[RPC] {method_name} failed")
            return _dump(_error_response(RPC_INTERNAL_ERROR, str(exc) or type(exc).__name__,
                                         request_id))


class _RPCRequestHandler(BaseHTTPRequestHandler):
    """One HTTP request on one connection, run on that connection's own thread."""

    protocol_version = "HTTP/1.1"
    server_version = "DilithionRPC"
    timeout = SOCKET_TIMEOUT
    server: "_HTTPServer"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        logger.trace(f"[RPC] {self.client_address[0]} " + format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, oversized headers) as JSON."""
        self._send_json(code, {"error": message or self.responses.get(code, ("Error",))[0]})

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Send ``body`` as a JSON HTTP response and close (C++ ``BuildHTTPResponse``)."""
        data = (body if isinstance(body, str) else _dump(body)).encode("utf-8")
        self.close_connection = True
        if self.request_version == "HTTP/0.9":        # headerless replies would be unreadable
            self.request_version = "HTTP/1.0"
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _admit(self) -> bool:
        """Lockout, rate limit and authentication, in the C++ order, before reading the body.

        C++: ``GetClientIP``, ``ExtractAuthHeader`` and ``BuildHTTPUnauthorized``.
        """
        owner = self.server.owner
        ip = self.client_address[0]
        if owner.limiter.is_locked_out(ip):
            self._send_json(403, {"error": LOCKOUT_ERROR})
            return False
        if not owner.limiter.allow_request(ip):
            self._send_json(429, {"error": RATE_LIMIT_ERROR},
                            {"Retry-After": str(max(1, owner.limiter.seconds_until_reset(ip)))})
            return False
        verdict = owner.authenticator.check(self.headers.get("Authorization"))
        if verdict is AuthResult.OK:
            owner.limiter.record_auth_success(ip)
            return True
        if verdict is AuthResult.WRONG:
            owner.limiter.record_auth_failure(ip)
            logger.warning(f"[RPC] wrong credentials from {ip}")
        self._send_json(401, {"error": UNAUTHORIZED_ERROR}, {"WWW-Authenticate": AUTH_REALM})
        return False

    def do_GET(self) -> None:
        if self._admit():
            self._send_json(405, {"error": f"{INVALID_HTTP_ERROR}: send JSON-RPC with POST"},
                            {"Allow": "POST"})

    def do_POST(self) -> None:
        """Admit, read the body and answer one JSON-RPC request (C++ ``HandleClient``)."""
        if not self._admit():
            return
        length = self._content_length()
        if length is None:
            return
        body = self.rfile.read(length)
        if len(body) < length:                         # client went away mid-body
            self.close_connection = True
            return
        if not body.strip():
            self._send_json(400, {"error": INVALID_HTTP_ERROR})
            return
        self._send_json(200, self.server.owner.dispatcher.handle(body))

    def _content_length(self) -> int | None:
        """The declared body length, or None after answering 400/411/413.

        C++: the body framing part of ``ParseHTTPRequest`` (the standard library parses the rest).
        """
        if self.headers.get("Transfer-Encoding"):
            self._send_json(411, {"error": "Content-Length required (chunked bodies unsupported)"})
            return None
        text = self.headers.get("Content-Length")
        if text is None:
            self._send_json(411, {"error": "Content-Length required"})
            return None
        text = text.strip()
        if not (text.isascii() and text.isdigit()):
            self._send_json(400, {"error": f"{INVALID_HTTP_ERROR}: bad Content-Length"})
            return None
        length = int(text)
        limit = self.server.owner.max_request_bytes
        if length > limit:
            self._send_json(413, {"error": f"Request too large (max {_size_text(limit)})",
                                  "code": RPC_PARSE_ERROR})
            self._discard_body(length)
            return None
        return length

    def _discard_body(self, length: int, deadline_s: float = 2.0) -> None:
        """Read and drop an oversized body for a short while.

        Closing a socket with unread input makes the kernel send a reset that
        can destroy the 413 before the client reads it; draining briefly lets
        a client that wrote the whole body still see the answer.
        """
        remaining = length
        end = time.monotonic() + deadline_s
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)    # the client sees EOF after the 413 now
            while remaining > 0 and time.monotonic() < end:
                self.connection.settimeout(max(0.05, end - time.monotonic()))
                chunk = self.rfile.read1(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass


def _size_text(n: int) -> str:
    return f"{n // (1024 * 1024)}MB" if n % (1024 * 1024) == 0 else f"{n} bytes"


class _HTTPServer(ThreadingHTTPServer):
    """The listening socket and its per-connection threads.

    Handler threads are joined on close (``block_on_close``); ``_conns`` (under
    ``_conns_lock``) lets :meth:`RPCServer.stop` cut connections still waiting
    for a slow client instead of waiting out their 30-second timeouts.
    C++: replaces the accept loop ``ServerThread`` and the ``WorkerThread`` pool.
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], owner: "RPCServer") -> None:
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _RPCRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves a host name (getfqdn): not needed, may block.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        logger.opt(exception=True).debug(f"[RPC] connection from {client_address[0]} failed")

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def cut_readers(self) -> None:
        """End pending reads on every open connection (responses can still be written)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class RPCServer:
    """The node's JSON-RPC endpoint.

    ``start``/``stop`` are called by the node's main thread; the server thread
    runs the accept loop and each connection gets its own handler thread.
    The dispatcher, authenticator and limiter are shared by those threads
    (the limiter has its own lock; the other two are read-only after start).
    """

    def __init__(self, ctx, host: str = "127.0.0.1", port: int = 0,
                 max_request_bytes: int = MAX_REQUEST_SIZE,
                 rate_limit: int = DEFAULT_RATE_LIMIT,
                 rpcuser: str | None = None, rpcpassword: str | None = None,
                 limiter: RateLimiter | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self._requested_port = port
        self.max_request_bytes = max_request_bytes
        self.limiter = limiter or RateLimiter(max_requests_per_window=rate_limit)
        self.dispatcher = JSONRPCDispatcher(NodeRPC(ctx).methods())
        self.authenticator = Authenticator()
        self._explicit_credentials = (rpcuser, rpcpassword)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cookie: CookieFile | None = None
        self._lifecycle = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the requested one.

        C++: ``GetPort``.
        """
        return self._httpd.server_address[1] if self._httpd is not None else self._requested_port

    @property
    def cookie_path(self):
        return self._cookie.path if self._cookie is not None else None

    def is_running(self) -> bool:
        return self._httpd is not None

    def start(self) -> bool:
        """Bind, write the cookie, serve; False if already running.

        Raises ``OSError`` when the address cannot be bound or the cookie cannot
        be written (the C++ ``Start`` only returns false).
        """
        with self._lifecycle:
            if self._httpd is not None:
                return False
            server_cls = _HTTPServer6 if ":" in self.host else _HTTPServer
            httpd = server_cls((self.host, self._requested_port), self)
            try:
                self._configure_auth()
            except BaseException:
                httpd.server_close()
                raise
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="rpc-server", daemon=True)
            self._thread.start()
            logger.info(f"[RPC] Server listening on {self.host}:{self.port}"
                        f" (cookie {self._cookie.path})")
            return True

    def _configure_auth(self) -> None:
        """Accept the configured credentials and a fresh cookie (C++ ``InitializeAuth``)."""
        self.authenticator = Authenticator()
        user, password = self._explicit_credentials
        if user is None and password is None:
            conf = read_config(Path(self.ctx.datadir) / CONF_FILENAME)
            user, password = conf.get("rpcuser"), conf.get("rpcpassword")
        if user and password:
            self.authenticator.add(user, password)
        elif user or password:
            logger.warning("[RPC] rpcuser and rpcpassword must be set together: ignoring them,"
                           " cookie authentication only")
        self._cookie = CookieFile.create(self.ctx.datadir)
        self.authenticator.add(self._cookie.user, self._cookie.password)

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests, remove the cookie; idempotent.

        Must not be called from an RPC handler thread (it joins them); the
        ``stop`` method only sets ``ctx.shutdown_requested``.
        """
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            httpd.shutdown()
            httpd.cut_readers()
            httpd.server_close()
            if self._thread is not None:
                self._thread.join()
                self._thread = None
            if self._cookie is not None:
                self._cookie.remove()
            logger.info("[RPC] Server stopped")
