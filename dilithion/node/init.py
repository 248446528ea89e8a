"""Node assembly: builds, starts and stops every component of one node.

The C++ node does all of this inline in ``main()`` (``src/node/dilithion-node.cpp``,
``cli`` 1.7) with process globals.  Here :class:`NodeAssembly` does it from a
:class:`NodeConfig` onto one :class:`NodeContext`, in the C++ start-up order
and with the C++ operator lines, and stops everything in reverse.  The node
program (:mod:`dilithion.node.dilithion_node`) adds the command line, signals
and the main loop around it; tests, the readiness lab and the differential
harness assemble their in-process nodes through the same class.

Wiring happens here and nowhere else: each component gets its neighbours as
constructor arguments (never the ``NodeContext``), and every registration of
one component on another (the chain's tip listeners, the message processor's
handlers and listeners, the transport's sink and delivery observer, the
broadcaster's announce filters are a constructor argument) is made by :meth:`NodeAssembly._wire`, in one
commented order.  ``tests/test_architecture.py`` checks that no other module
of the package registers anything.  The helpers :func:`connect_tip_listeners`,
:func:`attach_processor` and :func:`miner_for` are the same wiring for the
partial nodes of tests, tools and benchmarks.  Only the RPC methods (the
tools boundary) read components from the context.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from dilithion.consensus.storage import StorageError
from dilithion.core.chainparams import ChainParams, params_for
from dilithion.core.env import env_choice, env_int
from dilithion.crypto.randomx_hash import RANDOMX_MODES, RandomXHasher
from dilithion.mining.controller import MiningController, default_thread_count
from dilithion.net.added_nodes import AddedNodes
from dilithion.net.async_broadcaster import (DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF_MS,
                                              AsyncBroadcaster)
from dilithion.net.banman import BANLIST_FILE, BanMan
from dilithion.net.block_relay import BlockRelay
from dilithion.net.dns import parse_peer_entry
from dilithion.net.net_processing import NetMessageProcessor
from dilithion.net.connection import TransportConfig, send_timeout_ms_from_env
from dilithion.net.net_transport import ConnectionManager
from dilithion.net.pow_prefetch import PowPrefetch
from dilithion.net.propagation import PropagationLog
from dilithion.net.peer_relay_state import AnnounceFilters
from dilithion.net.tx_relay import TxRelay, TxRelayManager
from dilithion.node.blockchain_storage import BlockchainDB
from dilithion.node.chain_loader import load_chain_state
from dilithion.node.context import NodeContext
from dilithion.node.logging_setup import LOG_FORMATS
from dilithion.node.mempool import TxMemPool, accept_to_memory_pool
from dilithion.node.metrics import NodeMetrics
from dilithion.node.utxo_set import UTXOSet, UTXOStorageError
from dilithion.crypto.mldsa import KeyPair
from dilithion.node.wallet_key import MINING_KEY_FILE, MiningKeyError, load_or_create_mining_key
from dilithion.rpc.access import AllowList, is_loopback_host
from dilithion.rpc.auth import ConfigError
from dilithion.rpc.server import HTTPLimits, RPCServer

__all__ = ["NodeConfig", "NodeAssembly", "NodeStartupError", "VERSION", "BANNER_RULE",
           "connect_tip_listeners", "attach_processor", "miner_for"]

VERSION = "1.0.0"
BANNER_RULE = "======================================"


class NodeStartupError(Exception):
    """A start-up step failed; ``lines`` go to stderr and the process exits 1."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "startup failed")
        self.lines = lines


