"""Start-time fair queueing of the peers waiting for the message-handler thread.

The handler thread serves one message at a time, and a message's cost varies
by four orders of magnitude (a ``ping`` takes microseconds, a 50,000-item
``inv`` or a block needing a RandomX hash tens of milliseconds).  Serving
peers round-robin one message each, as Bitcoin Core does, makes an honest
peer's block wait one full round of every other peer's messages, however
costly they are.  Here each peer is charged the handler time its messages
took, and the peer that has used the least goes next (start-time fair
queueing, Goyal et al. 1996):

* every peer has a *virtual time*, advanced by the measured handler time of
  each of its messages;
* the ready peer with the least virtual time is served next (ties, i.e.
  peers that joined at the same instant: the one whose own virtual time was
  least, then the one that became ready first);
* a peer that becomes ready joins at ``max(its own virtual time -
  IDLE_GRACE_S, the start time of the message served last)``: idling earns
  no credit, a peer that recently used much more than the others keeps that
  debt (less the grace), and a peer that sent a message or two and waited
  (an honest peer's ``inv``, then its ``block``) is not held behind others
  for the few hundred microseconds its last message took.

An honest peer that sends little therefore joins at the front: it waits for
the message in progress and for peers that joined at the same instant, not for
a round of N other peers' messages.  Per-peer arrival order is kept by the
caller (one entry per peer, its backlog is FIFO).
"""
from __future__ import annotations

import heapq
import itertools
from typing import Generic, Hashable, TypeVar

__all__ = ["FairQueue", "MIN_CHARGE_S", "IDLE_GRACE_S"]

K = TypeVar("K", bound=Hashable)

#: Least handler time charged for one message (seconds): a clock that ticks
#: coarsely must not make a flood of cheap messages free.
MIN_CHARGE_S = 1e-6

#: Debt forgiven to a peer that becomes ready after idling (seconds of handler
#: time).  An honest peer's small messages (``inv``, ``getdata``, ``ping``: well
#: under 1 ms of handler CPU each) then never make it wait for others when it
#: comes back with its block; a peer can gain at most this much per time its
#: backlog runs empty, i.e. per message it waited to be processed, so a peer
#: that paces itself that way is treated as Core treats every peer (one message
#: per turn) and never better.
IDLE_GRACE_S = 0.005


class FairQueue(Generic[K]):
    """The ready peers (keys) ordered by virtual time.

    Not thread-safe: the owner guards it with its own lock (in
    :class:`~dilithion.net.net_processing.NetMessageProcessor`, its ``_cv``).
    A key is in the queue at most once (:meth:`add` of a queued key does
    nothing); the caller re-adds it through :meth:`charge` (``more=True``) or
    :meth:`add` when it has work again.  A key passed to :meth:`add` while its
    message is being served (popped, not yet charged) is queued by
    :meth:`charge`, once that message's cost is known.
    """

    def __init__(self, idle_grace_s: float = IDLE_GRACE_S) -> None:
        self._grace = idle_grace_s
        self._heap: list[tuple[float, float, int, K]] = []   # (start, own, seq, key)
        self._vtime: dict[K, float] = {}
        self._queued: set[K] = set()    # in the heap
        self._serving: set[K] = set()   # popped, not charged yet
        self._rearm: set[K] = set()     # of those, the ones that became ready meanwhile
        self._seq = itertools.count()
        self._now = 0.0          # start time of the entry popped last

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def add(self, key: K) -> None:
        """``key`` has work (its backlog went from empty to non-empty)."""
        if key in self._serving:
            self._rearm.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        own = self._vtime.get(key, 0.0)
        start = max(own - self._grace, self._now)
        self._vtime[key] = start
        heapq.heappush(self._heap, (start, own, next(self._seq), key))

    def pop(self) -> K | None:
        """The ready key with the least virtual time, removed from the queue."""
        if not self._heap:
            return None
        start, _, _, key = heapq.heappop(self._heap)
        self._queued.discard(key)
        self._now = max(self._now, start)
        self._serving.add(key)
        return key

    def charge(self, key: K, cost_s: float, more: bool) -> None:
        """``key``'s message took ``cost_s`` seconds; requeue it if ``more``.

        A key :meth:`forget` dropped meanwhile (its connection closed) stays
        forgotten."""
        self._serving.discard(key)
        if key in self._rearm:
            self._rearm.discard(key)
            more = True
        vtime = self._vtime.get(key)
        if vtime is None:
            return
        vtime = max(vtime, self._now) + max(cost_s, MIN_CHARGE_S)
        self._vtime[key] = vtime
        if more:
            self._queued.add(key)
            heapq.heappush(self._heap, (vtime, vtime, next(self._seq), key))

    def forget(self, key: K) -> None:
        """``key`` is gone for good: drop its virtual time (a queued entry of it
        is still popped once, and the caller finds nothing to do)."""
        self._vtime.pop(key, None)
        self._rearm.discard(key)
