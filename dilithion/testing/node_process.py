"""The one node-process wrapper of the repository: a ``dilithion-node`` in a datadir of its own.

The tests (``tests/framework``), ``dilithion-lab``, ``dilithion-diff`` and the
benchmarks all start node processes through :class:`NodeProcess`, so a fix to
how a node is started, stopped, waited for or queried is made here once:

* ports from the harness allocator (:mod:`dilithion.testing.ports`), chosen at
  construction and kept across restarts (peers that keep this node added find
  it again);
* ``start`` waits for the node's ready line or its early exit, which raises
  :class:`TargetError` with the tail of its log; an early exit because a port
  was taken (``Address already in use``) starts it again on new ports, here
  and nowhere else (:data:`PORT_RETRIES`);
* ``stop`` is SIGTERM with a bounded wait, then SIGKILL; ``kill``; ``restart``;
* the output goes to files in the work directory that every run appends to,
  with the offset where the current run starts (``log_text``, ``log_lines``,
  ``wait_for_log``);
* RPC with the datadir's cookie (``dilithion-cli``'s client), metrics scraped
  from the HTTP endpoint and parsed from the Prometheus text format.

Two kinds: :class:`PythonNode` (our ``dilithion-node`` beside the running
interpreter, any network) here, and ``CppNode`` (the C++ binary by path) in
:mod:`dilithion.testing.cpp_node`.  A caller that needs more (the tests'
``TestNode`` interface, the lab's process resources) adapts an instance of one
of them; it does not start processes of its own.

Each instance is driven by one thread at a time (its owner: a test, a lab
scenario, one side of the diff); nothing in it is shared between instances.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dilithion.rpc.auth import read_cookie
from dilithion.rpc.client import RPCClient, RPCClientError
from dilithion.testing.ports import free_port

__all__ = ["NodeProcess", "PythonNode", "TargetError", "LogFile", "MetricKey", "metric_key",
           "cookie_rpc", "parse_metrics", "python_node_binary", "run_python_node", "READY_LINE",
           "START_TIMEOUT_S", "STOP_TIMEOUT_S", "PORT_RETRIES", "PORT_IN_USE"]

#: What both nodes print once every listener is up (the C++ wording, kept by ours).
READY_LINE = "Node Status: RUNNING"
#: A liveness guard only: our node starts in 2-3 s, but a machine busy with other
#: work has taken over 30 s (RandomX cache set-up starved of CPU), and the diff
#: has always given the C++ node two minutes.
START_TIMEOUT_S = 120.0
#: How long a SIGTERMed node may take to shut down before it is SIGKILLed; ours
#: exits within a second or two, the C++ node's clean shutdown can hang on
#: blocked threads.
STOP_TIMEOUT_S = 15.0
#: How many times a start that lost a port to another program is tried again on
#: new ports.  The allocator leaves only programs outside the harness binding a
#: pooled port in the moment before the node does: one retry would do, three
#: keep a rare second clash from failing a run.
PORT_RETRIES = 3
#: What the operating system says (and both nodes print) when a port is taken.
PORT_IN_USE = "Address already in use"
#: How often ``start`` and ``wait_for_log`` look at the log again.
POLL_S = 0.05

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


class TargetError(Exception):
    """A node that cannot be started or reached; ``str()`` is the one line to print."""


def metric_key(name: str, labels: dict) -> MetricKey:
    """``(name, sorted (label, value) pairs)``: how a sample is looked up."""
    return name, tuple(sorted((k, str(v)) for k, v in labels.items()))


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Every sample of a Prometheus text exposition, keyed by :func:`metric_key`."""
    return {metric_key(sample.name, sample.labels): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def cookie_rpc(datadir: Path, rpc_port: int, method: str, params=None, timeout: float = 30.0):
    """One JSON-RPC call on ``127.0.0.1:<rpc_port>`` with ``datadir``'s cookie (none when
    there is no cookie file, as for the C++ node), as ``dilithion-cli`` makes it;
    errors raise ``dilithion.rpc.client.RPCClientError``."""
    cookie = read_cookie(datadir)
    user, password = cookie if cookie else (None, None)
    return RPCClient("127.0.0.1", rpc_port, user, password, timeout=timeout,
                     max_request_bytes=None).call(method, params)


def python_node_binary() -> Path:
    """Our ``dilithion-node``: the script beside the running interpreter (the venv
    that runs the tests or the tool), else the one on ``PATH``."""
    here = Path(sys.executable).parent / "dilithion-node"
    if here.exists():
        return here
    found = shutil.which("dilithion-node")
    if not found:
        raise TargetError("dilithion-node not found next to this Python or on PATH")
    return Path(found)


class LogFile:
    """One output file that every run appends to, and the offset where the current run starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_offset = 0

    def text(self) -> str:
        """Every run's output."""
        try:
            return self.path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def new_run(self) -> None:
        self.run_offset = self.path.stat().st_size if self.path.exists() else 0

    def run_text(self) -> str:
        """The current run's output (since the last ``new_run``)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.run_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class NodeProcess:
    """One node process: ``start`` -> ``rpc``/``metric_samples``/``log_lines`` -> ``stop``/``kill``.

    A subclass says which program runs with which arguments (:meth:`args`,
    :meth:`program`); everything else is here.  ``command_prefix`` runs the node
    under another program that execs it (``prlimit``, ``ip netns exec``), so the
    pid is still the node's.
    """

    kind = "node"
    #: whether this node kind serves metrics (gets a metrics port)
    has_metrics = True

    def __init__(self, name: str, workdir: Path, extra_args=(), *, datadir: Path | None = None,
                 env: dict | None = None, p2p_port: int | None = None,
                 rpc_port: int | None = None, metrics_port: int | None = None,
                 command_prefix=(), separate_stderr: bool = False) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.datadir = Path(datadir) if datadir else self.workdir / name
        self.extra_args = list(extra_args)
        self.command_prefix = list(command_prefix)
        #: the process environment (default: this process's), ``PYTHONUNBUFFERED`` set
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        #: ports chosen here (none given by the caller) may be replaced after a clash;
        #: a port the caller placed is the caller's to move
        self.own_ports = p2p_port is None and rpc_port is None and metrics_port is None
        self.p2p_port = p2p_port or free_port()
        self.rpc_port = rpc_port or free_port()
        self.metrics_port = (metrics_port or free_port()) if self.has_metrics else 0
        self.log = LogFile(self.workdir / f"{name}.log")
        #: stderr in a file of its own (the node splits its log by level), else in ``log``
        self.errlog = LogFile(self.workdir / f"{name}.err") if separate_stderr else None
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        #: set by ``stop``: the node ignored SIGTERM and was killed
        self.killed_on_stop = False

    # ---- what a node kind provides ------------------------------------------------
    def program(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def args(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def ready(self) -> bool:
        """The node serves: it printed :data:`READY_LINE` in this run."""
        return READY_LINE in self.log.run_text()

    def command(self) -> list[str]:
        return [*self.command_prefix, *self.program(), *self.args()]

    @property
    def log_path(self) -> Path:
        return self.log.path

    @property
    def p2p_address(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    # ---- lifecycle ----------------------------------------------------------------
    def fresh(self) -> None:
        """Use a new, empty datadir from the next :meth:`start` on."""
        self.generation += 1
        self.datadir = self.workdir / f"{self.name}-{self.generation}"

    def launch(self) -> "NodeProcess":
        """Start the process and return at once (:meth:`wait_ready` waits for it)."""
        if self.is_running():
            raise TargetError(f"{self.name}: already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log.new_run()
        with open(self.log.path, "ab") as out:
            err_file = open(self.errlog.path, "ab") if self.errlog else None
            try:
                if self.errlog:
                    self.errlog.new_run()
                self.proc = subprocess.Popen(
                    self.command(), stdout=out, stderr=err_file or subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=self.env, cwd=self.workdir,
                    start_new_session=True)     # a Ctrl+C reaches the tool, which stops its nodes
            finally:
                if err_file:
                    err_file.close()
        self.killed_on_stop = False
        return self

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT_S) -> "NodeProcess":
        """Start; with ``wait``, return once the node is ready (:meth:`wait_ready`)."""
        self.launch()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait for the ready line; an early exit raises :class:`TargetError` with the log
        tail, except an exit because a port was taken, which starts again on new ports."""
        deadline = time.monotonic() + timeout
        for attempt in range(PORT_RETRIES + 1):
            while self.proc.poll() is None and not self.ready():
                if time.monotonic() > deadline:
                    self.kill()
                    raise TargetError(f"node {self.name} did not start within {timeout:g} s;"
                                      f" log tail: {self.log_tail(5, ' | ')}")
                time.sleep(POLL_S)
            if self.proc.poll() is None:
                return
            if attempt < PORT_RETRIES and self.own_ports and PORT_IN_USE in self.log_text():
                self.new_ports()
                self.launch()
                continue
            raise TargetError(f"node {self.name} failed to start (exit {self.proc.returncode});"
                              f" log tail: {self.log_tail(5, ' | ')}")

    def new_ports(self) -> None:
        """Every port replaced by a new one of the allocator (after a clash)."""
        self.p2p_port, self.rpc_port = free_port(), free_port()
        if self.has_metrics:
            self.metrics_port = free_port()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """The exit code once the process ended (raises ``subprocess.TimeoutExpired``)."""
        return self.proc.wait(timeout=timeout)

    def settle_exit(self, seconds: float = 0.2) -> None:
        """Give a process that is exiting the moment it needs to be seen as exited."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (the node's own shutdown); SIGKILL after ``timeout``
        (``killed_on_stop`` says so).  The exit code; None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed_on_stop = True
                self.kill()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL (no shutdown code runs) and reap; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=10)

    def restart(self, extra_args=None) -> "NodeProcess":
        """Clean stop, then start on the same datadir and ports (new flags if given)."""
        if self.is_running():
            self.stop()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        return self.start()

    # ---- output -------------------------------------------------------------------
    def log_text(self, all_runs: bool = False) -> str:
        """What the node printed in this run (``all_runs``: every run on this work
        directory): stdout, then stderr when that has a file of its own."""
        files = [self.log, *([self.errlog] if self.errlog else [])]
        return "".join(f.text() if all_runs else f.run_text() for f in files)

    def log_lines(self, pattern: str, all_runs: bool = False) -> list[str]:
        """The lines of the log that match the regular expression ``pattern``."""
        regex = re.compile(pattern)
        return [line for line in self.log_text(all_runs).splitlines() if regex.search(line)]

    def wait_for_log(self, pattern: str, timeout: float = 10.0, regex: bool = False) -> str:
        """Wait until this run's log holds ``pattern`` (a substring, or with ``regex``
        a regular expression searched in the whole text); the text that matched.
        :class:`TargetError` with the log tail if the node exits or time runs out."""
        def found() -> str | None:
            text = self.log_text()
            if regex:
                match = re.search(pattern, text)
                return match.group(0) if match else None
            return pattern if pattern in text else None

        deadline = time.monotonic() + timeout
        while (hit := found()) is None:
            if not self.is_running() or time.monotonic() > deadline:
                hit = found()               # a last look: the exit may have flushed it
                if hit is not None:
                    return hit
                state = "not logged" if self.is_running() else "not logged before the node exited"
                raise TargetError(f"{self.name}: {pattern!r} {state}: {self.log_tail(5, ' | ')}")
            time.sleep(POLL_S)
        return hit

    def log_tail(self, lines: int = 20, sep: str = "\n") -> str:
        """The last lines of this run's output; an error line printed before a usage text
        (an unknown option) is put first, since it says what went wrong."""
        all_lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        tail = all_lines[-lines:]
        errors = [ln for ln in all_lines if ln.startswith(("Unknown option", "Error", "error"))
                  or (" ERROR " in ln and not ln.startswith("-"))]
        if errors and errors[-1] not in tail:
            tail = [errors[-1], "...", *tail[-max(lines - 2, 1):]]
        return sep.join(tail) or "(empty log)"

    # ---- queries ------------------------------------------------------------------
    def rpc(self, method: str, params=None, timeout: float = 30.0):
        """One JSON-RPC call with the datadir's cookie (:func:`cookie_rpc`)."""
        return cookie_rpc(self.datadir, self.rpc_port, method, params, timeout)

    def metrics_text(self) -> str:
        """The metrics endpoint's reply (Prometheus text format)."""
        if not self.has_metrics:
            raise TargetError(f"{self.name}: a {self.kind} node serves no metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as reply:
            return reply.read().decode()

    def metric_samples(self) -> dict[MetricKey, float]:
        """Every metric sample: ``{(name, sorted (label, value) pairs): value}``."""
        return parse_metrics(self.metrics_text())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} p2p={self.p2p_port}>"


