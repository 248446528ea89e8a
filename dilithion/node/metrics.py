"""Prometheus metrics for one node (the C++ team's mainnet-readiness list).

Each node has its own ``CollectorRegistry`` so several nodes in one process do
not share counters.  A component built without a node (a unit test, a tool,
``open_chain_state``) gets :data:`NULL_METRICS`, which has every metric of
:class:`NodeMetrics` and drops the updates, so no component checks whether it
has metrics; ``tests/test_metrics_names.py`` keeps the two classes' names equal
and every metric the code updates exported.  Names are the seed's; ``docs/OPERATIONS.md`` defines what
``block_propagation_time_seconds`` measures.  All objects here are thread-safe
(``prometheus_client`` locks internally), so any thread may update them.
"""
from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, start_http_server)

__all__ = ["NodeMetrics", "NullMetrics", "NULL_METRICS", "Metrics", "PROPAGATION_BUCKETS",
           "DEFAULT_METRICS_PORT"]

#: Port of ``DIL_METRICS_ENABLED=1`` without ``DIL_METRICS_PORT``.  Not 9100: that is
#: node_exporter's port, which the hosts that run a node usually run as well.
DEFAULT_METRICS_PORT = 9339

#: 1 ms to 60 s, roughly doubling: fine resolution for loopback, coarse for WAN.
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0, 20.0, 30.0, 45.0, 60.0)


