"""The C++ ``dilithion-node`` by path, as a :class:`~dilithion.testing.node_process.NodeProcess`.

``dilithion-diff`` compares it with ours, ``dilithion-lab``'s ``mixed`` scenario
and ``contrib/bench/bench_mining.py`` run it, ``tests/test_cpp_interop.py``
talks to it.  It runs on testnet and never dials anything public: it has no
``--connect=none``, so it gets ``--connect`` to a loopback port where nothing
listens (without it, it dials its hard-coded public seeds, ``net D-28``), or to
the node the caller names.

Its RPC has no cookie (the harness's RPC sends none when the datadir has no
cookie file) and cannot tell its tip (``Chain state not initialized``, ``cli``
3.8), and it serves no metrics.  So its tip is followed in its log: it starts
at the genesis (height 0); a received block that becomes the tip prints
``Received block from peer N: <16 hex>...`` and then ``Updated best block to
height H``; a reorganisation prints ``New tip: <16 hex> (height H)``.  The
16-digit prefix is resolved to a full hash by the caller's names (the diff's
corpus blocks); after a clean stop the LevelDB ``bestblock`` key tells the
full hash too (storage).
"""
from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from dilithion.testing.node_process import NodeProcess, TargetError
from dilithion.testing.ports import free_port

__all__ = ["CppNode", "check_binary", "cpp_binary_from_env", "cpp_tip_updates",
           "cpp_tip_from_log"]


def check_binary(path: str | None) -> Path:
    """The C++ binary, or :class:`TargetError` saying why it cannot be used."""
    if not path:
        raise TargetError("no C++ node: give --cpp PATH or set DILITHION_CPP_NODE (or use --self)")
    binary = Path(path)
    if not binary.is_file():
        raise TargetError(f"C++ node {binary}: no such file")
    if not os.access(binary, os.X_OK):
        raise TargetError(f"C++ node {binary}: not executable")
    return binary


def cpp_binary_from_env() -> Path | None:
    """``$DILITHION_CPP_NODE`` checked: None when unset, :class:`TargetError` when unusable."""
    path = os.environ.get("DILITHION_CPP_NODE")
    if not path:
        return None
    try:
        return check_binary(path)
    except TargetError as exc:
        raise TargetError(f"DILITHION_CPP_NODE: {exc}") from None


class CppNode(NodeProcess):
    """The C++ node on testnet (module docstring); ``connect`` is the one address it dials."""

    kind = "cpp"
    has_metrics = False

    def __init__(self, name: str, workdir: Path, binary: Path, extra_args=(), *,
                 connect: str | None = None, **kw) -> None:
        super().__init__(name, workdir, extra_args, **kw)
        self.binary = Path(binary)
        self.connect = connect or f"127.0.0.1:{free_port()}"     # nothing listens there

    def program(self) -> list[str]:
        return [str(self.binary)]

    def args(self) -> list[str]:
        return ["--testnet", f"--datadir={self.datadir}", f"--port={self.p2p_port}",
                f"--rpcport={self.rpc_port}", f"--connect={self.connect}", *self.extra_args]

    def ready(self) -> bool:
        """The ready line, and its P2P port accepts (it prints the line a moment early)."""
        if not super().ready():
            return False
        try:
            socket.create_connection(("127.0.0.1", self.p2p_port), timeout=1).close()
            return True
        except OSError:
            return False

    def tip(self, names: dict[str, str] | None = None) -> tuple[str, int]:
        """The active tip from its log; ``names`` maps 16-digit prefixes to full hashes."""
        return cpp_tip_from_log(self.log_text(), names or {})


_RECEIVED = re.compile(r"\[P2P\] Received block from peer \d+: ([0-9a-f]{16})\.\.\.")
_UPDATED = re.compile(r"\[P2P\] Updated best block to height (\d+)")
_NEW_TIP = re.compile(r"New tip: ([0-9a-f]{16}) \(height (\d+)\)")
_GENESIS = re.compile(r"Genesis hash: ([0-9a-f]{64})")


def cpp_tip_updates(text: str) -> Iterator[tuple[str, int]]:
    """Each change of the C++ node's active tip in its output, in order:
    ``(hash, height)`` with the full genesis hash, else the block's 16-digit prefix."""
    last_received = ""
    for line in text.splitlines():
        if m := _GENESIS.search(line):
            yield m.group(1), 0
        elif m := _RECEIVED.search(line):
            last_received = m.group(1)
        elif m := _UPDATED.search(line):
            yield last_received, int(m.group(1))
        elif m := _NEW_TIP.search(line):
            yield m.group(1), int(m.group(2))


def cpp_tip_from_log(text: str, names: dict[str, str]) -> tuple[str, int]:
    """The C++ node's active tip from its output; ``names`` maps 16-digit prefixes to hashes.
    ``("", -1)`` before it printed its genesis."""
    tip, height = "", -1
    for tip, height in cpp_tip_updates(text):
        pass
    if height <= 0:
        return tip, height
    return names.get(tip, tip + "..."), height
