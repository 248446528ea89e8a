"""Real node processes in Linux network namespaces joined by veth links.

Loopback cannot be cut, slowed or partitioned, so these helpers give every node
its own network namespace: ``NetnsLab`` creates namespaces (``ip netns add``)
and point-to-point veth links between them, and deletes all of them in
``close()`` (also after a failure). Addresses come from ``10.250.0.0/24`` and
exist only inside the lab's namespaces; nothing is routed outside them.

Addressing: namespace *i* has one node address ``10.250.0.<i+1>``. A link X-Y
puts X's node address on X's veth end with Y's node address as its point-to-point
peer (``ip addr add <X> peer <Y>``), and the other way round. So each node binds
one address whatever its number of links, only neighbours reach each other (no
forwarding), and the peer route comes back by itself when a link is set up
again after ``ip link set ... down``.

``NetnsNode`` is a ``ProcessNode`` (the harness's node process) started as ``ip netns exec <ns>
dilithion-node --bind=<node address> --rpcbind=127.0.0.1 ...``. RPC and metrics
stay on the namespace's own loopback; the test reaches them from a worker
thread that entered the namespace with ``setns(2)`` (a network namespace is per
thread), so no ``dilithion-cli`` process is spawned per query.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .process_node import ProcessNode

SUBNET_PREFIX = "10.250.0."
NS_PREFIX = "dilns"                     # every namespace this module creates starts with it
CLONE_NEWNET = 0x40000000
_lab_numbers = itertools.count()


class NetnsUnavailable(Exception):
    """Namespaces cannot be created here (not root, no ``ip``, no kernel support)."""


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def in_ns(ns: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` inside namespace ``ns``."""
    return run_ip("netns", "exec", ns, *command, check=check)


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"{NS_PREFIX}{os.getpid()}probe"
    if run_ip("netns", "add", probe, check=False).returncode != 0:
        return "ip netns add failed (no namespace support)"
    run_ip("netns", "del", probe, check=False)
    return None


def _enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into namespace ``ns``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


def _remove_stale_namespaces() -> None:
    """Namespaces left by a lab whose test process died before its clean-up."""
    listing = run_ip("netns", "list", check=False).stdout.split()
    for name in listing:
        if not name.startswith(NS_PREFIX):
            continue
        pid = name[len(NS_PREFIX):].split("-")[0].split("x")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            run_ip("netns", "del", name, check=False)


@dataclass
class Namespace:
    name: str
    addr: str
    #: the worker thread that lives inside this namespace (RPC and metrics calls)
    executor: ThreadPoolExecutor

    def call(self, fn, *args, **kwargs):
        return self.executor.submit(fn, *args, **kwargs).result()


class NetnsLab:
    """The namespaces and veth links of one test; ``close()`` deletes them all.

    Owned by the test's thread; not thread-safe (tests build labs sequentially).
    """

    def __init__(self) -> None:
        _remove_stale_namespaces()
        self.tag = f"{os.getpid()}x{next(_lab_numbers)}"
        self.namespaces: list[Namespace] = []
        self.veths: dict[tuple[str, str], str] = {}    # (from ns, to ns) -> interface in "from"
        self.nodes: list[ProcessNode] = []

    def add_namespace(self) -> Namespace:
        index = len(self.namespaces)
        name = f"{NS_PREFIX}{self.tag}-{index}"
        run_ip("netns", "add", name)
        ns = Namespace(name, f"{SUBNET_PREFIX}{index + 1}",
                       ThreadPoolExecutor(1, initializer=_enter_netns, initargs=(name,)))
        self.namespaces.append(ns)              # registered before anything can fail
        in_ns(name, "ip", "link", "set", "lo", "up")
        return ns

    def link(self, x: Namespace, y: Namespace) -> tuple[str, str]:
        """A veth link between ``x`` and ``y``; returns the interface names (in x, in y)."""
        ix, iy = self._ifname(x, y), self._ifname(y, x)
        run_ip("link", "add", ix, "netns", x.name, "type", "veth", "peer", "name", iy, "netns", y.name)
        self.veths[(x.name, y.name)], self.veths[(y.name, x.name)] = ix, iy
        for ns, ifname, here, there in ((x, ix, x.addr, y.addr), (y, iy, y.addr, x.addr)):
            in_ns(ns.name, "ip", "addr", "add", here, "peer", f"{there}/32", "dev", ifname)
            in_ns(ns.name, "ip", "link", "set", ifname, "up")
        assert f"dev {ix}" in run_ip("-n", x.name, "route", "get", y.addr).stdout, \
            f"no route over {ix}-{iy}"
        return ix, iy

    def _ifname(self, x: Namespace, y: Namespace) -> str:
        """Interface names are at most 15 bytes; they only need to be unique per namespace."""
        return f"dv{x.addr.rsplit('.', 1)[1]}to{y.addr.rsplit('.', 1)[1]}"

    def set_link(self, x: Namespace, y: Namespace, up: bool) -> None:
        """``ip link set <x's end of the x-y link> up|down`` inside ``x``."""
        in_ns(x.name, "ip", "link", "set", self.veths[(x.name, y.name)], "up" if up else "down")

    def limit_bandwidth(self, x: Namespace, y: Namespace, rate: str = "64kbit",
                        burst: str = "4kb", latency: str = "2s") -> None:
        """Token-bucket limit on what ``x`` sends to ``y`` (netem is not available)."""
        in_ns(x.name, "tc", "qdisc", "add", "dev", self.veths[(x.name, y.name)], "root", "tbf",
              "rate", rate, "burst", burst, "latency", latency)

    def node(self, ns: Namespace, workdir: Path, extra_args=(), env=None) -> "NetnsNode":
        node = NetnsNode(ns, workdir, list(extra_args), env=env)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        """Stop the nodes, then delete every namespace (their veths go with them)."""
        for node in self.nodes:
            node.stop(check=False)
        for ns in self.namespaces:
            ns.executor.shutdown(wait=True)
            run_ip("netns", "del", ns.name, check=False)
        leftovers = [n for n in run_ip("netns", "list", check=False).stdout.split()
                     if n.startswith(f"{NS_PREFIX}{self.tag}-")]
        assert not leftovers, f"namespaces not deleted: {leftovers}"


class NetnsNode(ProcessNode):
    """A ``dilithion-node`` inside a namespace, bound to that namespace's address.

    ``ip netns exec`` execs the node after setns, so the process's pid is the node's.
    """

    def __init__(self, ns: Namespace, workdir: Path, extra_args: list[str], env=None) -> None:
        super().__init__(workdir, f"node{ns.addr.rsplit('.', 1)[1]}", extra_args, env=env,
                         p2p_port=19444,      # each namespace has its own port space
                         bind=ns.addr, command_prefix=["ip", "netns", "exec", ns.name])
        self.ns = ns

    @property
    def p2p_address(self) -> str:
        return f"{self.ns.addr}:{self.p2p_port}"

    def args(self) -> list[str]:
        return [*super().args(), "--rpcbind=127.0.0.1"]

    def rpc(self, method: str, params=None, timeout: float = 10.0):
        return self.ns.call(ProcessNode.rpc, self, method, params, timeout)

    def metrics_text(self) -> str:
        return self.ns.call(ProcessNode.metrics_text, self)
