"""Loopback ports for the node processes that tests, tools and benchmarks start.

The one port allocator of the repository.  A port handed out here is bound by a
node process a moment later, so nobody else may take it in between:

* no outgoing connection: ports come from outside the kernel's ephemeral range
  (``net.ipv4.ip_local_port_range``), where ``connect`` never picks a source
  port.  (``bind(0)`` picks *inside* it: such a port was free when asked, and
  any connection of the machine could take it before the node bound it.  The
  tools used to start a node again when that happened.);
* not this process again: a port is handed out once per process, so a node
  that restarts keeps its ports for itself;
* no other process of this harness (a second test run, a lab run, a benchmark,
  pytest workers): ports are handed out from blocks of :data:`PORT_BLOCK_SIZE`
  consecutive ports, and a process leases a block by holding an exclusive
  ``flock`` on the block's file in :data:`LEASE_DIR` for as long as it lives.
  The kernel drops the lock when the process ends, however it ends, so there
  is no stale lease to clean up.  Processes start at a random block, so they
  rarely even try the same lock;
* no program already listening: every port is test-bound before it is handed out.

What is left is a program outside this harness binding a fixed port of the pool
between that test and the node's own ``bind``; the node then stops with the
operating system's ``Address already in use``, and the harness's node process
(:mod:`dilithion.testing.node_process`) starts it again on new ports, in that
one place.
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ALLOCATOR", "LEASE_DIR", "PORT_BLOCK_SIZE", "PORT_POOL_FLOOR", "PortAllocator",
           "PortPoolExhausted", "ephemeral_range", "free_port", "port_is_free", "port_pool"]

#: The lowest port handed out: below it sit registered services and the nodes'
#: own defaults (8332/8444, 18332/18444, 19332/19444, metrics 9339), which a
#: developer's own node may be using.
PORT_POOL_FLOOR = 20000
#: Ports per lease.  A lab run of ten nodes takes 30 ports, a whole test session
#: some hundreds: 64 keeps a process to a few leases (one open file each), while
#: the default pool (20000-32767 and 61000-65535) still has about 270 blocks for
#: processes running at the same time.  Blocks are aligned to multiples of this
#: size, so every process names the same ports by the same lease file.
PORT_BLOCK_SIZE = 64
#: Where the lease files live (one per block, named by its first port; shared by
#: every user of the machine, like the ports themselves).
LEASE_DIR = Path(tempfile.gettempdir()) / "dilithion-port-leases"
#: The Linux default of ``ip_local_port_range``, used when it cannot be read.
LINUX_EPHEMERAL_RANGE = (32768, 60999)


class PortPoolExhausted(RuntimeError):
    """Every block of the pool is used up by this process or leased by others."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (inclusive)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_RANGE


def port_pool(floor: int = PORT_POOL_FLOOR) -> list[range]:
    """The ports from ``floor`` to 65535 that lie outside the ephemeral range."""
    low, high = ephemeral_range()
    pieces = [range(floor, min(low, 65536)), range(max(high + 1, floor), 65536)]
    return [piece for piece in pieces if len(piece)]


def port_is_free(port: int) -> bool:
    """Nothing is bound to 127.0.0.1:``port`` right now (a test bind succeeds)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PortAllocator:
    """Hands out loopback ports no one else gets while this process lives (module docstring).

    Its state (the leases held, the ports left in the current block) is guarded by
    ``_lock``: nodes may be built on several threads.  Two allocators never share a
    block, even in one process (each lock is taken on a file opened of its own);
    :data:`ALLOCATOR` is the process's one for everyday use.
    """

    def __init__(self, pool: list[range] | None = None, lease_dir: Path = LEASE_DIR,
                 block_size: int = PORT_BLOCK_SIZE, rng: random.Random | None = None) -> None:
        self.pool = port_pool() if pool is None else pool
        self.lease_dir = lease_dir
        self.block_size = block_size
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._leases: list[int] = []                  # open lock files, one per leased block
        starts = sorted({p - p % self.block_size for piece in self.pool for p in piece})
        first = self._rng.randrange(len(starts)) if starts else 0
        self._untried: Iterator[int] = iter(starts[first:] + starts[:first])
        self._ports: Iterator[int] = iter(())

    def free_port(self) -> int:
        """A loopback port outside the ephemeral range, free now, never handed out before
        by this process and leased against every other process of this harness."""
        with self._lock:
            if os.getpid() != self._pid:              # a forked child: the leases are the parent's
                self._forget_inherited_leases()
            while True:
                for port in self._ports:
                    if port_is_free(port):
                        return port
                self._ports = iter(self._lease_next_block())

    def _lease_next_block(self) -> list[int]:
        self._make_lease_dir()
        for start in self._untried:
            fd = os.open(self.lease_dir / str(start), os.O_RDONLY | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)                          # another process holds this block
                continue
            self._leases.append(fd)
            return [p for p in range(start, start + self.block_size)
                    if any(p in piece for piece in self.pool)]
        raise PortPoolExhausted(f"no port block left in {self.pool} (lease files in"
                                f" {self.lease_dir}: other processes hold the rest)")

    def _make_lease_dir(self) -> None:
        """Created open to every user, like ``/tmp`` (sticky): the ports are the machine's."""
        try:
            self.lease_dir.mkdir(parents=True)
        except FileExistsError:
            return
        os.chmod(self.lease_dir, 0o1777)

    def _forget_inherited_leases(self) -> None:
        """Closing a forked copy does not unlock the parent's lease (``flock`` locks
        belong to the open file, released when its last descriptor closes)."""
        for fd in self._leases:
            os.close(fd)
        self._reset()

    def close(self) -> None:
        """Give the leases back (the process's end does this too)."""
        with self._lock:
            for fd in self._leases:
                os.close(fd)
            self._leases = []
            self._untried = iter(())
            self._ports = iter(())


#: The allocator of this process: its leases are the process's, so one serves
#: every node, test and tool in it.
ALLOCATOR = PortAllocator()


def free_port() -> int:
    """A port for a node this process is about to start (:meth:`PortAllocator.free_port`)."""
    return ALLOCATOR.free_port()