@dataclass
class NodeConfig:
    """Everything the command line decides (``NodeConfig`` in the C++), plus the
    knobs in-process nodes of tests and tools set (ports 0 = any free port)."""

    network: str = "mainnet"
    datadir: Path | None = None
    p2p_port: int | None = None       # None: the network's port; 0: any free port
    rpc_port: int | None = None       # likewise
    bind: str | None = None
    rpcbind: str = "127.0.0.1"
    #: ``--rpcallowip``: addresses/subnets allowed besides loopback (required off loopback).
    rpc_allow_ips: list[str] = field(default_factory=list)
    #: ``--rpcthreads``, ``--rpcworkqueue``, ...; None: the defaults.
    rpc_limits: HTTPLimits | None = None
    connect_nodes: list[str] = field(default_factory=list)
    add_nodes: list[str] = field(default_factory=list)
    start_mining: bool = False
    mining_threads: int = 0          # 0 = auto
    strict: bool = False
    #: ``--randomx``: light, full or auto; None: ``$DIL_RANDOMX``, else auto.
    randomx: str | None = None
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
    log_level: str | None = None     # None: $DIL_LOG_LEVEL, else INFO
    #: ``--log-format``: text or json; None: ``$DIL_LOG_FORMAT``, else text.
    log_format: str | None = None
    log_rate_limit: bool | None = None   # None: $DIL_LOG_RATELIMIT (on unless "0")
    quick_start: bool = False
    #: Run the JSON-RPC server (in-process test nodes may go without).
    rpc: bool = True
    #: Keep a UTXO set and a mempool.  Off: a relay-only node that ignores
    #: transactions, like the C++ node (``net`` 5.5); for tests and tools.
    coins: bool = True
    #: Transport limits and timers; None: the defaults with the network's send
    #: deadline (or ``DIL_SEND_TIMEOUT``) and the two values below.
    transport: TransportConfig | None = None
    #: ``--maxreceivebuffer`` (MiB) and ``--pingtimeout`` (s); None: the defaults.
    max_receive_buffer_mib: int | None = None
    ping_timeout: float | None = None
    #: Retries of a refused announcement and the first retry delay (ms, doubled per
    #: retry); None: ``$DIL_BROADCAST_RETRIES`` / ``$DIL_BROADCAST_BACKOFF_MS``, else
    #: the broadcaster's defaults.  Hot-fix levers of the readiness plan (phase 5).
    broadcast_retries: int | None = None
    broadcast_backoff_ms: int | None = None
    #: Further keyword arguments for the :class:`AsyncBroadcaster` (workers, rate, clock);
    #: they win over the two values above.
    broadcaster_options: dict = field(default_factory=dict)
    #: Process-wide collectors (CPU, memory) in the metrics; off for in-process test nodes.
    process_metrics: bool = True

    @property
    def params(self) -> ChainParams:
        return params_for(self.network)

    def rpc_access_error(self) -> str | None:
        """The one-line start-up error for an unsafe or invalid RPC access setting, or None.

        As in Bitcoin Core, listening beyond loopback needs an explicit
        ``--rpcallowip`` list (issue #11; the C++ node binds loopback only).
        """
        try:
            AllowList(self.rpc_allow_ips)
        except ValueError as exc:
            return f"Error: {exc}"
        if self.rpc and not is_loopback_host(self.rpcbind) and not self.rpc_allow_ips:
            return (f"Error: --rpcbind={self.rpcbind} is not a loopback address: also give "
                    "--rpcallowip=<ip or subnet> for the clients that may connect")
        return None

    def randomx_error(self) -> str | None:
        """The one-line start-up error for an unknown ``--randomx``/``DIL_RANDOMX`` value."""
        if self.randomx in RANDOMX_MODES:
            return None
        return (f"Error: DIL_RANDOMX={self.randomx!r} is not one of "
                f"{', '.join(RANDOMX_MODES)}")

    def apply_defaults(self) -> None:
        """Fill what the command line left open from the environment and the network's
        parameters.  An unusable environment value raises
        :class:`~dilithion.core.env.EnvError` (one line; the program exits 1)."""
        params = self.params
        if self.randomx is None:
            self.randomx = env_choice("DIL_RANDOMX", RANDOMX_MODES, "auto")
        if self.log_format is None:
            self.log_format = env_choice("DIL_LOG_FORMAT", LOG_FORMATS, "text")
        if self.broadcast_retries is None:
            self.broadcast_retries = env_int("DIL_BROADCAST_RETRIES", 0, 20, DEFAULT_MAX_RETRIES)
        if self.broadcast_backoff_ms is None:
            self.broadcast_backoff_ms = env_int("DIL_BROADCAST_BACKOFF_MS", 1, 60000,
                                                DEFAULT_RETRY_BACKOFF_MS, unit="ms")
        if self.datadir is None:
            self.datadir = Path.home() / params.data_dir_name
        self.datadir = Path(self.datadir).expanduser()
        if self.p2p_port is None:
            self.p2p_port = params.p2p_port
        if self.rpc_port is None:
            self.rpc_port = params.rpc_port
        if self.bind is None:
            self.bind = "127.0.0.1" if params.is_regtest() else "0.0.0.0"
        if self.transport is None:
            extra = {}
            if self.max_receive_buffer_mib is not None:
                extra["max_receive_buffer"] = self.max_receive_buffer_mib * 1024 * 1024
            if self.ping_timeout is not None:
                extra["ping_timeout"] = float(self.ping_timeout)
            self.transport = TransportConfig(
                send_timeout_ms=send_timeout_ms_from_env(params.send_timeout_ms), **extra)


