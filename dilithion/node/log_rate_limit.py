"""The log as a budget: rate-limited log lines, as Bitcoin Core's ``-logratelimit``.

Operators redirect the node's stdout/stderr to disk, and many INFO/WARNING
lines are written because a peer sent something (an invalid block, an unknown
``getdata``, a bad checksum).  Without a limit an attacker grows the log, and
fills the disk, at the rate it can send messages.

Core (29+) gives each source location a byte budget per window and notes the
suppression once, with the count of dropped bytes when the window ends.  One
attacker can silence a location there; here a line bound with a peer
(``logger.bind(**peer.log_fields())``) must also fit a much smaller budget of
its own (location, peer host), so one host exhausts its own share and the
same line about an honest peer is still written.  Two node-wide pools bound
the sums: one for lines about a peer, one for the other lines, so lines an
attacker can trigger without a peer binding (capped per location) cannot use
up the room of the lines about honest peers, nor the reverse.

Chain-progress lines (bound with ``height``: ``Updated best block``,
``Block activated``, ``BLOCK FOUND``) skip the per-host budget and both
pools: only a block that extends the best chain writes one, so their rate is
paid for by proof of work; their location budget still applies.

Lines below INFO are never limited (they are written only when an operator
asks for them, as Core's debug categories).  Suppression notes are at most
two per location per window ("suppressing" and "dropped ... during the last
window"), so they are bounded by the number of log statements in the code.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["LOG_RATE_WINDOW_S", "LOG_BYTES_PER_LOCATION", "LOG_BYTES_PER_PEER_LOCATION",
           "LOG_BYTES_PEER_LINES", "LOG_BYTES_NODE_LINES", "MAX_TRACKED_PEER_LOCATIONS",
           "LogRateLimiter", "Verdict"]

#: Length of one budget window (Core's ``LOG_RATELIMIT_WINDOW``: one hour).
LOG_RATE_WINDOW_S = 3600.0
#: Bytes one source location may write per window (Core's 1 MiB).
LOG_BYTES_PER_LOCATION = 1024 * 1024
#: Bytes one peer host may make one source location write per window: about 20
#: text lines (7 JSON lines).  A mainnet peer relays about 15 blocks an hour, so
#: an honest peer's ``Received block`` lines fit; 100 attacking hosts at 15
#: peer-triggered locations can write 3 MiB, below the location budget and the
#: peer-lines pool, so they cannot silence an honest host's lines.
LOG_BYTES_PER_PEER_LOCATION = 2 * 1024
#: Bytes all lines about a peer may write per window.
LOG_BYTES_PEER_LINES = 4 * 1024 * 1024
#: Bytes all other lines (chain progress aside) may write per window.  With the
#: peer-lines pool: 8 MiB an hour under attack, half of 16 MiB.
LOG_BYTES_NODE_LINES = 4 * 1024 * 1024
#: (location, host) budgets remembered per window (about 150 bytes each).  When
#: the table is full, a new pair is charged to its location and its pool only.
MAX_TRACKED_PEER_LOCATIONS = 4096

#: Lines below this level number (INFO) are never limited.
_INFO_NO = 20


@dataclass
class _Location:
    used: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    noted: bool = False


@dataclass
class Verdict:
    """Whether to write a line, and notes to write before it (each a message text)."""

    write: bool
    notes: list[str]


class LogRateLimiter:
    """Budgets per window for one node's log sinks; every sink of the node shares one.

    Ownership: ``_lock`` guards every field after construction; :meth:`admit`
    is called from whichever thread logs.  Nothing is shared between two
    limiters, so several in-process nodes never share a budget.
    """

    def __init__(self, *, window_s: float = LOG_RATE_WINDOW_S,
                 per_location: int = LOG_BYTES_PER_LOCATION,
                 per_peer_location: int = LOG_BYTES_PER_PEER_LOCATION,
                 peer_lines: int = LOG_BYTES_PEER_LINES,
                 node_lines: int = LOG_BYTES_NODE_LINES,
                 max_tracked: int = MAX_TRACKED_PEER_LOCATIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.per_location = per_location
        self.per_peer_location = per_peer_location
        self.pool_caps = {"peer lines": peer_lines, "node lines": node_lines}
        self.max_tracked = max_tracked
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._pool_used = {"peer lines": 0, "node lines": 0}
        self._locations: dict[str, _Location] = {}
        self._peer_used: dict[tuple[str, str], int] = {}
        #: Lines and bytes dropped since the limiter was made (for tests and metrics).
        self.dropped_lines = 0
        self.dropped_bytes = 0

    def admit(self, record, size: int) -> Verdict:
        """Charge a formatted line of ``size`` bytes of the loguru ``record``."""
        if record["level"].no < _INFO_NO:
            return Verdict(True, [])
        where = f"{record['name']}:{record['line']}"
        host = _peer_host(record["extra"])
        progress = record["extra"].get("height") is not None
        with self._lock:
            notes = self._roll_window()
            loc = self._locations.setdefault(where, _Location())
            key = (where, host) if host is not None and not progress else None
            peer_used = self._peer_used.get(key, 0) if key is not None else 0
            pool = None if progress else "peer lines" if host is not None else "node lines"
            over = ("location" if loc.used + size > self.per_location else
                    pool if pool is not None
                    and self._pool_used[pool] + size > self.pool_caps[pool] else
                    "host" if key is not None and peer_used + size > self.per_peer_location else
                    None)
            if over is None:
                if pool is not None:
                    self._pool_used[pool] += size
                loc.used += size
                if key is not None and (key in self._peer_used
                                        or len(self._peer_used) < self.max_tracked):
                    self._peer_used[key] = peer_used + size
                return Verdict(True, notes)
            loc.dropped_lines += 1
            loc.dropped_bytes += size
            self.dropped_lines += 1
            self.dropped_bytes += size
            if not loc.noted:
                loc.noted = True
                whose = f" about peer {host}" if over == "host" else ""
                notes.append(f"Excessive logging from {where}{whose}: over its {over} budget "
                             f"in this {self.window_s:.0f} s window; suppressing such lines "
                             f"until the window ends")
            return Verdict(False, notes)

    def _roll_window(self) -> list[str]:
        """At the end of a window: the dropped-lines notes, then fresh budgets."""
        now = self._clock()
        if now - self._window_start < self.window_s:
            return []
        notes = [f"Restarting logging from {where}: {loc.dropped_lines} lines "
                 f"({loc.dropped_bytes} bytes) were dropped during the last "
                 f"{self.window_s:.0f} s"
                 for where, loc in self._locations.items() if loc.dropped_lines]
        self._window_start = now
        self._pool_used = dict.fromkeys(self._pool_used, 0)
        self._locations.clear()
        self._peer_used.clear()
        return notes


def _peer_host(extra: dict) -> str | None:
    """The host of ``peer_addr`` (``1.2.3.4:8444`` or ``[::1]:8444``), else the peer id."""
    addr = extra.get("peer_addr")
    if addr:
        return str(addr).rsplit(":", 1)[0]
    peer = extra.get("peer")
    return None if peer is None else f"id {peer}"
