"""Real ``dilithion-node`` processes on loopback for the end-to-end tests.

Each :class:`NodeProcess` gets a temporary datadir and free loopback ports (P2P,
RPC, metrics), runs ``.venv/bin/dilithion-node`` with ``--regtest`` and output
captured to files, and is queried through the RPC helper's client transport
(cookie authentication from the datadir) and the metrics endpoint.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dilithion.rpc.auth import read_cookie
from dilithion.rpc.client import RPCClient, RPCClientError

REPO = Path(__file__).resolve().parent.parent
NODE_BIN = Path(sys.executable).parent / "dilithion-node"
if not NODE_BIN.exists():
    NODE_BIN = REPO / ".venv" / "bin" / "dilithion-node"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except RPCClientError:
            pass
        time.sleep(interval)
    return bool(predicate())


def run_node(args: list[str], timeout: float = 30.0, env: dict | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``dilithion-node`` to completion (for the flag-error cases)."""
    return subprocess.run([str(NODE_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


class NodeProcess:
    """One ``dilithion-node`` process; ``start`` → query → ``stop``/``terminate``."""

    def __init__(self, workdir: Path, name: str, extra_args: list[str] = (),
                 datadir: Path | None = None, p2p_port: int | None = None,
                 env: dict | None = None, network_args: list[str] = ("--regtest",),
                 explicit_ports: bool = True) -> None:
        self.name = name
        self.workdir = workdir
        self.datadir = datadir or workdir / name
        self.p2p_port = p2p_port or free_port()
        self.rpc_port = free_port()
        self.metrics_port = free_port()
        self.extra_args = list(extra_args)
        self.network_args = list(network_args)
        self.explicit_ports = explicit_ports
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self.proc: subprocess.Popen | None = None
        self._run_offset = 0        # where the current run's stdout starts (restarts append)

    def args(self) -> list[str]:
        if not self.explicit_ports:
            return list(self.extra_args)
        return [*self.network_args, f"--datadir={self.datadir}", f"--port={self.p2p_port}",
                f"--rpcport={self.rpc_port}", f"--metrics-port={self.metrics_port}",
                *self.extra_args]

    def command(self) -> list[str]:
        """The process to run (subclasses may wrap it, e.g. in ``ip netns exec``)."""
        return [str(NODE_BIN), *self.args()]

    def start(self, wait: bool = True, timeout: float = 30.0) -> "NodeProcess":
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        self._run_offset = len(self.output())
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err,
                                         env=self.env, cwd=self.workdir)
        if wait:
            assert wait_until(lambda: "Node Status: RUNNING" in self.run_output()
                              or self.proc.poll() is not None, timeout), self.describe()
            assert self.proc.poll() is None, self.describe()
        return self

    # ---- output --------------------------------------------------------------
    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def run_output(self) -> str:
        """Stdout of the current (latest) run only."""
        return self.output()[self._run_offset:]

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def describe(self) -> str:
        return (f"node {self.name} rc={self.proc.poll() if self.proc else None}\n"
                f"--- stdout (tail) ---\n{self.output()[-3000:]}\n"
                f"--- stderr (tail) ---\n{self.errors()[-3000:]}")

    # ---- queries -------------------------------------------------------------
    def rpc(self, method: str, params=None, timeout: float = 10.0):
        cookie = read_cookie(self.datadir)
        user, password = cookie if cookie else (None, None)
        return RPCClient("127.0.0.1", self.rpc_port, user, password, timeout=timeout,
                         max_request_bytes=None).call(method, params)

    def height(self) -> int:
        return int(self.rpc("getblockcount"))

    def best_hash(self) -> str:
        return str(self.rpc("getbestblockhash"))

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as reply:
            return reply.read().decode()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """``{(sample name, sorted label items): value}`` from the metrics endpoint."""
        samples = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    # ---- lifecycle -----------------------------------------------------------
    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Test clean-up: make sure the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
