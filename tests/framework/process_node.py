"""``ProcessNode``: the harness's node process (:class:`dilithion.testing.node_process.PythonNode`)
as a :class:`TestNode`.

The process itself (datadir, ports, start/stop/kill, log files with run
offsets, RPC, metrics) is the harness's, shared with the lab, the diff and the
benchmarks; this adapter only gives it the tests' interface: regtest by
default, stdout and stderr in files of their own (tests check what the node
prints as an error), and a ``stop`` that fails the test on an unclean exit.
"""
from __future__ import annotations

from pathlib import Path

from dilithion.testing.node_process import (STOP_TIMEOUT_S, PythonNode, python_node_binary,
                                            run_python_node)

from .node import TestNode

NODE_BIN = python_node_binary()
#: what tests call the harness's one-shot run (flag errors, ``--help``)
run_node = run_python_node


class ProcessNode(PythonNode, TestNode):
    """One ``dilithion-node`` process; ``start`` -> query -> ``stop``/``kill``.

    Ports are chosen at construction and kept across restarts, so peers that
    keep this node added (``--addnode``) find it again.
    """

    def __init__(self, workdir: Path, name: str, extra_args=(), **kw) -> None:
        super().__init__(name, workdir, extra_args, separate_stderr=True, **kw)

    def stop(self, timeout: float = STOP_TIMEOUT_S, check: bool = True) -> int | None:
        """The harness's stop; with ``check`` a hang or a non-zero exit fails the test."""
        code = super().stop(timeout)
        if check and self.killed_on_stop:
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout:g} s\n"
                                 + self.describe())
        if check and code is not None:
            assert code == 0, self.describe()
        return code

    def output(self) -> str:
        """Stdout of every run."""
        return self.log.text()

    def run_output(self) -> str:
        """Stdout of the current (latest) run only."""
        return self.log.run_text()

    def errors(self) -> str:
        """Stderr (ERROR and above, start-up failures) of every run."""
        return self.errlog.text()

    def describe(self) -> str:
        return (f"node {self.name} rc={self.proc.poll() if self.proc else None}\n"
                f"--- stdout (tail) ---\n{self.output()[-3000:]}\n"
                f"--- stderr (tail) ---\n{self.errors()[-3000:]}")
