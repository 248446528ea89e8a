"""A fault-injecting TCP proxy for one link, controllable while it runs.

The readiness plan made its faults with ``tc netem`` and ``iptables`` as root;
this kernel has no ``sch_netem`` and the lab must run as a normal user on
loopback.  So each link between two lab nodes goes through one
:class:`FaultProxy`: the dialling node connects to the proxy's port, the
proxy connects to the real node.  Faults (all changeable at any time):

* ``delay_s`` / ``jitter_s``: each chunk is delivered that long after it was
  read (order kept), in each direction;
* ``bandwidth_bps``: a cap on bytes per second per direction;
* ``stalled``: the proxy stops delivering towards the listening node (the
  far end looks like a peer that stopped reading; its kernel buffers fill);
* ``partitioned``: every connection is closed and new ones are closed at once;
* ``stops_reading``: ``"dialler"`` or ``"listener"``: that side becomes a peer
  that stopped reading.  The proxy stops reading the bytes sent towards it, so
  with a small ``rcvbuf`` (set before connect) the sender's TCP window closes
  after a few KiB and its own send queue holds the rest, as with a real stuck
  peer (the 4 MiB buffer of a delay would otherwise hide it);
* ``blackhole``: a silent partition: everything read is dropped, both ways,
  nothing is closed (no FIN, no RST), and a connection opened meanwhile is
  held without reaching the far side (its SYN would have been lost); only
  the nodes' own ping/inactivity timeouts can find the dead link;
* ``cut_at_block``: a callback; the next ``block`` frame towards the dialler
  is forwarded only in part (:data:`CUT_FRACTION` of its payload), then the
  callback runs (the lab SIGKILLs the dialler: a kill mid-send) and nothing
  more is forwarded on that connection;
* :meth:`reset`: close the current connections once (a TCP reset).

Threads: one acceptor; per connection two readers and two writers (one per
direction).  Every wait is bounded so :meth:`stop` ends all of them.
"""
from __future__ import annotations

import random
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from dilithion.tools.lab.frames import FrameWatcher

__all__ = ["FaultProxy", "Faults", "STUCK_RCVBUF", "CUT_FRACTION"]

CHUNK = 65536
#: A direction holds at most this many unsent bytes before its reader pauses
#: (so a stalled or slow link pushes back through TCP like a real one).
MAX_BUFFERED = 4 * 1024 * 1024
WAIT_S = 0.05
#: How long a new connection waits for a target that is not listening yet.
UPSTREAM_RETRY_S = 30.0
#: The receive buffer a link with a peer that stops reading gets (bytes, set before
#: connect; Linux doubles it): small, so that the sender's window closes after a few
#: KiB instead of after the kernel's autotuned megabytes.
STUCK_RCVBUF = 4096
#: How much of a ``block`` frame's payload ``cut_at_block`` lets through (the rest
#: never arrives: the receiver dies with half a block read).
CUT_FRACTION = 0.5


@dataclass
class Faults:
    delay_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: float = 0.0      # 0: unlimited
    stalled: bool = False
    partitioned: bool = False
    stops_reading: str = ""         # "", "dialler" or "listener"
    blackhole: bool = False
    cut_at_block: Callable[[], None] | None = None


