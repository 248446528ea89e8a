"""``TestNode``: the one interface every test node offers, process or in-process.

Tests talk to nodes the way an operator does: RPC, the metrics registry, the
log. So everything that can be phrased that way (height, best hash, mining,
peers, metrics by name and labels, waiting for log lines) is written once here
on top of four primitives a node kind must provide:

* ``rpc_port`` - where its JSON-RPC server listens (``rpc()`` is written here);
* ``metric_samples()`` - ``{(sample name, sorted label items): value}``;
* ``log_text(all_runs=False)`` - what the node logged;
* ``start()`` / ``stop()`` / ``kill()`` / ``is_running()`` - the lifecycle.
"""
from __future__ import annotations

import functools
import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path

from dilithion.crypto.mldsa import KeyPair
from dilithion.rpc.client import RPCCallError
from dilithion.testing.node_process import MetricKey, cookie_rpc, metric_key

from .util import wait_until

#: RPC error code of ``disconnectnode`` for a peer that is already gone.
RPC_CLIENT_NODE_NOT_CONNECTED = -29


@functools.lru_cache(maxsize=None)
def payee(name: str) -> str:
    """A coinbase address per node name (never spent).

    One shared payee would make two partitioned nodes mine byte-identical
    blocks on the same parent within a second, and the "partition" would have
    no fork at all.
    """
    return KeyPair.from_seed(hashlib.sha3_256(name.encode()).digest()).address()


class TestNode(ABC):
    """One regtest node under test. Subclasses: ``ProcessNode``, ``InProcessNode``."""

    __test__ = False                     # not a pytest test class despite its name

    name: str
    datadir: Path
    p2p_port: int
    rpc_port: int
    #: command-line style flags for the next ``start()`` (``restart`` replaces them)
    extra_args: list[str]

    # ---- what a node kind provides ---------------------------------------------
    @abstractmethod
    def start(self) -> "TestNode":
        """Start and return once the node serves RPC."""

    @abstractmethod
    def stop(self) -> None:
        """Clean shutdown (the node's own stop path); raises if it is not clean."""

    @abstractmethod
    def kill(self) -> None:
        """Abrupt end without any shutdown code (SIGKILL for a process)."""

    @abstractmethod
    def is_running(self) -> bool: ...

    def close(self) -> None:
        """Stop if running and release what the node holds (``InProcessNode``: its log
        capture); what the per-test registry calls at the end."""
        if self.is_running():
            self.stop()

    def rpc(self, method: str, params=None, timeout: float = 10.0):
        """One JSON-RPC call on ``127.0.0.1:<rpc_port>`` with the datadir's cookie, as
        ``dilithion-cli`` makes it; errors raise ``dilithion.rpc.client.RPCClientError``."""
        return cookie_rpc(self.datadir, self.rpc_port, method, params, timeout)

    @abstractmethod
    def metric_samples(self) -> dict[MetricKey, float]:
        """Every metric sample: ``{(name, sorted (label, value) pairs): value}``."""

    @abstractmethod
    def log_text(self, all_runs: bool = False) -> str:
        """The log of the current run (``all_runs``: of every run on this datadir)."""

    # ---- lifecycle built on the above ---------------------------------------------
    def restart(self, extra_args=None) -> "TestNode":
        """Clean stop, then start on the same datadir and port (new flags if given)."""
        if self.is_running():
            self.stop()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        return self.start()

    # ---- chain ---------------------------------------------------------------------
    def height(self) -> int:
        return int(self.rpc("getblockcount"))

    def best_hash(self) -> str:
        return str(self.rpc("getbestblockhash"))

    @property
    def address(self) -> str:
        """Where this node's ``mine`` pays to."""
        return payee(self.name)

    def mine(self, n: int, address: str | None = None) -> list[str]:
        """``n`` blocks mined now (RPC ``generatetoaddress``); their hashes, oldest first."""
        hashes = self.rpc("generatetoaddress", [n, address or self.address], timeout=120 + n)
        assert len(hashes) == n, (n, hashes)
        return hashes

    # ---- peers ---------------------------------------------------------------------
    @property
    def p2p_address(self) -> str:
        """``host:port`` other nodes dial (loopback; a namespace node overrides it)."""
        return f"127.0.0.1:{self.p2p_port}"

    def peers(self) -> list[dict]:
        return self.rpc("getpeerinfo")

    def peer_count(self) -> int:
        return len(self.peers())

    def _handshaken_inbound_ids(self) -> set[int]:
        return {p["id"] for p in self.peers() if p["inbound"] and p["handshake"]}

    def _has_outbound_to(self, other: "TestNode") -> bool:
        return any(not p["inbound"] and p["handshake"] and p["addr"] == other.p2p_address
                   for p in self.peers())

    def connect_to(self, other: "TestNode", timeout: float = 10.0) -> None:
        """Dial ``other`` once (``addnode <addr> onetry``) and wait for both handshakes.

        The new inbound connection on ``other`` is recognised by a peer id it did
        not have before the dial (ids only grow), so earlier peers cannot
        satisfy the wait.
        """
        before = other._handshaken_inbound_ids()
        self.rpc("addnode", [other.p2p_address, "onetry"])
        wait_until(lambda: self._has_outbound_to(other)
                   and other._handshaken_inbound_ids() - before, timeout,
                   message=lambda: f"{self.name} -> {other.name}: {self.peers()} / {other.peers()}")

    def disconnect_all(self, timeout: float = 10.0) -> None:
        """Drop every current peer. Peers kept by ``--addnode``/``addnode add`` are redialled."""
        for peer in self.peers():
            try:
                self.rpc("disconnectnode", {"nodeid": peer["id"]})
            except RPCCallError as exc:             # closed meanwhile
                if exc.code != RPC_CLIENT_NODE_NOT_CONNECTED:
                    raise
        wait_until(lambda: self.peer_count() == 0, timeout, message=lambda: self.peers())

    # ---- metrics -------------------------------------------------------------------
    def metric(self, name: str, **labels) -> float:
        """A sample's current value by exact name and labels; 0.0 when absent."""
        return self.metric_samples().get(metric_key(name, labels), 0.0)

    # ---- log -----------------------------------------------------------------------
    def log_lines(self, pattern: str, all_runs: bool = False) -> list[str]:
        """Lines of the log that match the regular expression ``pattern``."""
        regex = re.compile(pattern)
        return [line for line in self.log_text(all_runs).splitlines() if regex.search(line)]

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` (a plain substring) appears in this run's log."""
        wait_until(lambda: text in self.log_text(), timeout,
                   message=lambda: f"{text!r} not logged\n{self.describe()}")

    def assert_no_traceback(self) -> None:
        assert "Traceback" not in self.log_text(all_runs=True), self.describe()

    def describe(self) -> str:
        """State for failure messages: the node's name and the end of its log."""
        return f"node {self.name}\n--- log (tail) ---\n{self.log_text(all_runs=True)[-3000:]}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} p2p={self.p2p_port}>"
