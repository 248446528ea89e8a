"""``dilithion-node``: the node program (``src/node/dilithion-node.cpp``, ``cli`` 1).

Start-up prints the C++ operator lines in the C++ order (``cli`` 1.7), assembles the
node with :class:`~dilithion.node.init.NodeAssembly`, runs a one-second main loop and shuts
down on SIGINT/SIGTERM or RPC ``stop``.  Deliberate differences from the C++:

* no built-in public seeds: without ``--connect``/``--addnode`` the node
  listens and dials nobody (``cli`` 1.11); with no arguments at all it starts a
  local regtest miner instead of joining the public testnet (``cli`` 1.5);
* the default data directory is under the home directory, not the working
  directory (``cli 6.1.8``, ``chain D38``);
* host names in ``--connect``/``--addnode`` are resolved, not an abort
  (``cli 6.1.4``); configured peers are redialled with back-off when dropped;
* numbers must be whole numbers (no ``stoi`` leniency) and ``--help`` exits 0
  (``cli 6.1.5``); every start-up failure exits 1 instead of aborting (1.10);
* the signal handler only sets an event; the main thread does the stopping
  (``cli 6.1.6``), and shutdown takes about a second, not up to 30 s (6.1.7);
* the P2P listener binds 127.0.0.1 on regtest and 0.0.0.0 on mainnet/testnet
  (``--bind`` overrides); RPC binds 127.0.0.1 unless ``--rpcbind`` says otherwise.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import click
from loguru import logger

from dilithion.core.env import EnvError
from dilithion.node.context import NodeContext
from dilithion.node.init import BANNER_RULE, VERSION, NodeAssembly, NodeConfig, NodeStartupError
from dilithion.node.logging_setup import LOG_FORMATS, LogSetupError, configure_logging
from dilithion.node.memdump import SnapshotDumper
from dilithion.node.metrics import DEFAULT_METRICS_PORT
from dilithion.net.async_broadcaster import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF_MS
from dilithion.rpc.httpserver import HTTPLimits

__all__ = ["DilithionNode", "parse_port", "parse_threads", "main", "cli", "quick_start_config"]

#: How often pooled transactions past their expiry age are dropped (chain D40).
MEMPOOL_EXPIRY_INTERVAL = 60.0
#: The main loop prints the hash rate this often (the C++ prints every 10th iteration).
HASH_RATE_LOG_INTERVAL = 10.0


def _parse_int(text: str, arg: str, kind: str, low: int, high: int) -> int:
    """Whole decimal number in ``[low, high]`` with the C++ error wording (``cli`` 1.3).

    Unlike ``std::stoi`` trailing junk is refused (``cli 6.1.5``).
    """
    body = text.strip()
    digits = body[1:] if body[:1] in "+-" else body
    if not digits.isascii() or not digits.isdigit():
        raise click.BadParameter(_FORMAT_ERRORS[kind].format(arg=arg))
    value = int(body)
    if not -2**31 <= value < 2**31:
        raise click.BadParameter(_RANGE_ERRORS[kind].format(arg=arg))
    if not low <= value <= high:
        raise click.BadParameter(_BOUNDS_ERRORS[kind].format(arg=arg, low=low, high=high))
    return value


_BOUNDS_ERRORS = {"rpc": "Error: Invalid RPC port (must be 1-65535): {arg}",
                  "p2p": "Error: Invalid P2P port (must be 1-65535): {arg}",
                  "metrics": "Error: Invalid metrics port (must be 1-65535): {arg}",
                  "threads": "Error: Invalid thread count (must be 1-256 or 'auto'): {arg}",
                  "recvbuf": "Error: Invalid receive buffer size (must be 8-65536 MiB): {arg}",
                  "pingtimeout": "Error: Invalid ping timeout (must be 1-3600 seconds): {arg}",
                  "rpclimit": "Error: Invalid RPC limit (must be {low}-{high}): {arg}"}
_FORMAT_ERRORS = {"rpc": "Error: Invalid RPC port format (not a number): {arg}",
                  "p2p": "Error: Invalid P2P port format (not a number): {arg}",
                  "metrics": "Error: Invalid metrics port format (not a number): {arg}",
                  "threads": "Error: Invalid thread count (must be a number or 'auto'): {arg}",
                  "recvbuf": "Error: Invalid receive buffer size (not a number of MiB): {arg}",
                  "pingtimeout": "Error: Invalid ping timeout (not a number of seconds): {arg}",
                  "rpclimit": "Error: Invalid RPC limit (not a number): {arg}"}
_RANGE_ERRORS = {"rpc": "Error: RPC port number out of range: {arg}",
                 "p2p": "Error: P2P port number out of range: {arg}",
                 "metrics": "Error: Metrics port number out of range: {arg}",
                 "threads": "Error: Thread count number out of range: {arg}",
                 "recvbuf": "Error: Receive buffer size out of range: {arg}",
                 "pingtimeout": "Error: Ping timeout out of range: {arg}",
                 "rpclimit": "Error: RPC limit out of range: {arg}"}


def parse_port(text: str, option: str, kind: str) -> int:
    """A port in 1-65535 (C++ ``MIN_PORT``-``MAX_PORT``); ``click.BadParameter`` otherwise."""
    return _parse_int(text, f"{option}={text}", kind, 1, 65535)


def parse_threads(text: str) -> int:
    """``auto``/``AUTO`` → 0 (every CPU), else 1-256.

    C++: ``MIN_MINING_THREADS``-``MAX_MINING_THREADS``.
    """
    if text in ("auto", "AUTO"):
        return 0
    return _parse_int(text, f"--threads={text}", "threads", 1, 256)


class _PortType(click.ParamType):
    name = "port"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        return parse_port(value, f"--{param.name.replace('_', '-')}" if param else "--port",
                          self.kind)


class _BoundedIntType(click.ParamType):
    """A whole number in ``[low, high]`` with the C++-style error wording."""

    def __init__(self, kind: str, option: str, low: int, high: int) -> None:
        self.kind, self.option, self.low, self.high = kind, option, low, high
        self.name = kind

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        return _parse_int(value, f"{self.option}={value}", self.kind, self.low, self.high)


class _ThreadsType(click.ParamType):
    name = "n|auto"

    def convert(self, value, param, ctx):
        return value if isinstance(value, int) else parse_threads(value)


def usage_text(prog: str) -> str:
    """The usage text: the C++ layout, with this node's flags and defaults (``PrintUsage``)."""
    return f"""Dilithion Node v{VERSION} - Post-Quantum Cryptocurrency (Python reference node)

Usage: {prog} [options]

QUICK START:
  {prog}              No arguments = local regtest node that mines
                            • Regtest network (private, coins have no value)
                            • Data directory ~/.dilithion-regtest
                            • Connects to nobody, 1 mining thread

Options:
  --mainnet             Use mainnet (the default; for scripts that name the network)
  --testnet             Use testnet
  --regtest             Use the local regression-test network (Python only)
  --datadir=<path>      Data directory (default: ~/<network directory>)
  --port=<port>         P2P network port (default: network-specific)
  --bind=<ip>           P2P listen address (default: 127.0.0.1 regtest, 0.0.0.0 otherwise)
  --rpcport=<port>      RPC server port (default: network-specific)
  --rpcbind=<ip>        RPC listen address (default: 127.0.0.1); not loopback needs --rpcallowip
  --rpcallowip=<ip|subnet> Also accept RPC clients from here (repeatable; loopback always)
  --rpcthreads=<n>      RPC worker threads (default: 4)
  --rpcworkqueue=<n>    RPC requests waiting for a worker before 503 (default: 64)
  --rpcmaxconnections=<n> Open RPC connections at most (default: 128; more wait to be accepted)
  --rpcservertimeout=<s> Whole-request deadline, headers and body (default: 30)
  --rpcidletimeout=<s>  Close a keep-alive RPC connection idle this long (default: 30)
  --connect=<host:port> Connect to node (repeatable; --connect=none dials nobody)
  --addnode=<host:port> Add node to connect to (repeatable)
  --mine                Start mining automatically
  --threads=<n|auto>    Mining threads (number or 'auto' = every CPU)
  --strict              Apply the intended consensus rules the C++ node skips
  --randomx=<mode>      RandomX mode: light (256 MiB), full (2080 MiB dataset, about 8x
                        faster hashing, built in the background) or auto (default: full
                        when mining and 2.6 GiB are free, else light; or $DIL_RANDOMX)
  --maxreceivebuffer=<MiB> Node-wide memory for peers' unfinished and unprocessed
                        messages (default: 64; the largest holder is disconnected)
  --pingtimeout=<s>     Disconnect a peer that leaves a ping unanswered this long
                        (default: 30; a ping goes out every 30 s)
  --metrics-port=<port> Serve Prometheus metrics on this port
  --metrics-bind=<ip>   Metrics listen address (default: 127.0.0.1)
  --log-level=<level>   TRACE, DEBUG, INFO, WARNING or ERROR (default: INFO or $DIL_LOG_LEVEL)
  --log-format=<fmt>    text (the C++-style lines) or json (one object per line, for log
                        stores) (default: text or $DIL_LOG_FORMAT)
  --nologratelimit      Write every log line (default: rate-limited per source line and
                        peer, 8 MiB an hour in all; or DIL_LOG_RATELIMIT=0)
  --help, -h            Show this help message

Network Defaults:
  Mainnet:  datadir=~/.dilithion         port=8444  rpcport=8332
  Testnet:  datadir=~/.dilithion-testnet port=18444 rpcport=18332
  Regtest:  datadir=~/.dilithion-regtest port=19444 rpcport=19332

No public seed nodes are built in: without --connect/--addnode the node only listens.

Environment:
  DIL_LOG_LEVEL         default log level
  DIL_LOG_FORMAT        default for --log-format (text or json)
  DIL_RANDOMX           default for --randomx (light, full or auto)
  DIL_P2P_LOG=1         log every P2P message sent and received (at any log level)
  DIL_METRICS_ENABLED=1 serve metrics without --metrics-port, on DIL_METRICS_PORT=<port>
                        (default: {DEFAULT_METRICS_PORT})
  DIL_SEND_TIMEOUT=<ms> disconnect a peer whose send queue takes no byte this long
                        (1-3600000; default: 10000 mainnet, 5000 testnet/regtest)
  DIL_BROADCAST_RETRIES=<n> retries of a block/tx announcement a peer's full send
                        queue refused (0-20; default: {DEFAULT_MAX_RETRIES})
  DIL_BROADCAST_BACKOFF_MS=<ms> delay before the first such retry, doubled per
                        retry (1-60000; default: {DEFAULT_RETRY_BACKOFF_MS})

Post-Quantum Security Stack:
  Mining:      RandomX (CPU-friendly, ASIC-resistant)
  Signatures:  CRYSTALS-Dilithium3 / ML-DSA-65 (NIST PQC standard)
  Hashing:     SHA-3/Keccak-256 (quantum-resistant)
"""


