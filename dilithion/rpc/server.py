"""JSON-RPC over HTTP for the node (``src/rpc/server.*``).

What changes from the C++ ``CRPCServer`` (``cli`` 3.1-3.6, defects ``cli 6.3``):

* HTTP is served by ``waitress`` (:mod:`dilithion.rpc.httpserver`): one IO
  loop, a fixed pool of worker threads, a bounded work queue (503 when full),
  a connection cap, a whole-request deadline and a keep-alive idle limit
  (issue #11, ``cli 6.3 #38``).  ``Content-Length`` is honoured, so the body
  may arrive in any number of segments and be larger than 4096 bytes
  (#27, #28); only POST carries a request.
* The JSON-RPC envelope is :class:`dilithion.rpc.dispatch.JSONRPCDispatcher`
  (#29-#32).
* Authentication is always on: cookie file plus optional ``dilithion.conf``
  credentials (#34).  The rate limit counts requests per ``dilithion.conf``
  user, after authentication; wrong passwords put their source address into a
  short, resetting back-off instead of a 300-second lockout; cookie
  credentials (the operator's: whoever reads them can edit the datadir anyway)
  are refused by neither (#35; issue #11).  Handlers run concurrently (#33).
* ``--rpcbind`` may choose the address; anything but loopback requires an
  ``--rpcallowip`` list (#39).

Replies carry ``Connection: close`` (the C++ clients read to EOF) unless the
client asked for ``Connection: keep-alive``.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from loguru import logger

from dilithion.node.metrics import NULL_METRICS, Metrics
from dilithion.rpc.access import AllowList
from dilithion.rpc.auth import (CONF_FILENAME, COOKIE_USER, AuthResult, Authenticator, CookieFile,
                                read_config)
from dilithion.rpc.dispatch import JSONRPCDispatcher, _dump
from dilithion.rpc.httpserver import BoundedWSGIServer, HTTPLimits, make_http_server
from dilithion.rpc import propagation_methods  # noqa: F401 - registers getblockpropagation
from dilithion.rpc.methods import NodeRPC
from dilithion.rpc.ratelimiter import AuthBackoff, RateLimiter

__all__ = ["RPCServer", "JSONRPCDispatcher", "HTTPLimits", "MAX_REQUEST_SIZE",
           "DEFAULT_RATE_LIMIT"]

MAX_REQUEST_SIZE = 1024 * 1024
DEFAULT_RATE_LIMIT = RateLimiter.MAX_REQUESTS_PER_MINUTE
AUTH_REALM = 'Basic realm="Dilithion RPC"'

# The C++ bodies that are not JSON-RPC (cli 3.10), kept so clients can match them.
LOCKOUT_ERROR = "Too many failed authentication attempts. Try again later."
RATE_LIMIT_ERROR = "Rate limit exceeded. Please slow down your requests."
UNAUTHORIZED_ERROR = "Unauthorized - Invalid or missing credentials"
INVALID_HTTP_ERROR = "Invalid HTTP request"
FORBIDDEN_ERROR = "Forbidden: address not allowed by --rpcallowip"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            405: "Method Not Allowed", 411: "Length Required", 429: "Too Many Requests"}
#: Refusal reasons of the ``rpc_rejected`` metric, by HTTP status.
_REFUSAL_REASONS = {0: "evicted", 503: "queue_full", 408: "deadline", 413: "too_large", 400: "bad_request",
                    431: "bad_request", 501: "bad_request"}


class _RPCApp:
    """The WSGI application: admission (allow-list, back-off, auth, rate limit) and dispatch.

    Called on the server's worker threads.  It owns nothing mutable: the
    limiter and back-off have their own locks, the authenticator, allow-list
    and dispatcher are read-only while the server runs, metrics are thread-safe.
    C++: ``HandleClient``.
    """

    def __init__(self, server: "RPCServer") -> None:
        self.server = server

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        metrics = self.server.metrics
        metrics.rpc_in_flight.inc()
        seen: list[str] = []
        try:
            status, body, headers = self._respond(environ, seen)
        finally:
            metrics.rpc_in_flight.dec()
        for name in seen or ["none"]:
            metrics.rpc_requests.labels(method=name, status=str(status)).inc()
        data = (body if isinstance(body, str) else _dump(body)).encode("utf-8")
        out = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        out += list(headers.items())          # Connection: set by the HTTP layer
        start_response(f"{status} {_REASONS.get(status, 'Error')}", out)
        return [data]

    def _respond(self, environ: dict, seen: list[str]) -> tuple[int, Any, dict]:
        """C++: ``GetClientIP``, ``ExtractAuthHeader``, ``BuildHTTPUnauthorized``,
        ``ParseHTTPRequest`` and ``BuildHTTPResponse``, in that order."""
        srv = self.server
        source = environ.get("REMOTE_ADDR", "")
        if not srv.allow.allows(source):
            self._refused("not_allowed")
            return 403, {"error": FORBIDDEN_ERROR}, {}
        verdict, user = srv.authenticator.identify(environ.get("HTTP_AUTHORIZATION"))
        cookie = verdict is AuthResult.OK and user == COOKIE_USER
        if not cookie:
            wait = srv.backoff.retry_after(source)
            if wait > 0:
                self._refused("auth_backoff")
                return 403, {"error": LOCKOUT_ERROR}, {"Retry-After": AuthBackoff.retry_after_header(wait)}
        if verdict is not AuthResult.OK:
            if verdict is AuthResult.WRONG:
                delay = srv.backoff.record_failure(source)
                srv.metrics.rpc_auth_failures.inc()
                logger.warning(f"[RPC] wrong credentials from {source} (next attempt in {delay:g} s)")
            return 401, {"error": UNAUTHORIZED_ERROR}, {"WWW-Authenticate": AUTH_REALM}
        if not cookie:
            srv.backoff.record_success(source)
        if not cookie and not srv.limiter.allow_request(user):
            self._refused("rate_limited")
            return 429, {"error": RATE_LIMIT_ERROR}, \
                {"Retry-After": str(max(1, srv.limiter.seconds_until_reset(user)))}
        if environ.get("REQUEST_METHOD") != "POST":
            return 405, {"error": f"{INVALID_HTTP_ERROR}: send JSON-RPC with POST"}, {"Allow": "POST"}
        length_text = environ.get("CONTENT_LENGTH")
        if length_text is None:
            return 411, {"error": "Content-Length required"}, {}
        body = environ["wsgi.input"].read(int(length_text or 0))
        if not body.strip():
            return 400, {"error": INVALID_HTTP_ERROR}, {}
        return 200, srv.dispatcher.handle(body, seen), {}

    def _refused(self, reason: str) -> None:
        self.server.metrics.rpc_rejected.labels(reason=reason).inc()


class RPCServer:
    """The node's JSON-RPC endpoint.

    ``start``/``stop`` are called by the node's main thread (``_lifecycle``
    lock); the server thread runs waitress's IO loop and a fixed pool of
    worker threads runs :class:`_RPCApp`.  Shared with those threads: the
    limiter and back-off (own locks), the authenticator, allow-list and
    dispatcher (read-only after start).
    """

    def __init__(self, ctx, host: str = "127.0.0.1", port: int = 0,
                 max_request_bytes: int = MAX_REQUEST_SIZE,
                 rate_limit: int = DEFAULT_RATE_LIMIT,
                 rpcuser: str | None = None, rpcpassword: str | None = None,
                 limiter: RateLimiter | None = None, backoff: AuthBackoff | None = None,
                 limits: HTTPLimits | None = None, allow_ips: list[str] | tuple = (),
                 metrics: Metrics = NULL_METRICS) -> None:
        self.ctx = ctx
        self.host = host
        self._requested_port = port
        self.limits = replace(limits or HTTPLimits(), max_request_bytes=max_request_bytes)
        self.limiter = limiter or RateLimiter(max_requests_per_window=rate_limit)
        self.backoff = backoff or AuthBackoff()
        self.allow = AllowList(list(allow_ips))
        self.metrics = metrics
        self.dispatcher = JSONRPCDispatcher(NodeRPC(ctx).methods())
        self.authenticator = Authenticator()
        self._explicit_credentials = (rpcuser, rpcpassword)
        self._httpd: BoundedWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._cookie: CookieFile | None = None
        self._lifecycle = threading.Lock()

    @property
    def max_request_bytes(self) -> int:
        return self.limits.max_request_bytes

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the requested one.

        C++: ``GetPort``.
        """
        return int(self._httpd.effective_port) if self._httpd is not None else self._requested_port

    def is_running(self) -> bool:
        return self._httpd is not None

    def open_connections(self) -> int:
        return self._httpd.open_connections() if self._httpd is not None else 0

    def start(self) -> bool:
        """Bind, write the cookie, serve; False if already running.

        Raises ``OSError`` when the address cannot be bound or the cookie cannot
        be written (the C++ ``Start`` only returns false).
        """
        with self._lifecycle:
            if self._httpd is not None:
                return False
            httpd = make_http_server(_RPCApp(self), self.host, self._requested_port, self.limits,
                                     self._on_http_refusal)
            try:
                self._configure_auth()
            except BaseException:
                httpd.request_stop()
                httpd.task_dispatcher.shutdown(timeout=1)
                httpd.asyncore.close_all(httpd._map)
                raise
            self._httpd = httpd
            self.metrics.rpc_open_connections.set_function(self.open_connections)
            self._thread = threading.Thread(target=httpd.serve, name="rpc-server", daemon=True)
            self._thread.start()
            lim = self.limits
            logger.info(f"[RPC] Server listening on {self.host}:{self.port}"
                        f" (cookie {self._cookie.path}; {lim.threads} threads, queue "
                        f"{lim.work_queue}, {lim.max_connections} connections)")
            return True

    def _on_http_refusal(self, status: int) -> None:
        self.metrics.rpc_rejected.labels(reason=_REFUSAL_REASONS.get(status, "bad_request")).inc()

    def _configure_auth(self) -> None:
        """Accept the configured credentials and a fresh cookie (C++ ``InitializeAuth``)."""
        self.authenticator = Authenticator()
        user, password = self._explicit_credentials
        if user is None and password is None:
            conf = read_config(Path(self.ctx.datadir) / CONF_FILENAME)
            user, password = conf.get("rpcuser"), conf.get("rpcpassword")
        if user == COOKIE_USER:
            logger.warning(f"[RPC] rpcuser {COOKIE_USER} is reserved for the cookie: ignored")
        elif user and password:
            self.authenticator.add(user, password)
        elif user or password:
            logger.warning("[RPC] rpcuser and rpcpassword must be set together: ignoring them,"
                           " cookie authentication only")
        self._cookie = CookieFile.create(self.ctx.datadir)
        self.authenticator.add(self._cookie.user, self._cookie.password)

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests, close every connection, remove
        the cookie; idempotent.

        Must not be called from an RPC handler thread (it joins them); the
        ``stop`` method only sets ``ctx.shutdown_requested``.
        """
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            httpd.request_stop()
            if self._thread is not None:
                self._thread.join()
                self._thread = None
            self.metrics.rpc_open_connections.set(0)
            if self._cookie is not None:
                self._cookie.remove()
            logger.info("[RPC] Server stopped")
