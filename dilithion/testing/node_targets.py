"""A node process on loopback in a datadir of its own: the C++ binary, or ours.

``dilithion-diff`` compares two of them, ``dilithion-lab``'s ``mixed`` scenario
and ``contrib/bench/bench_mining.py`` start the C++ node with them.  Each is a
real ``dilithion-node`` process (the C++ binary, or ours from the running
interpreter's environment) started on testnet with its output in a log file,
on ports of the harness's allocator (:mod:`dilithion.testing.ports`).  Neither
dials anything public: ours runs with ``--connect=none`` and
``--bind=127.0.0.1``; the C++ node has no such switch, so it gets ``--connect``
to a closed loopback port (without it, it dials its hard-coded public seeds,
``net D-28``).

How each reports its active tip (the comparison needs both):

* ours answers RPC ``getbestblockhash`` and ``getblockcount``;
* the C++ RPC cannot (``Chain state not initialized``, ``cli`` 3.8), so its tip
  is followed in its log: it starts at the genesis (height 0); a received block
  that becomes the tip prints ``Received block from peer N: <16 hex>...`` and
  then ``Updated best block to height H``; a reorganisation prints ``New tip:
  <16 hex> (height H)``.  The 16-digit prefix is resolved to a full hash through
  the blocks the corpus sent; after a clean stop the LevelDB ``bestblock`` key is
  compared too (storage).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dilithion.rpc.auth import read_cookie
from dilithion.rpc.client import RPCCallError, RPCClient, RPCClientError
from dilithion.testing.ports import free_port

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
READY_LINE = "Node Status: RUNNING"


class TargetError(Exception):
    """A node that cannot be started or reached; ``str()`` is the one line to print."""


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


class NodeTarget:
    """One node process; ``start`` (fresh or same datadir), ``stop``, ``tip``, ``rpc``."""

    kind = "node"

    def __init__(self, label: str, workdir: Path) -> None:
        self.label = label
        self.workdir = workdir
        self.generation = 0
        self.datadir = workdir / f"{label}-0"
        self.log_path = workdir / f"{label}.log"
        self.proc: subprocess.Popen | None = None
        self.p2p_port = self.rpc_port = 0
        self._log_offset = 0

    # ---- overridden -----------------------------------------------------------
    def command(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def tip(self, names: dict[str, str]) -> tuple[str, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def credentials(self) -> tuple[str | None, str | None]:
        return None, None

    def env_defaults(self) -> dict[str, str]:
        """Environment for the process unless the caller's environment sets it."""
        return {}

    # ---- lifecycle ------------------------------------------------------------
    def fresh(self) -> None:
        """Use a new, empty datadir from the next :meth:`start` on."""
        self.generation += 1
        self.datadir = self.workdir / f"{self.label}-{self.generation}"

    def start(self) -> None:
        """Start on new ports and wait until the node is ready.  The ports come from the
        harness's allocator, so nothing takes them before the node binds them
        (:mod:`dilithion.testing.ports`)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.p2p_port, self.rpc_port = free_port(), free_port()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n===== {self.label}: {' '.join(self.command())}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.update(self.env_defaults())
            env.update({k: v for k, v in os.environ.items() if k in self.env_defaults()})
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(f"{self.label} node exited at start (status"
                                  f" {self.proc.returncode}): {self.log_tail(3, ' | ')}")
            if READY_LINE in self.run_log() and self._port_open():
                return
            time.sleep(0.2)
        self.kill()
        raise TargetError(f"{self.label} node not ready after {START_TIMEOUT_S:g} s:"
                          f" {self.log_tail(3, ' | ')}")

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.p2p_port), timeout=1).close()
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def settle_exit(self, seconds: float = 0.2) -> None:
        """Give a process that is exiting the moment it needs to be seen as exited."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> bool:
        """SIGTERM and wait; SIGKILL if it hangs. True when it stopped by itself."""
        if self.proc is None:
            return True
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                clean = False
                self.kill()
        self.proc = None
        return clean

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # ---- output -----------------------------------------------------------------
    def run_log(self) -> str:
        """This run's output (since the last start)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20, sep: str = "\n") -> str:
        return sep.join(self.run_log().splitlines()[-lines:])

    # ---- RPC --------------------------------------------------------------------
    def rpc(self, method: str, params) -> dict:
        """``{"result": ...}`` or ``{"error": {"code", "message"}}`` (C++ params convention:
        an object is sent as ``[{...}]``)."""
        user, password = self.credentials()
        client = RPCClient("127.0.0.1", self.rpc_port, user, password, timeout=30,
                           max_request_bytes=None)
        wire_params = [params] if isinstance(params, dict) else params
        try:
            return {"result": client.call(method, wire_params)}
        except RPCCallError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except RPCClientError as exc:
            return {"error": {"code": None, "message": str(exc)}}


class PythonTarget(NodeTarget):
    """Our node, from the ``dilithion-node`` script beside the running interpreter."""

    kind = "python"

    def __init__(self, label: str, workdir: Path, extra_args=()) -> None:
        super().__init__(label, workdir)
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "dilithion-node"
        return [str(exe), "--testnet", f"--datadir={self.datadir}", "--bind=127.0.0.1",
                f"--port={self.p2p_port}", f"--rpcport={self.rpc_port}", "--connect=none",
                *self.extra_args]

    def env_defaults(self) -> dict[str, str]:
        # Light-mode RandomX: a 2 GiB full-mode dataset per node would cost more
        # time and memory than the whole corpus (hashes are the same either way).
        return {"DIL_RANDOMX": "light"}

    def credentials(self):
        cookie = read_cookie(self.datadir)
        return cookie if cookie else (None, None)

    def tip(self, names: dict[str, str]) -> tuple[str, int]:
        best = self.rpc("getbestblockhash", None)
        count = self.rpc("getblockcount", None)
        if "result" not in best or "result" not in count:
            raise TargetError(f"{self.label} node: RPC failed: {best} {count}")
        return str(best["result"]), int(count["result"])


_RECEIVED = re.compile(r"\[P2P\] Received block from peer \d+: ([0-9a-f]{16})\.\.\.")
_UPDATED = re.compile(r"\[P2P\] Updated best block to height (\d+)")
_NEW_TIP = re.compile(r"New tip: ([0-9a-f]{16}) \(height (\d+)\)")
_GENESIS = re.compile(r"Genesis hash: ([0-9a-f]{64})")


class CppTarget(NodeTarget):
    """The C++ node; its tip is read from its log (module docstring)."""

    kind = "cpp"

    def __init__(self, label: str, workdir: Path, binary: Path) -> None:
        super().__init__(label, workdir)
        self.binary = binary
        self.connect_port = free_port()     # nothing listens there

    def command(self) -> list[str]:
        return [str(self.binary), "--testnet", f"--datadir={self.datadir}",
                f"--port={self.p2p_port}", f"--rpcport={self.rpc_port}",
                f"--connect=127.0.0.1:{self.connect_port}"]

    def tip(self, names: dict[str, str]) -> tuple[str, int]:
        return cpp_tip_from_log(self.run_log(), names)


def cpp_tip_updates(text: str):
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
    """The C++ node's active tip from its output; ``names`` maps 16-digit prefixes to hashes."""
    tip, height = "", -1
    for tip, height in cpp_tip_updates(text):
        pass
    return (tip if height == 0 else names.get(tip, tip + "...")), height