# --------------------------------------------------------------------------- the node
class DilithionNode:
    """The node program around one :class:`NodeAssembly`: the start-up banner,
    signals, the one-second main loop and the shutdown lines.

    Owned by the main thread.  Other threads touch it only through
    ``ctx.shutdown_requested`` (signal handler, RPC ``stop``).
    C++: ``struct NodeState``, whose running flag is the stop request here.
    """

    def __init__(self, config: NodeConfig, log_limiter=None) -> None:
        config.apply_defaults()
        self.config = config
        #: The log sinks' rate limiter (``configure_logging``), shown in the metrics.
        self.log_limiter = log_limiter
        self._signal: int | None = None
        #: ``ctx.shutdown_requested``: exists before start-up so an early signal
        #: is not lost (``cli 6.1.6``).
        self._stop_event = threading.Event()
        self.ctx = NodeContext(chain_params=config.params, datadir=config.datadir, hasher=None,
                               strict=config.strict, shutdown_requested=self._stop_event)
        self.assembly = NodeAssembly(config, self.ctx)

    # ---- lifecycle ---------------------------------------------------------
    def run(self) -> int:
        """Start, loop until asked to stop, shut down; the process exit status."""
        self.install_signal_handlers()
        try:
            self.start()
        except NodeStartupError as exc:
            for line in exc.lines:
                logger.error(line)
            self.shutdown(quiet=True)
            return 1
        except Exception as exc:  # noqa: BLE001 - any start-up failure is one message + exit 1
            logger.opt(exception=exc).error(f"Fatal error: {exc}")
            self.shutdown(quiet=True)
            return 1
        try:
            self.main_loop()
        finally:
            self.shutdown()
        return 1 if self.ctx.fatal_reason else 0

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        """Only records the request: the main loop does the work (``cli 6.1.6``).

        C++: ``SignalHandler``.
        """
        self._signal = signum
        self._stop_event.set()

    def start(self) -> None:
        cfg = self.config
        for line in (BANNER_RULE, f"Dilithion Node v{VERSION}", "Post-Quantum Cryptocurrency",
                     BANNER_RULE, ""):
            logger.info(line)
        logger.info({"mainnet": "Network: MAINNET",
                     "testnet": "Network: TESTNET (256x easier difficulty)",
                     "regtest": "Network: REGTEST (local test network, Python only)"}[cfg.network])
        logger.info(f"Data directory: {cfg.datadir}")
        logger.info(f"P2P port: {cfg.p2p_port}")
        logger.info(f"RPC port: {cfg.rpc_port}")
        if cfg.connect_nodes:
            logger.info(f"Connect to: {', '.join(cfg.connect_nodes)}")
        if cfg.add_nodes:
            logger.info(f"Additional nodes: {', '.join(cfg.add_nodes)}")
        if cfg.strict:
            logger.info("Consensus: --strict (intended rules the C++ node skips)")
        logger.info("")
        self.assembly.start()
        if self.log_limiter is not None:
            self.ctx.metrics.watch_log_limiter(self.log_limiter)
        for line in ("", BANNER_RULE, "Node Status: RUNNING", BANNER_RULE, "", "RPC Interface:",
                     f"  URL: http://{cfg.rpcbind}:{self.ctx.rpc_server.port}",
                     "  Methods: see `dilithion-cli help`", "",
                     "Press Ctrl+C to stop", ""):
            logger.info(line)

    # ---- main loop and shutdown ------------------------------------------------
    def main_loop(self) -> None:
        """Once a second: redial configured peers; every 10 s log the hash rate;
        with ``DIL_TRACEMALLOC_DUMP_S`` set, write heap snapshots (``memdump``)."""
        ctx = self.ctx
        next_rate_log = time.monotonic() + HASH_RATE_LOG_INTERVAL
        next_expiry = time.monotonic() + MEMPOOL_EXPIRY_INTERVAL
        dumper = SnapshotDumper.from_env(self.config.datadir)
        while not ctx.shutdown_requested.wait(1.0):
            if dumper is not None:
                dumper.maybe_dump()
            try:
                ctx.added_nodes.maintain()
            except Exception as exc:  # noqa: BLE001 - one bad redial must not end the node
                logger.opt(exception=exc).error(f"[P2P] Redialling configured peers failed: {exc}")
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + MEMPOOL_EXPIRY_INTERVAL
                ctx.mempool.expire()
            if ctx.miner.is_mining() and time.monotonic() >= next_rate_log:
                next_rate_log = time.monotonic() + HASH_RATE_LOG_INTERVAL
                logger.info(f"[Mining] Hash rate: {ctx.miner.get_hash_rate():.0f} H/s, "
                            f"Total hashes: {ctx.miner.total_hashes()}")

    def shutdown(self, quiet: bool = False) -> None:
        """Stop everything that was started, newest first; close the databases last."""
        if self._signal is not None:
            logger.info("")
            logger.info(f"Received signal {self._signal}, shutting down gracefully...")
        if not quiet:
            logger.info("")
            logger.info("Shutting down...")
        self.assembly.stop(quiet=quiet)
        if not quiet:
            logger.info("")
            logger.info("Dilithion node stopped cleanly")