class NodeAssembly:
    """One node's components: built and started by :meth:`start`, stopped by :meth:`stop`.

    Owned by the thread that calls :meth:`start` and :meth:`stop` (the main
    thread of the node program, or a test).  ``stop`` may follow a ``start``
    that failed half-way: it stops whatever was started, newest first.
    """

    def __init__(self, config: NodeConfig, ctx: NodeContext | None = None) -> None:
        config.apply_defaults()
        self.config = config
        self.ctx = ctx or NodeContext(chain_params=config.params, datadir=config.datadir,
                                      hasher=None, strict=config.strict)
        self.mining_key: KeyPair | None = None
        self._closers: list[tuple[str | None, object]] = []   # (log line, callable), LIFO
        self._quiet = False

    # ------------------------------------------------------------ start-up
    def start(self) -> NodeContext:
        """Every start-up step of ``cli`` 1.7 in order; raises :class:`NodeStartupError`."""
        self._open_storage()
        self._start_metrics()
        self._init_p2p()
        self._init_wallet_and_miner()
        self._wire()
        self._start_p2p()
        self._connect_configured_peers()
        self._start_rpc()
        self._start_mining()
        return self.ctx

    def _closer(self, line: str | None, fn) -> None:
        self._closers.append((line, fn))

    def _open_storage(self) -> None:
        """Steps 7-12 of ``cli`` 1.7: databases, mempool, RandomX, chain state."""
        cfg, ctx = self.config, self.ctx
        logger.info("Initializing blockchain storage...")
        try:
            cfg.datadir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeStartupError(f"Cannot create data directory {cfg.datadir}: "
                                   f"{exc.strerror or exc}")
        ctx.metrics = NodeMetrics(process_metrics=cfg.process_metrics)
        ctx.blockchain = self._open_database("blockchain", BlockchainDB, "blocks")
        logger.info("  [OK] Blockchain database opened")
        if cfg.coins:
            self._open_coins()
        self._init_randomx()
        logger.info("Initializing chain state...")
        logger.info("Loading genesis block...")
        try:
            ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                              utxo_set=ctx.utxo_set, strict=ctx.strict)
        except (StorageError, UTXOStorageError) as exc:
            raise NodeStartupError("ERROR: Cannot load chain state from database", f"  {exc}")
        tip = ctx.chainstate.tip()
        ctx.metrics.chain_height.set(tip.height)
        logger.info("  [OK] Chain state initialized")
        params = ctx.chain_params
        logger.info(f"  Network: {params.get_network_name()}")
        logger.info(f"  Genesis hash: {ctx.chainstate.main_chain_hash_at(0).get_hex()}")
        logger.info(f"  Genesis time: {params.genesis_time}")
        logger.info("  [OK] Genesis block verified")
        logger.info(f"  Best block hash: {tip.hash.short()}...")
        logger.info(f"  [OK] Loaded chain state: {tip.height + 1} blocks (height {tip.height})")

    def _init_randomx(self) -> None:
        """The light-mode cache now; the full-mode dataset in the background if asked for.

        ``auto`` asks for it when the miner starts (``MiningController.start``).
        """
        cfg, ctx = self.config, self.ctx
        logger.info("Initializing RandomX...")
        ctx.hasher = RandomXHasher.for_key()
        ctx.randomx_mode = cfg.randomx
        ctx.metrics.watch_randomx(ctx.hasher)
        logger.info(f"  [OK] RandomX initialized (light mode; --randomx={cfg.randomx}: "
                    + {"light": "light mode only)",
                       "full": "full mode once the dataset is built)",
                       "auto": "full mode once mining starts and the dataset is built)"
                       }[cfg.randomx])
        if cfg.randomx == "full":
            ctx.hasher.start_full_mode()

    def _open_database(self, what: str, opener, subdir: str):
        """One LevelDB under the datadir, closed at shutdown; a failure is the C++
        start-up error ``Failed to open <what> database`` with the reason."""
        try:
            db = opener(str(self.config.datadir / subdir))
        except (StorageError, OSError) as exc:      # UTXOStorageError is a StorageError
            raise NodeStartupError(f"Failed to open {what} database", f"  {exc}")
        self._closer(f"  Closing {what} database...", db.close)
        return db

    def _open_coins(self) -> None:
        ctx = self.ctx
        logger.info("Initializing UTXO set...")
        ctx.utxo_set = self._open_database("UTXO", UTXOSet, "chainstate")
        logger.info("  [OK] UTXO set opened")
        logger.info("Initializing mempool...")
        ctx.mempool = TxMemPool()
        logger.info("  [OK] Mempool initialized")

    def _start_metrics(self) -> None:
        cfg = self.config
        if cfg.metrics_port is None:
            return
        logger.info("Starting metrics server...")
        try:
            self.ctx.metrics.serve(cfg.metrics_port, cfg.metrics_bind)
        except OSError as exc:
            raise NodeStartupError(f"Failed to start metrics server on port {cfg.metrics_port}",
                                   f"Error: {exc.strerror or exc}")
        self._closer("  Stopping metrics server...", self.ctx.metrics.stop)
        logger.info(f"  [OK] Metrics served on http://{cfg.metrics_bind}:{cfg.metrics_port}/metrics")

    def _init_p2p(self) -> None:
        """Transport, message processor, broadcaster, tx and block relay, added nodes."""
        cfg, ctx = self.config, self.ctx
        logger.info("Initializing P2P components...")
        ctx.banman = BanMan(cfg.datadir / BANLIST_FILE, metrics=ctx.metrics,
                            discourage_time=cfg.transport.ban_time)
        connman = ctx.connman = ConnectionManager(ctx.magic, cfg.transport, listen_host=cfg.bind,
                                                  listen_port=cfg.p2p_port, metrics=ctx.metrics,
                                                  on_fatal=ctx.fatal_error, banman=ctx.banman)
        ctx.peer_manager = connman.peer_manager
        ctx.processor = NetMessageProcessor(connman, metrics=ctx.metrics,
                                            start_height=ctx.chainstate.height)
        ctx.tx_relay = TxRelayManager()
        options = {"max_retries": cfg.broadcast_retries,
                   "retry_base_s": cfg.broadcast_backoff_ms / 1000.0, **cfg.broadcaster_options}
        propagation = PropagationLog()      # the relay records, the broadcaster fills in
        announce_filters = AnnounceFilters()    # the relay publishes, the broadcaster reads
        ctx.broadcaster = AsyncBroadcaster(connman, tx_relay=ctx.tx_relay, metrics=ctx.metrics,
                                           propagation=propagation,
                                           announce_filters=announce_filters, **options)
        self._log_p2p_levers()
        accept = functools.partial(accept_to_memory_pool, ctx.chainstate, ctx.utxo_set,
                                   ctx.mempool)
        tx = TxRelay(connman, ctx.tx_relay, ctx.mempool, accept, ctx.broadcaster)
        ctx.block_relay = BlockRelay(ctx.chainstate, connman, ctx.broadcaster, tx,
                                     post=ctx.processor.post, propagation=propagation,
                                     announce_filters=announce_filters,
                                     metrics=ctx.metrics, on_fatal=ctx.fatal_error)
        ctx.added_nodes = AddedNodes(connman)
        ctx.pow_prefetch = PowPrefetch(ctx.chainstate, metrics=ctx.metrics)
        self._closer(None, ctx.pow_prefetch.close)      # after the transport has stopped
        logger.info("  [OK] P2P components ready (not started)")

    def _log_p2p_levers(self) -> None:
        """The hot-fix levers in effect: one start-up line and three gauges."""
        send_timeout_s = self.config.transport.send_timeout
        broadcaster = self.ctx.broadcaster
        logger.info(f"  P2P levers: send timeout {send_timeout_s * 1000:.0f} ms, broadcast "
                    f"retries {broadcaster.max_retries}, first retry after "
                    f"{broadcaster.retry_base_s * 1000:.0f} ms (doubled per retry)")
        self.ctx.metrics.set_p2p_levers(send_timeout_s, broadcaster.max_retries,
                                        broadcaster.retry_base_s)

    def _init_wallet_and_miner(self) -> None:
        cfg, ctx = self.config, self.ctx
        logger.info("Initializing wallet...")
        existed = (cfg.datadir / MINING_KEY_FILE).exists()
        if not existed:
            logger.info("  Generating initial address...")
        try:
            self.mining_key = load_or_create_mining_key(cfg.datadir)
        except MiningKeyError as exc:
            raise NodeStartupError(f"ERROR: {exc}")
        if existed:
            logger.info(f"  [OK] Mining key loaded: {self.mining_key.address()}")
        else:
            logger.info(f"  [OK] Initial address: {self.mining_key.address()} "
                        f"(key saved to {cfg.datadir / MINING_KEY_FILE})")
        logger.info("Initializing mining controller...")
        threads = cfg.mining_threads or default_thread_count()
        ctx.miner = _build_miner(ctx, threads, self.mining_key.pub_key_hash())
        self._closer(None, self._stop_miner)
        logger.info(f"  [OK] Mining controller initialized ({threads} threads)")

    def _wire(self) -> None:
        """Every registration of one component on another, in this order, before
        any thread starts (so no message, block or broadcast can miss a listener)."""
        ctx = self.ctx
        # The transport hands complete messages to the message processor ...
        attach_processor(ctx.connman, ctx.processor)
        # ... and every block payload, as it is queued, to the proof-of-work prefetch.
        ctx.connman.delivery_observers["block"] = ctx.pow_prefetch.offer
        # The relay's message handlers (one per job), and its handshake and disconnect
        # listeners: the one place a peer's relay state is created and dropped.
        for msg_type, fn in ctx.block_relay.handlers():
            ctx.processor.add_handler(msg_type, fn)
        ctx.processor.add_handshake_listener(ctx.block_relay.on_handshake)
        ctx.processor.add_disconnect_listener(ctx.block_relay.on_disconnect)
        # The chain's tip listeners, in the order connect_tip_listeners documents.
        connect_tip_listeners(ctx.chainstate, mempool=ctx.mempool, coins=ctx.utxo_set,
                              metrics=ctx.metrics, block_relay=ctx.block_relay, miner=ctx.miner)

    def _stop_miner(self) -> None:
        if self.ctx.miner is not None and self.ctx.miner.is_mining():
            if not self._quiet:
                logger.info("  Stopping mining...")
            self.ctx.miner.stop()

    def _start_p2p(self) -> None:
        cfg, ctx = self.config, self.ctx
        logger.info("Starting P2P networking server...")
        ctx.processor.start()
        self._closer(None, ctx.processor.stop)      # after the transport: runs last
        try:
            ctx.connman.start()
        except OSError as exc:
            raise NodeStartupError(f"Failed to bind P2P socket on port {cfg.p2p_port}",
                                   f"Error: {exc.strerror or exc}")
        self._closer("  Stopping P2P server...", self._stop_p2p)
        ctx.broadcaster.start()
        ctx.block_relay.start()
        logger.info(f"  [OK] P2P server listening on {cfg.bind}:{ctx.connman.listen_port}")

    def _stop_p2p(self) -> None:
        self.ctx.block_relay.stop()
        self.ctx.broadcaster.stop()
        self.ctx.connman.stop()

    def _connect_configured_peers(self) -> None:
        """Dial every ``--connect``/``--addnode`` entry once (``cli`` 1.7 step 18)."""
        cfg = self.config
        entries = [(e, "connect") for e in cfg.connect_nodes if e.lower() != "none"] + \
                  [(e, "addnode") for e in cfg.add_nodes]
        if not entries:
            if any(e.lower() == "none" for e in cfg.connect_nodes):
                logger.info("Outbound connections disabled (--connect=none)")
            else:
                logger.info("No --connect/--addnode given: listening only (no built-in seeds)")
            return
        if cfg.connect_nodes:
            logger.info("Initiating outbound connections...")
        for entry, kind in entries:
            logger.info(f"  {'Connecting to' if kind == 'connect' else 'Adding node'} {entry}...")
            try:
                host, port = parse_peer_entry(entry)
            except ValueError as exc:
                logger.error(str(exc))
                continue
            name = entry.rpartition(":")[0]
            if name != host:
                logger.info(f"    Resolved {name} to {host}")
            self.ctx.added_nodes.add(entry, host, port, kind)

    def _start_rpc(self) -> None:
        cfg, ctx = self.config, self.ctx
        if not cfg.rpc:
            return
        logger.info("Initializing RPC server...")
        error = cfg.rpc_access_error()
        if error is not None:
            raise NodeStartupError(error)
        if not is_loopback_host(cfg.rpcbind):
            logger.warning(f"RPC listens on {cfg.rpcbind}, not loopback; clients allowed: "
                           f"loopback and {', '.join(cfg.rpc_allow_ips)}")
        server = RPCServer(ctx, host=cfg.rpcbind, port=cfg.rpc_port, limits=cfg.rpc_limits,
                           allow_ips=cfg.rpc_allow_ips, metrics=ctx.metrics)
        try:
            server.start()
        except ConfigError as exc:
            raise NodeStartupError(f"Error: {exc}") from None
        except OSError as exc:
            raise NodeStartupError(f"Failed to start RPC server on port {cfg.rpc_port}",
                                   f"Error: {exc.strerror or exc}")
        ctx.rpc_server = server
        self._closer("  Stopping RPC server...", server.stop)
        logger.info(f"  [OK] RPC server listening on {cfg.rpcbind}:{server.port}")

    def _start_mining(self) -> None:
        cfg, miner = self.config, self.ctx.miner
        if not cfg.start_mining:
            return
        tip = self.ctx.chainstate.tip()
        logger.info("")
        logger.info("Starting mining...")
        logger.info(f"  Building on block height {tip.height}")
        logger.info(f"  Mining block height {tip.height + 1}")
        logger.info(f"  Coinbase pays: {self.mining_key.address()}")
        miner.start()
        logger.info(f"  [OK] Mining started with {miner.thread_count()} threads")

    # ------------------------------------------------------------ shutdown
    def stop(self, quiet: bool = False) -> None:
        """Stop everything that was started, newest first; close the databases last.

        Mining stops first (it feeds the chain and the broadcaster); the closers
        list is in start-up order, so walking it backwards does the rest.
        """
        self._quiet = quiet
        self.ctx.shutdown_requested.set()
        self._stop_miner()
        for line, fn in reversed(self._closers):
            if line and not quiet:
                logger.info(line)
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                logger.opt(exception=exc).error(f"Error during shutdown: {exc}")
        self._closers.clear()


