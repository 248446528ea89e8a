"""One lab node: the harness's node process, plus what only the lab measures.

The process (datadir, ports, start, stop, kill, log, RPC, metrics) is the
harness's :class:`~dilithion.testing.node_process.PythonNode`; the lab adds the
process resources (RSS, descriptors, threads, CPU time) from ``psutil`` (an
extra of the lab, not of the harness), metrics keyed the way ``results.json``
names them, and its own error: a node that exits before it reports ``Node
Status: RUNNING`` raises :class:`LabError` with the tail of its log; a port of
``--base-port`` that is already taken is refused before starting.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from dilithion.testing.node_process import PythonNode, TargetError
from dilithion.testing.ports import port_is_free

__all__ = ["LabError", "LabNode", "check_port_free"]

START_TIMEOUT_S = 60.0


class LabError(Exception):
    """Bad input or an environment problem: reported as one line, exit status 2."""


def check_port_free(port: int) -> None:
    if not port_is_free(port):
        raise LabError(f"port 127.0.0.1:{port} is already in use (choose another --base-port)")


class LabNode(PythonNode):
    """A node process; ``launch`` -> ``wait_running`` -> ``rpc``/``metrics``/``resources``
    -> ``stop``/``kill``.  It dials only ``connect`` (the lab's links; none when empty)."""

    def __init__(self, name: str, workdir: Path, ports: tuple[int, int, int] | None = None,
                 network: str = "regtest", extra_args: list[str] | None = None,
                 env: dict | None = None, node_program: list[str] | None = None) -> None:
        p2p, rpc, metrics = ports or (None, None, None)
        super().__init__(name, workdir, extra_args or [], network=network, connect=[],
                         node_program=node_program,
                         env={**os.environ, **(env or {})},
                         p2p_port=p2p, rpc_port=rpc, metrics_port=metrics)
        #: Set once :meth:`wait_running` saw it serve, cleared by :meth:`launch`: the
        #: lab samples only a serving node (a start is no failed sample).
        self.serving = False

    def launch(self) -> "LabNode":
        self.serving = False
        return super().launch()

    def wait_running(self, deadline: float) -> None:
        """Wait until it runs (the lab starts all its nodes, then waits for all)."""
        try:
            self.wait_ready(max(deadline - time.monotonic(), 0.0))
        except TargetError as exc:
            raise LabError(str(exc)) from None
        self.serving = True

    def metrics(self) -> dict[str, float]:
        """Every sample, keyed ``name`` or ``name{k=v,...}`` (labels sorted)."""
        out: dict[str, float] = {}
        for (name, labels), value in self.metric_samples().items():
            flat = ",".join(f"{k}={v}" for k, v in labels)
            out[f"{name}{{{flat}}}" if flat else name] = value
        return out

    def resources(self) -> dict:
        """RSS (bytes), open descriptors, threads and CPU seconds of the process."""
        ps = psutil.Process(self.proc.pid)
        with ps.oneshot():
            cpu = ps.cpu_times()
            return {"rss": ps.memory_info().rss, "fds": ps.num_fds(), "threads": ps.num_threads(),
                    "cpu_s": cpu.user + cpu.system}