# --------------------------------------------------------------------------- command line
class _NodeCommand(click.Command):
    """Replaces click's error handling: C++ messages on stderr, usage on stdout, exit 1."""

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        prog = prog_name or os.path.basename(sys.argv[0]) or "dilithion-node"
        if not args:
            sys.exit(main(quick_start_config()))
        try:
            return super().main(args, prog_name=prog, standalone_mode=False, **extra)
        except click.NoSuchOption as exc:
            message = f"Unknown option: {_offending_arg(args, exc.option_name)}"
        except click.BadParameter as exc:
            # Our own types carry the C++ wording; click's (e.g. --log-level) get a prefix.
            message = exc.message if exc.message.startswith("Error: ") \
                else f"Error: {exc.format_message()}"
        except click.UsageError as exc:
            message = f"Error: {exc.format_message()}"
            extra_arg = next((a for a in args if not a.startswith("-")), None)
            if "unexpected extra argument" in exc.format_message() and extra_arg:
                message = f"Unknown option: {extra_arg}"
        except click.Abort:
            sys.exit(1)
        click.echo(message, err=True)
        click.echo(usage_text(prog))
        sys.exit(1)


def _offending_arg(args: list[str], option_name: str) -> str:
    return next((a for a in args if a == option_name or a.startswith(option_name + "=")),
                option_name)


