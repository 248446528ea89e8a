"""A C++ ``dilithion-node`` in the lab (the ``mixed`` scenario), and what it connected when.

The process is the harness's :class:`~dilithion.testing.cpp_node.CppNode`
(testnet, its ``--connect`` pointed at a closed loopback port so it never dials
its public seeds, ``net D-28``; the lab's nodes dial it).  Its RPC cannot tell
its tip (``cli`` 3.8) and its log has no timestamps, so a watcher thread reads
the log every :data:`POLL_S` and stamps each tip change with the wall clock
of the read that found it: the C++ node's connect times are as exact as that
poll (the Python nodes' come from their RPC).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from dilithion.testing import cpp_node
from dilithion.testing.cpp_node import CppNode, cpp_tip_updates
from dilithion.testing.node_process import START_TIMEOUT_S, STOP_TIMEOUT_S, TargetError
from dilithion.tools.lab.labnode import LabError

__all__ = ["CppLabNode", "cpp_binary_from_env", "POLL_S"]

POLL_S = 0.05


def cpp_binary_from_env() -> Path | None:
    """``$DILITHION_CPP_NODE`` checked (None when unset; :class:`LabError` when unusable)."""
    try:
        return cpp_node.cpp_binary_from_env()
    except TargetError as exc:
        raise LabError(str(exc)) from None


class CppLabNode(CppNode):
    """``start`` -> ``connected`` (16-digit hash prefix -> wall-clock time) -> ``stop``.

    ``connected`` and ``heights`` are written by the watcher thread only and read
    by the scenario (single dict operations, atomic under the GIL).
    """

    def __init__(self, name: str, workdir: Path, binary: Path) -> None:
        super().__init__(name, workdir, binary)
        self.connected: dict[str, float] = {}
        self.heights: dict[str, int] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT_S) -> "CppLabNode":
        try:
            super().start(wait, timeout)
        except TargetError as exc:
            raise LabError(f"C++ node {self.name}: {exc}") from None
        self._watcher = threading.Thread(target=self._watch, name=f"lab-{self.name}-log",
                                         daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        done = 0                    # tip changes already stamped
        while not self._stop.wait(POLL_S):
            updates = list(cpp_tip_updates(self.log_text()))
            now = time.time()
            for prefix, height in updates[done:]:
                if height > 0:
                    self.connected.setdefault(prefix, now)
                    self.heights.setdefault(prefix, height)
            done = len(updates)
            if not self.is_running():
                return

    def connected_at(self, block_hash: str) -> float | None:
        return self.connected.get(block_hash[:16])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        return super().stop(timeout)

    def kill(self) -> int | None:
        self._stop.set()
        return super().kill()
