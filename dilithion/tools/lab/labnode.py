"""One lab node: a real ``dilithion-node`` process on loopback, queried like an operator would.

RPC with the datadir's cookie, metrics scraped from its HTTP endpoint, process
resources (RSS, descriptors, threads, CPU time) from ``psutil``.  A node that
exits before it reports ``Node Status: RUNNING`` raises :class:`LabError` with
the tail of its log; a port that is already taken is refused before starting.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from dilithion.rpc.auth import read_cookie
from dilithion.rpc.client import RPCClient
from dilithion.testing.ports import port_is_free

__all__ = ["LabError", "LabNode", "check_port_free", "node_binary"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class LabError(Exception):
    """Bad input or an environment problem: reported as one line, exit status 2."""


def node_binary() -> str:
    here = Path(sys.executable).parent / "dilithion-node"
    found = str(here) if here.exists() else shutil.which("dilithion-node")
    if not found:
        raise LabError("dilithion-node not found next to this Python or on PATH")
    return found


def check_port_free(port: int) -> None:
    if not port_is_free(port):
        raise LabError(f"port 127.0.0.1:{port} is already in use (choose another --base-port)")


class LabNode:
    """A node process; ``start`` -> ``rpc``/``metrics``/``resources`` -> ``stop``/``kill``."""

    def __init__(self, name: str, workdir: Path, ports: tuple[int, int, int],
                 network: str = "regtest", extra_args: list[str] | None = None,
                 env: dict | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.datadir = workdir / name
        self.p2p_port, self.rpc_port, self.metrics_port = ports
        self.network = network
        self.extra_args = list(extra_args or [])
        self.connect: list[str] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._ps: psutil.Process | None = None
        self._log_offset = 0

    def args(self) -> list[str]:
        connect = [f"--connect={c}" for c in self.connect] or ["--connect=none"]
        return [node_binary(), f"--{self.network}", f"--datadir={self.datadir}",
                f"--port={self.p2p_port}", f"--rpcport={self.rpc_port}",
                f"--metrics-port={self.metrics_port}", *connect, *self.extra_args]

    def start(self) -> "LabNode":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.workdir,
                                         start_new_session=True)  # Ctrl+C reaches the lab only
        self._ps = psutil.Process(self.proc.pid)
        return self

    def wait_running(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if "Node Status: RUNNING" in self.run_log():
                return
            if self.proc.poll() is not None:
                raise LabError(f"node {self.name} failed to start (exit {self.proc.returncode});"
                               f" log tail: {self.log_tail()}")
            time.sleep(0.1)
        raise LabError(f"node {self.name} did not start within {START_TIMEOUT_S:g} s;"
                       f" log tail: {self.log_tail()}")

    def run_log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of this run's log; an error line printed before a usage
        text (an unknown option) is put first, since it says what went wrong."""
        all_lines = [ln.strip() for ln in self.run_log().splitlines() if ln.strip()]
        tail = all_lines[-lines:]
        errors = [ln for ln in all_lines if ln.startswith(("Unknown option", "Error", "error"))
                  or (" ERROR " in ln and not ln.startswith("-"))]
        if errors and errors[-1] not in tail:
            tail = [errors[-1], "...", *tail[-2:]]
        return " | ".join(tail) or "(empty log)"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.is_running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.is_running():
            self.proc.kill()
            self.proc.wait(timeout=10)

    # -- queries -----------------------------------------------------------------
    def rpc(self, method: str, params=None, timeout: float = 30.0):
        cookie = read_cookie(self.datadir)
        user, password = cookie if cookie else (None, None)
        return RPCClient("127.0.0.1", self.rpc_port, user, password, timeout=timeout,
                         max_request_bytes=None).call(method, params)

    def metrics(self) -> dict[str, float]:
        """Every sample, keyed ``name`` or ``name{k=v,...}`` (labels sorted)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as reply:
            text = reply.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def resources(self) -> dict:
        """RSS (bytes), open descriptors, threads and CPU seconds of the process."""
        ps = self._ps
        with ps.oneshot():
            cpu = ps.cpu_times()
            return {"rss": ps.memory_info().rss, "fds": ps.num_fds(), "threads": ps.num_threads(),
                    "cpu_s": cpu.user + cpu.system}