def _show_help(ctx: click.Context, param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(usage_text(ctx.info_name or "dilithion-node"))
        ctx.exit(0)


def quick_start_config() -> NodeConfig:
    """No arguments: a local regtest node that mines with one thread (``cli`` 1.5)."""
    return NodeConfig(network="regtest", start_mining=True, mining_threads=1, quick_start=True)


@click.command(cls=_NodeCommand, context_settings={"help_option_names": []})
@click.option("--mainnet", is_flag=True)
@click.option("--testnet", is_flag=True)
@click.option("--regtest", is_flag=True)
@click.option("--datadir", type=str, default=None)
@click.option("--port", "port", type=_PortType("p2p"), default=None)
@click.option("--rpcport", type=_PortType("rpc"), default=None)
@click.option("--bind", type=str, default=None)
@click.option("--rpcbind", type=str, default="127.0.0.1")
@click.option("--connect", multiple=True)
@click.option("--addnode", multiple=True)
@click.option("--mine", is_flag=True)
@click.option("--threads", type=_ThreadsType(), default="auto")
@click.option("--strict", is_flag=True)
@click.option("--randomx", type=click.Choice(["light", "full", "auto"], case_sensitive=False),
              default=None)
@click.option("--maxreceivebuffer", type=_BoundedIntType("recvbuf", "--maxreceivebuffer", 8, 65536),
              default=None)
@click.option("--pingtimeout", type=_BoundedIntType("pingtimeout", "--pingtimeout", 1, 3600),
              default=None)
@click.option("--rpcallowip", multiple=True)
@click.option("--rpcthreads", type=_BoundedIntType("rpclimit", "--rpcthreads", 1, 64), default=4)
@click.option("--rpcworkqueue", type=_BoundedIntType("rpclimit", "--rpcworkqueue", 1, 65536),
              default=64)
@click.option("--rpcmaxconnections", type=_BoundedIntType("rpclimit", "--rpcmaxconnections", 1,
                                                          65536), default=128)
@click.option("--rpcservertimeout", type=_BoundedIntType("rpclimit", "--rpcservertimeout", 1,
                                                         3600), default=30)
@click.option("--rpcidletimeout", type=_BoundedIntType("rpclimit", "--rpcidletimeout", 1, 3600),
              default=30)
@click.option("--metrics-port", type=_PortType("metrics"), default=None)
@click.option("--metrics-bind", type=str, default="127.0.0.1")
@click.option("--log-level", type=click.Choice(["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING",
                                                "ERROR", "CRITICAL"], case_sensitive=False),
              default=None)
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False), default=None)
@click.option("--logratelimit/--nologratelimit", "log_rate_limit", default=None)
@click.option("--help", "-h", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_help)
def cli(mainnet, testnet, regtest, datadir, port, rpcport, bind, rpcbind, connect, addnode, mine,
        threads, strict, randomx, maxreceivebuffer, pingtimeout, rpcallowip, rpcthreads, rpcworkqueue,
        rpcmaxconnections, rpcservertimeout, rpcidletimeout, metrics_port, metrics_bind,
        log_level, log_format, log_rate_limit):
    """Run a Dilithion node.\f

    C++: ``NodeConfig::ParseArgs`` (click stops the help text at the form feed).
    ``--mainnet`` only names the default network (the readiness plan's runbooks
    say it); naming two networks is a usage error.
    """
    named = [f"--{name}" for name, on in (("mainnet", mainnet), ("testnet", testnet),
                                          ("regtest", regtest)) if on]
    if len(named) > 1:
        raise click.UsageError(f"{', '.join(named[:-1])} and {named[-1]} cannot be combined")
    config = NodeConfig(
        network="testnet" if testnet else "regtest" if regtest else "mainnet",
        datadir=Path(datadir) if datadir else None, p2p_port=port, rpc_port=rpcport,
        bind=bind, rpcbind=rpcbind, connect_nodes=list(connect), add_nodes=list(addnode),
        start_mining=mine, mining_threads=threads, strict=strict,
        randomx=randomx.lower() if randomx else None, metrics_port=metrics_port,
        metrics_bind=metrics_bind, log_level=log_level,
        log_format=log_format.lower() if log_format else None, log_rate_limit=log_rate_limit,
        max_receive_buffer_mib=maxreceivebuffer,
        ping_timeout=pingtimeout, rpc_allow_ips=list(rpcallowip),
        rpc_limits=HTTPLimits(threads=rpcthreads, work_queue=rpcworkqueue,
                              max_connections=rpcmaxconnections,
                              request_timeout=float(rpcservertimeout),
                              idle_timeout=float(rpcidletimeout)))
    sys.exit(main(config))


def main(config: NodeConfig) -> int:
    """Run a node with ``config``; the process exit status.

    Every configuration error (command line, environment) is one plain line on
    stderr, found before the log sinks exist, so a JSON log never holds one.
    """
    try:
        config.apply_defaults()
        if config.metrics_port is None and os.environ.get("DIL_METRICS_ENABLED") == "1":
            config.metrics_port = parse_port(
                os.environ.get("DIL_METRICS_PORT", str(DEFAULT_METRICS_PORT)),
                "DIL_METRICS_PORT", "metrics")
        for error in (config.randomx_error(), config.rpc_access_error()):
            if error is not None:
                click.echo(error, err=True)
                return 1
        log_limiter = configure_logging(config.log_level, log_format=config.log_format,
                                        rate_limit=config.log_rate_limit)
    except click.BadParameter as exc:
        click.echo(exc.message, err=True)
        return 1
    except (EnvError, LogSetupError) as exc:
        click.echo(str(exc), err=True)
        return 1
    if config.quick_start:
        logger.info("No arguments: quick start = local REGTEST node, mining with 1 thread, "
                    f"data directory {config.datadir} (run with --help for options)")
    return DilithionNode(config, log_limiter).run()


if __name__ == "__main__":  # pragma: no cover
    cli()
