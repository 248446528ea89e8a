"""A C++ ``dilithion-node`` in the lab (the ``mixed`` scenario), and what it connected when.

The process is started by the harness's :class:`CppTarget` (testnet, its
``--connect`` pointed at a closed loopback port so it never dials its public
seeds, ``net D-28``; the lab's nodes dial it).  Its RPC cannot tell its tip
(``cli`` 3.8) and its log has no timestamps, so a watcher thread reads the new
log lines every :data:`POLL_S` and stamps each tip change with the wall clock
of the read that found it: the C++ node's connect times are as exact as that
poll (the Python nodes' come from their RPC).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from dilithion.testing.node_targets import CppTarget, TargetError, check_binary, cpp_tip_updates
from dilithion.tools.lab.labnode import LabError

__all__ = ["CppLabNode", "cpp_binary_from_env", "POLL_S"]

POLL_S = 0.05


def cpp_binary_from_env() -> Path | None:
    """``$DILITHION_CPP_NODE`` checked (None when unset; :class:`LabError` when unusable)."""
    path = os.environ.get("DILITHION_CPP_NODE")
    if not path:
        return None
    try:
        return check_binary(path)
    except TargetError as exc:
        raise LabError(f"DILITHION_CPP_NODE: {exc}") from None


class CppLabNode:
    """``start`` -> ``connected`` (16-digit hash prefix -> wall-clock time) -> ``stop``."""

    kind = "cpp"

    def __init__(self, name: str, workdir: Path, binary: Path) -> None:
        self.name = name
        self.target = CppTarget(name, workdir, binary)
        self.connected: dict[str, float] = {}
        self.heights: dict[str, int] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def p2p_port(self) -> int:
        return self.target.p2p_port

    @property
    def log_path(self) -> Path:
        return self.target.log_path

    def start(self) -> "CppLabNode":
        try:
            self.target.start()
        except TargetError as exc:
            raise LabError(f"C++ node {self.name}: {exc}") from None
        self._watcher = threading.Thread(target=self._watch, name=f"lab-{self.name}-log",
                                         daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        done = 0                    # tip changes already stamped
        while not self._stop.wait(POLL_S):
            updates = list(cpp_tip_updates(self.target.run_log()))
            now = time.time()
            for prefix, height in updates[done:]:
                if height > 0:
                    self.connected.setdefault(prefix, now)
                    self.heights.setdefault(prefix, height)
            done = len(updates)
            if not self.target.alive():
                return

    def connected_at(self, block_hash: str) -> float | None:
        return self.connected.get(block_hash[:16])

    def is_running(self) -> bool:
        return self.target.alive()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.target.stop()

    def kill(self) -> None:
        self._stop.set()
        self.target.kill()