class PythonNode(NodeProcess):
    """Our ``dilithion-node`` (:func:`python_node_binary`) on ``network``.

    ``connect``: None passes no ``--connect`` (the node's default); a list passes
    one ``--connect`` per address, ``--connect=none`` when empty (the lab appends
    its links after construction).  ``bind`` is the P2P listen address.
    ``explicit_ports=False`` passes ``extra_args`` only (the node's own defaults).
    ``light_randomx`` sets ``DIL_RANDOMX=light`` unless the environment sets it: a
    2 GiB full-mode dataset per node costs more than the work it is started for
    (hashes are the same either way).  ``node_program`` runs another program in
    place of ``dilithion-node`` with the same arguments (the tests' defective
    nodes, ``tests/defective_node.py``); None: the real node.
    """

    kind = "python"

    def __init__(self, name: str, workdir: Path, extra_args=(), *, network: str = "regtest",
                 connect: list[str] | None = None, bind: str | None = None,
                 explicit_ports: bool = True, light_randomx: bool = False,
                 node_program: list[str] | None = None, **kw) -> None:
        super().__init__(name, workdir, extra_args, **kw)
        self.node_program = list(node_program) if node_program else None
        self.network = network
        self.connect = None if connect is None else list(connect)
        self.bind = bind
        self.explicit_ports = explicit_ports
        if light_randomx:
            self.env.setdefault("DIL_RANDOMX", "light")

    def program(self) -> list[str]:
        return self.node_program or [str(python_node_binary())]

    def args(self) -> list[str]:
        if not self.explicit_ports:
            return list(self.extra_args)
        connect = ([] if self.connect is None
                   else [f"--connect={c}" for c in self.connect] or ["--connect=none"])
        bind = [f"--bind={self.bind}"] if self.bind else []
        return [f"--{self.network}", f"--datadir={self.datadir}", *bind,
                f"--port={self.p2p_port}", f"--rpcport={self.rpc_port}",
                f"--metrics-port={self.metrics_port}", *connect, *self.extra_args]

    def tip(self, names: dict[str, str] | None = None) -> tuple[str, int]:
        """The active tip ``(hash, height)`` from RPC (``names`` is for the C++ node's
        sake); :class:`TargetError` when the RPC fails."""
        try:
            return str(self.rpc("getbestblockhash")), int(self.rpc("getblockcount"))
        except RPCClientError as exc:
            raise TargetError(f"{self.name} node: RPC failed: {exc}") from None


def run_python_node(args: list[str], timeout: float = 30.0, env: dict | None = None,
                    cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run our ``dilithion-node`` to completion with ``args`` (its flag-error and
    ``--help`` paths, which exit before they serve)."""
    return subprocess.run([str(python_node_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