class NodeMetrics:
    """The metric families of one node, registered in a private registry.

    C++: takes the place of ``struct CNetworkStats``.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 process_metrics: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.block_propagation_time = Histogram(
            "block_propagation_time_seconds",
            "role=announce: from the block becoming the tip to its inv being queued for the last "
            "eligible peer; role=receive: from the first inv (or unsolicited block) for it "
            "received to the block connected (docs/P2P.md)",
            ["role"], buckets=PROPAGATION_BUCKETS, registry=r)
        self.block_broadcast_failures = Counter(
            "block_broadcast_failures", "Per-peer block announcements that failed for good",
            registry=r)
        self.send_timeout_errors = Counter(
            "send_timeout_errors", "Peers disconnected because their send queue made no progress "
            "within the send deadline", registry=r)
        self.peer_broadcast_success_rate = Gauge(
            "peer_broadcast_success_rate", "Fraction of per-peer announcements of the last "
            "broadcast that were delivered (0..1)", registry=r)
        self.connected_peers = Gauge(
            "connected_peers_count", "Peers with a completed handshake", registry=r)
        self.socket_errors = Counter(
            "socket_errors", "Socket errors on peer connections (reset, refused, broken pipe)",
            registry=r)
        self.peer_disconnections = Counter(
            "peer_disconnections", "Peer connections closed, any reason", ["reason"], registry=r)
        self.message_queue_depth = Gauge(
            "message_queue_depth", "Tasks waiting in the asynchronous broadcast queue", registry=r)
        self.bytes_sent = Counter(
            "bytes_sent", "Bytes written to peer sockets", registry=r)
        self.bytes_received = Counter(
            "bytes_received", "Bytes read from peer sockets", registry=r)
        self.blocks_connected = Counter(
            "blocks_connected", "Blocks connected to the active chain", registry=r)
        self.chain_height = Gauge("chain_height", "Height of the active chain tip", registry=r)
        self.misbehaviour_events = Counter(
            "peer_misbehaviour", "Bad-input events scored against peers", ["reason"], registry=r)
        self.peer_discouraged = Counter(
            "peer_discouraged", "Hosts discouraged for reaching the misbehaviour threshold "
            "(all their connections closed)", registry=r)
        self.banned_hosts = Gauge(
            "banned_hosts", "Manual bans (setban, banlist.json) in force: IPs and subnets",
            registry=r)
        self.blocks_in_flight = Gauge(
            "blocks_in_flight", "Block requests (getdata) waiting for their block, all peers",
            registry=r)
        self.block_download_stalls = Counter(
            "block_download_stalls", "Peers disconnected for stalling a block download that "
            "another announcer could serve", registry=r)
        self.blocks_unrequested_dropped = Counter(
            "blocks_unrequested_dropped", "Unrequested blocks with no more work than the tip, "
            "not stored", registry=r)
        self.receive_buffer_bytes = Gauge(
            "receive_buffer_bytes", "Bytes held for all peers' unfinished and unprocessed "
            "messages (bounded by --maxreceivebuffer)", registry=r)
        self.peers_evicted = Counter(
            "peers_evicted", "Inbound peers disconnected to make room for a new inbound "
            "connection", registry=r)
        self.prehandshake_dropped = Counter(
            "prehandshake_messages_dropped", "Messages other than version/verack/ping/pong "
            "received before the handshake completed, dropped without decoding", registry=r)
        self.rpc_requests = Counter(
            "rpc_requests", "JSON-RPC requests answered, by method (each call of a batch; "
            "'none' when no method was reached, 'other' for names not served) and HTTP status",
            ["method", "status"], registry=r)
        self.rpc_in_flight = Gauge(
            "rpc_requests_in_flight", "RPC requests being handled by a worker thread", registry=r)
        self.rpc_open_connections = Gauge(
            "rpc_open_connections", "Open connections to the RPC server", registry=r)
        self.rpc_rejected = Counter(
            "rpc_rejected", "RPC requests refused before dispatch, by reason (queue_full: 503, "
            "rate_limited: 429, auth_backoff and not_allowed: 403, deadline: dropped "
            "unfinished, too_large: 413, bad_request: unparsable HTTP, evicted: idle connection "
            "closed for a new one over --rpcmaxconnections)", ["reason"], registry=r)
        self.rpc_auth_failures = Counter(
            "rpc_auth_failures", "RPC requests with wrong credentials", registry=r)
        self.mining_hash_rate = Gauge(
            "mining_hash_rate", "Hashes per second of this node's miner, averaged over the last "
            "few seconds (0 when not mining)", registry=r)
        self.randomx_mode = Gauge(
            "randomx_mode", "1 for the RandomX mode hashing now (light: 256 MiB cache; full: "
            "2080 MiB dataset, about eight times faster), 0 for the other", ["mode"], registry=r)
        self.randomx_vms = Gauge(
            "randomx_vms", "RandomX VMs alive (one per thread that has hashed; each adds about"
            " 2 MiB to the resident memory)", registry=r)
        self.randomx_dataset_build_seconds = Gauge(
            "randomx_dataset_build_seconds", "How long the full-mode dataset took to build "
            "(0 until it is ready)", registry=r)
        self.send_timeout_seconds = Gauge(
            "p2p_send_timeout_seconds", "Send deadline in effect: a peer whose send queue takes "
            "no byte this long is disconnected (DIL_SEND_TIMEOUT)", registry=r)
        self.broadcast_max_retries = Gauge(
            "broadcast_max_retries", "Retries of an announcement a peer's full send queue "
            "refused, before it is given up (DIL_BROADCAST_RETRIES)", registry=r)
        self.broadcast_retry_backoff = Gauge(
            "broadcast_retry_backoff_seconds", "Delay before the first retry of a refused "
            "announcement, doubled per retry (DIL_BROADCAST_BACKOFF_MS)", registry=r)
        # ---- send side (issue 21, sendside slice) ----------------------------------------
        self.send_buffer_bytes = Gauge(
            "send_buffer_bytes", "Bytes queued for all peers together; at max_send_total block "
            "and transaction service pauses for every peer (docs/P2P.md)", registry=r)
        self.getdata_items_dropped = Counter(
            "getdata_items_dropped", "Known items of getdata messages not served because the "
            "peer already had MAX_PENDING_GETDATA items waiting", registry=r)
        # ---- peersizes (issue 21): the log as a budget ----------------------------------
        self.log_lines_suppressed = Gauge(
            "log_lines_suppressed", "Log lines dropped by the log rate limit since the node "
            "started (budgets per hour: per source line, per source line and peer host, and "
            "two node-wide pools; 0 with --nologratelimit)", registry=r)
        self.log_bytes_suppressed = Gauge(
            "log_bytes_suppressed", "Bytes of the log lines dropped by the log rate limit "
            "since the node started", registry=r)
        # ---- CPU fairness between peers (issue 21, fairness slice) ----
        self.frames_deferred = Counter(
            "p2p_frames_deferred", "Times a peer's share of one network-loop pass "
            "(FRAMES_PER_PASS messages) ran out with messages left, framed in the next pass",
            registry=r)
        self.handler_seconds = Counter(
            "p2p_handler_seconds", "Wall time the message-handler thread spent on peers' "
            "messages (each peer is charged its own in the handler's fair queue)", registry=r)
        self.pow_prefetch_refused = Counter(
            "pow_prefetch_refused", "Block headers not hashed ahead because the peer's or the "
            "node-wide proof-of-work prefetch queue was full (the handler hashes them in turn)",
            registry=r)
        for reason in ("queue_full", "rate_limited", "auth_backoff", "not_allowed", "deadline",
                       "too_large", "bad_request", "evicted"):
            self.rpc_rejected.labels(reason=reason)
        for role in ("announce", "receive"):
            self.block_propagation_time.labels(role=role)
        for reason in ("closed", "timeout", "send_timeout", "misbehaviour", "shutdown", "evicted",
                       "receive_buffer"):
            self.peer_disconnections.labels(reason=reason)
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self._server = None

    def watch_randomx(self, hasher) -> None:
        """Read the RandomX mode, dataset build time and VM count from ``hasher`` at each scrape."""
        for mode in ("light", "full"):
            self.randomx_mode.labels(mode=mode).set_function(
                lambda mode=mode: 1.0 if hasher.mode == mode else 0.0)

        def build_seconds() -> float:
            build = hasher.dataset_build
            return build.seconds if build is not None and build.state == "ready" else 0.0

        self.randomx_dataset_build_seconds.set_function(build_seconds)
        self.randomx_vms.set_function(lambda: hasher.vms)

    def watch_log_limiter(self, limiter) -> None:
        """Read the log rate limiter's dropped lines and bytes at each scrape."""
        self.log_lines_suppressed.set_function(lambda: limiter.dropped_lines)
        self.log_bytes_suppressed.set_function(lambda: limiter.dropped_bytes)

    def on_tip_changed(self, new_tip, connected, disconnected) -> None:
        """Chain tip listener: the height gauge and the connected-blocks counter."""
        self.blocks_connected.inc(len(connected))
        self.chain_height.set(new_tip.height)

    def set_p2p_levers(self, send_timeout_s: float, max_retries: int, backoff_s: float) -> None:
        """Publish the hot-fix levers in effect (send deadline, retry count and back-off)."""
        self.send_timeout_seconds.set(send_timeout_s)
        self.broadcast_max_retries.set(max_retries)
        self.broadcast_retry_backoff.set(backoff_s)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP on ``addr:port`` (a daemon thread)."""
        self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _NullMetric:
    """A metric, or one labelled child of it, that accepts every update and keeps nothing."""

    __slots__ = ()

    def labels(self, *_values, **_labels) -> "_NullMetric":
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def set_function(self, fn) -> None:
        pass


_NULL_METRIC = _NullMetric()


class NullMetrics:
    """:class:`NodeMetrics` for a component that runs without a node: same names, no registry.

    Components default to :data:`NULL_METRICS` instead of ``None``, so none of
    them tests for a missing collaborator.  Stateless (every metric drops its
    updates), so one instance serves every component of every node in a process.
    A metric added to :class:`NodeMetrics` must be added here too
    (``tests/test_metrics_names.py`` compares the two).
    """

    block_propagation_time = _NULL_METRIC
    block_broadcast_failures = _NULL_METRIC
    send_timeout_errors = _NULL_METRIC
    peer_broadcast_success_rate = _NULL_METRIC
    connected_peers = _NULL_METRIC
    socket_errors = _NULL_METRIC
    peer_disconnections = _NULL_METRIC
    message_queue_depth = _NULL_METRIC
    bytes_sent = _NULL_METRIC
    bytes_received = _NULL_METRIC
    blocks_connected = _NULL_METRIC
    chain_height = _NULL_METRIC
    misbehaviour_events = _NULL_METRIC
    peer_discouraged = _NULL_METRIC
    banned_hosts = _NULL_METRIC
    blocks_in_flight = _NULL_METRIC
    block_download_stalls = _NULL_METRIC
    blocks_unrequested_dropped = _NULL_METRIC
    receive_buffer_bytes = _NULL_METRIC
    peers_evicted = _NULL_METRIC
    prehandshake_dropped = _NULL_METRIC
    rpc_requests = _NULL_METRIC
    rpc_in_flight = _NULL_METRIC
    rpc_open_connections = _NULL_METRIC
    rpc_rejected = _NULL_METRIC
    rpc_auth_failures = _NULL_METRIC
    mining_hash_rate = _NULL_METRIC
    randomx_mode = _NULL_METRIC
    randomx_vms = _NULL_METRIC
    randomx_dataset_build_seconds = _NULL_METRIC
    send_timeout_seconds = _NULL_METRIC
    broadcast_max_retries = _NULL_METRIC
    broadcast_retry_backoff = _NULL_METRIC
    send_buffer_bytes = _NULL_METRIC
    getdata_items_dropped = _NULL_METRIC
    log_lines_suppressed = _NULL_METRIC
    log_bytes_suppressed = _NULL_METRIC
    frames_deferred = _NULL_METRIC
    handler_seconds = _NULL_METRIC
    pow_prefetch_refused = _NULL_METRIC

    def watch_randomx(self, hasher) -> None:
        pass

    def watch_log_limiter(self, limiter) -> None:
        pass

    def on_tip_changed(self, new_tip, connected, disconnected) -> None:
        pass

    def set_p2p_levers(self, send_timeout_s: float, max_retries: int, backoff_s: float) -> None:
        pass

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        raise RuntimeError("NullMetrics has nothing to serve: the node serves NodeMetrics")

    def stop(self) -> None:
        pass


#: The metrics of a component built without a node (stateless, so shared).
NULL_METRICS = NullMetrics()

#: What a component's ``metrics`` collaborator is.
Metrics = NodeMetrics | NullMetrics
