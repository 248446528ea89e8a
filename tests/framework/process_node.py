"""``ProcessNode``: a real ``dilithion-node`` process on loopback.

Each node gets a datadir under the test's work directory and free loopback
ports (P2P, RPC, metrics), runs ``dilithion-node --regtest`` from the venv that
runs the tests, with stdout and stderr appended to files (restarts append, so a
run's log starts at a recorded offset). It is queried like an operator would:
RPC with the datadir's cookie, metrics scraped from the HTTP endpoint.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dilithion.testing.ports import free_port

from .node import MetricKey, TestNode, metric_key
from .util import wait_until

REPO = Path(__file__).resolve().parents[2]
NODE_BIN = Path(sys.executable).parent / "dilithion-node"
if not NODE_BIN.exists():
    NODE_BIN = REPO / ".venv" / "bin" / "dilithion-node"

#: A liveness guard: a node starts in 2-3 s, but a machine busy with other work has
#: taken over 30 s (RandomX cache set-up starved of CPU).
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


def run_node(args: list[str], timeout: float = 30.0, env: dict | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``dilithion-node`` to completion (for the flag-error cases)."""
    return subprocess.run([str(NODE_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


class _LogFile:
    """One appended output file and the offset where the current run starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_offset = 0

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""

    def new_run(self) -> None:
        self.run_offset = len(self.text())

    def run_text(self) -> str:
        return self.text()[self.run_offset:]


class ProcessNode(TestNode):
    """One ``dilithion-node`` process; ``start`` -> query -> ``stop``/``kill``.

    Ports are chosen at construction and kept across restarts, so peers that
    keep this node added (``--addnode``) find it again.
    """

    def __init__(self, workdir: Path, name: str, extra_args=(), datadir: Path | None = None,
                 p2p_port: int | None = None, env: dict | None = None,
                 network_args=("--regtest",), explicit_ports: bool = True) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.datadir = datadir or self.workdir / name
        self.p2p_port = p2p_port or free_port()
        self.rpc_port = free_port()
        self.metrics_port = free_port()
        self.extra_args = list(extra_args)
        self.network_args = list(network_args)
        self.explicit_ports = explicit_ports
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.stdout = _LogFile(self.workdir / f"{name}.out")
        self.stderr = _LogFile(self.workdir / f"{name}.err")
        self.proc: subprocess.Popen | None = None

    # ---- command line ---------------------------------------------------------
    def args(self) -> list[str]:
        if not self.explicit_ports:
            return list(self.extra_args)
        return [*self.network_args, f"--datadir={self.datadir}", f"--port={self.p2p_port}",
                f"--rpcport={self.rpc_port}", f"--metrics-port={self.metrics_port}",
                *self.extra_args]

    def command(self) -> list[str]:
        """The process to run (subclasses may wrap it, e.g. in ``ip netns exec``)."""
        return [str(NODE_BIN), *self.args()]

    # ---- lifecycle --------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> "ProcessNode":
        """Start; with ``wait``, return once it logged "Node Status: RUNNING"
        (its RPC server is up by then) and fail with the log if it exited instead."""
        assert not self.is_running(), f"{self.name} is already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stdout.new_run()
        self.stderr.new_run()
        with open(self.stdout.path, "ab") as out, open(self.stderr.path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err,
                                         env=self.env, cwd=self.workdir)
        if wait:
            wait_until(lambda: "Node Status: RUNNING" in self.run_output()
                       or self.proc.poll() is not None, timeout, message=self.describe)
            assert self.proc.poll() is None, self.describe()
        return self

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code once the process ended (raises ``TimeoutExpired``)."""
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT, check: bool = True) -> int | None:
        """SIGTERM and wait (the node's graceful path); returns the exit code.

        A node that does not exit within ``timeout`` is SIGKILLed so nothing
        outlives the test. With ``check`` a hang or a non-zero exit raises.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                if check:
                    raise AssertionError(f"{self.name} ignored SIGTERM for {timeout:g} s\n"
                                         + self.describe()) from None
        code = self.proc.returncode
        if check:
            assert code == 0, self.describe()
        return code

    def kill(self) -> int | None:
        """SIGKILL (no shutdown code runs) and reap; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=10)

    # ---- output -------------------------------------------------------------------
    def output(self) -> str:
        """Stdout of every run."""
        return self.stdout.text()

    def run_output(self) -> str:
        """Stdout of the current (latest) run only."""
        return self.stdout.run_text()

    def errors(self) -> str:
        """Stderr (ERROR and above, start-up failures) of every run."""
        return self.stderr.text()

    def log_text(self, all_runs: bool = False) -> str:
        """Stdout then stderr (the node splits its log by level between them)."""
        if all_runs:
            return self.output() + self.errors()
        return self.stdout.run_text() + self.stderr.run_text()

    def describe(self) -> str:
        return (f"node {self.name} rc={self.proc.poll() if self.proc else None}\n"
                f"--- stdout (tail) ---\n{self.output()[-3000:]}\n"
                f"--- stderr (tail) ---\n{self.errors()[-3000:]}")

    # ---- queries ------------------------------------------------------------------
    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as reply:
            return reply.read().decode()

    def metric_samples(self) -> dict[MetricKey, float]:
        samples = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                samples[metric_key(sample.name, sample.labels)] = sample.value
        return samples