# ------------------------------------------------------------ wiring helpers
def connect_tip_listeners(chain, *, mempool: TxMemPool | None = None, coins=None, metrics=None,
                          block_relay: BlockRelay | None = None,
                          miner: MiningController | None = None) -> None:
    """Register the given components as tip listeners of ``chain``, in this order.

    The chain calls its listeners one after the other on the thread that
    connected the block, so the order is a contract:

    1. the mempool drops the transactions the new blocks confirmed or
       conflicted with (and takes back those of disconnected blocks);
    2. the metrics record the new height;
    3. the block relay announces the new tip to peers;
    4. the miner, last, invalidates its template: its workers rebuild it from
       the mempool step 1 has already cleaned, never with a confirmed
       transaction (a block the chain would refuse).

    Callers that add components later (tests, tools) call it again with the
    later ones; they must keep this order.
    """
    if mempool is not None:
        chain.add_tip_listener(functools.partial(mempool.on_tip_changed, coins=coins))
    for component in (metrics, block_relay, miner):
        if component is not None:
            chain.add_tip_listener(component.on_tip_changed)


def attach_processor(connman: ConnectionManager, processor: NetMessageProcessor) -> None:
    """Make ``processor`` the sink of ``connman``'s complete messages (before ``start``)."""
    connman.sink = processor


def _build_miner(ctx: NodeContext, threads: int, pub_key_hash: bytes) -> MiningController:
    return MiningController(ctx.chainstate, ctx.hasher, pub_key_hash, threads,
                            mempool=ctx.mempool, metrics=ctx.metrics,
                            randomx_mode=ctx.randomx_mode, on_fatal=ctx.fatal_error)


def miner_for(ctx: NodeContext, threads: int = 0,
              pub_key_hash: bytes | None = None) -> MiningController:
    """A miner on a partial node's context (tests, benchmarks), its tip listener
    registered after those already on the chain (see :func:`connect_tip_listeners`).

    Without ``pub_key_hash`` it pays the datadir's mining key (created if missing).
    """
    if ctx.chainstate is None:
        raise RuntimeError("a miner needs ctx.chainstate")
    if pub_key_hash is None:
        pub_key_hash = load_or_create_mining_key(ctx.datadir).pub_key_hash()
    miner = _build_miner(ctx, threads, pub_key_hash)
    connect_tip_listeners(ctx.chainstate, miner=miner)
    return miner