class _Pipe:
    """One direction of one connection: reader thread -> timed queue -> writer thread."""

    def __init__(self, proxy: "FaultProxy", src: socket.socket, dst: socket.socket,
                 towards_listener: bool) -> None:
        self.proxy, self.src, self.dst = proxy, src, dst
        self.towards_listener = towards_listener
        self.cv = threading.Condition()
        self.queue: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.closed = False
        #: Frames towards the dialler (with a ``magic``), followed from the first byte
        #: so that ``cut_at_block`` armed mid-stream knows where frames begin.
        self.frames = FrameWatcher(proxy.magic) if proxy.magic is not None else None
        self.cut = False

    def _deaf(self) -> bool:
        """The side this pipe writes to stopped reading: leave our source unread."""
        side = self.proxy.faults.stops_reading
        return bool(side) and (side == "listener") == self.towards_listener

    def start(self, name: str) -> None:
        threading.Thread(target=self._read, name=f"{name}-r", daemon=True).start()
        threading.Thread(target=self._write, name=f"{name}-w", daemon=True).start()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        for s in (self.src, self.dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _read(self) -> None:
        while not self.closed:
            with self.cv:
                while (self.buffered >= MAX_BUFFERED or self._deaf() or self.cut) \
                        and not self.closed:
                    self.cv.wait(WAIT_S)
            try:
                ready, _, _ = select.select([self.src], [], [], WAIT_S * 4)
                if not ready:
                    continue
                data = self.src.recv(CHUNK)
            except (OSError, ValueError):
                break
            if not data:
                break
            f = self.proxy.faults
            if f.blackhole:
                self.proxy._dropped(len(data))      # on the floor, silently
                continue
            if not self.towards_listener and self.frames is not None:
                callback = f.cut_at_block
                data, cut = self.frames.feed_until_block(data, CUT_FRACTION,
                                                         armed=callback is not None)
                if cut:
                    self.cut = True
                    self._queue_now(data)
                    self.proxy._cut(callback)
                    continue
            due = time.monotonic() + f.delay_s + (random.uniform(0, f.jitter_s) if f.jitter_s else 0)
            with self.cv:
                self.queue.append((due, data))
                self.buffered += len(data)
                self.cv.notify_all()
        if self.proxy.faults.blackhole and not self.closed:
            self.proxy._dead_in_blackhole(self)     # its FIN or RST is lost too
        else:
            self.proxy._drop(self)

    def _queue_now(self, data: bytes) -> None:
        with self.cv:
            self.queue.append((time.monotonic(), data))
            self.buffered += len(data)
            self.cv.notify_all()

    def _write(self) -> None:
        while True:
            with self.cv:
                while not self.closed and (not self.queue or self.queue[0][0] > time.monotonic()
                                           or (self.towards_listener and self.proxy.faults.stalled)):
                    wait = WAIT_S if not self.queue else min(WAIT_S, max(0.0, self.queue[0][0]
                                                                        - time.monotonic()))
                    self.cv.wait(max(wait, 0.001))
                if self.closed:
                    return
                _due, data = self.queue.popleft()
            try:
                self.dst.sendall(data)
            except OSError:
                self.proxy._drop(self)
                return
            with self.cv:
                self.buffered -= len(data)
                self.cv.notify_all()
            bps = self.proxy.faults.bandwidth_bps
            if bps > 0:
                time.sleep(len(data) / bps)


class FaultProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards to ``target`` with :attr:`faults`."""

    def __init__(self, target: tuple[str, int], name: str = "proxy", *,
                 rcvbuf: int | None = None, magic: int | None = None) -> None:
        """``rcvbuf``: the receive buffer of both of the proxy's sockets (set before
        connect/listen, so the window a stuck side advertises is small);
        ``magic``: the network's, needed to watch frames (``cut_at_block``)."""
        self.target = target
        self.name = name
        self.rcvbuf = rcvbuf
        self.magic = magic
        self.faults = Faults()
        self._lock = threading.Lock()
        self._conns: list[tuple[_Pipe, _Pipe]] = []
        #: Connections accepted during a blackhole: held, never forwarded.
        self._held: list[socket.socket] = []
        #: Pipes whose source closed during a blackhole: the other side is not told
        #: (the FIN was lost) until the heal, when it gets the reset it would get then.
        self._dead: list[_Pipe] = []
        self.cuts = 0
        #: Bytes a blackhole swallowed (tests wait on it instead of on the clock).
        self.dropped_bytes = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(WAIT_S * 4)
        self.port = self._listener.getsockname()[1]
        self._running = True
        self.connections_total = 0
        self._thread = threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, **faults) -> None:
        """Change faults at run time (``delay_s=5``, ``partitioned=True``, ...)."""
        for key, value in faults.items():
            if not hasattr(self.faults, key):
                raise ValueError(f"unknown fault {key!r}")
            setattr(self.faults, key, value)
        if faults.get("partitioned"):
            self.reset()
        if faults.get("blackhole") is False:
            self._release_held()
        for a, b in self._snapshot():
            for pipe in (a, b):
                with pipe.cv:
                    pipe.cv.notify_all()

    def reset(self) -> None:
        """Close every current connection (both sides see the link drop)."""
        for a, b in self._snapshot():
            a.close()
            b.close()

    def active(self) -> int:
        return len(self._snapshot())

    def _snapshot(self) -> list[tuple[_Pipe, _Pipe]]:
        with self._lock:
            return list(self._conns)

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.faults.partitioned:
                client.close()
                continue
            if self.faults.blackhole:
                with self._lock:
                    self._held.append(client)
                continue
            threading.Thread(target=self._open, args=(client,), name=f"{self.name}-open",
                             daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        """Connect upstream, retrying while the target is still starting (bounded):
        a refused upstream would otherwise reset a node's fresh connection."""
        deadline = time.monotonic() + UPSTREAM_RETRY_S
        while True:
            try:
                upstream = self._connect_upstream()
                break
            except OSError:
                if not self._running or time.monotonic() >= deadline or self.faults.partitioned:
                    client.close()
                    return
                time.sleep(0.2)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(None)
        pair = (_Pipe(self, client, upstream, True), _Pipe(self, upstream, client, False))
        with self._lock:
            self._conns.append(pair)
            self.connections_total += 1
        pair[0].start(f"{self.name}-up")
        pair[1].start(f"{self.name}-down")

    def _connect_upstream(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.settimeout(5)
            sock.connect(self.target)
        except OSError:
            sock.close()
            raise
        return sock

    def _dead_in_blackhole(self, pipe: _Pipe) -> None:
        with self._lock:
            self._dead.append(pipe)

    def _release_held(self) -> None:
        """The blackhole healed: the connections opened during it never got through
        (their dialler times them out or sees them close now), like lost SYNs; a
        connection one side closed meanwhile is reset towards the other side now
        (its next packet would meet no connection)."""
        with self._lock:
            held, self._held = self._held, []
            dead, self._dead = self._dead, []
        for pipe in dead:
            self._drop(pipe)
        for s in held:
            try:
                s.close()
            except OSError:
                pass

    def _dropped(self, n: int) -> None:
        with self._lock:
            self.dropped_bytes += n

    def _cut(self, callback: Callable[[], None]) -> None:
        """A block frame was cut: disarm and run the callback (once), off the pipe."""
        self.faults.cut_at_block = None
        self.cuts += 1
        threading.Thread(target=callback, name=f"{self.name}-cut", daemon=True).start()

    def _drop(self, pipe: _Pipe) -> None:
        """One direction ended: close the whole connection."""
        with self._lock:
            pairs = [p for p in self._conns if pipe in p]
            self._conns = [p for p in self._conns if pipe not in p]
        for a, b in pairs:
            a.close()
            b.close()
            for s in (a.src, a.dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._running = False
        try:
            self._listener.close()
        except OSError:
            pass
        self.reset()
        self._release_held()
        self._thread.join(timeout=2)
