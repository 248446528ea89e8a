"""What the node's message processing knows about one peer, and the snapshot of it
the broadcaster reads.

Bitcoin Core keeps one ``Peer``/``CNodeState`` per connection, owned by
``net_processing``; btcd's ``netsync`` keeps one ``peerSyncState``.  Here
:class:`PeerRelayState` is that object: created by the relay coordinator
(:class:`~dilithion.net.block_relay.BlockRelay`) when a handshake completes and
dropped by it when the peer disconnects, read and written only on the
message-handler thread (``p2p-msg``), so it has no lock.

The broadcaster's workers run on their own threads and must not read it.  After
every handler call the coordinator publishes an immutable
:class:`AnnounceFilter` (what the peer has, whether it is catching up) on the
:class:`AnnounceFilters` board; the broadcaster decides from that snapshot
alone, and the catch-up a C++ peer needs instead of an announcement is sent on
the handler thread (:meth:`dilithion.net.block_sync.BlockSync.catch_up_lagging`).
Both sides decide with one function, :func:`announce_decision`.
"""
from __future__ import annotations

import enum
import itertools
import threading
from dataclasses import dataclass, field

from dilithion.core.lru import LRUSet

__all__ = ["AnnounceFilter", "AnnounceFilters", "Announce", "PeerRelayState",
           "announce_decision", "CATCHUP_TIMEOUT_S", "MAX_KNOWN_PER_PEER",
           "MAX_ANNOUNCED_UNKNOWN_PER_PEER", "FILTER_MERGE_EVERY", "FILTER_KNOWN_WINDOW"]

#: A catch-up batch nobody continued is abandoned after this; tip announcements resume.
CATCHUP_TIMEOUT_S = 60.0
#: Blocks in our block tree remembered per peer as known to it.  Only indexed blocks
#: (each paid for with proof of work) enter this set, so a peer cannot fill it with
#: made-up hashes.
MAX_KNOWN_PER_PEER = 20_000
#: Hashes a peer announced that are not in our block tree (yet), per peer: as many as
#: it may have waiting in the download table.  Made-up hashes in ``inv`` floods land
#: here, so 125 flooding peers hold 125 x 1,024 hashes (about 18 MB), not
#: 125 x 20,000 (about 350 MB).
MAX_ANNOUNCED_UNKNOWN_PER_PEER = 1024
#: Hashes noted since the last full copy before a published filter copies the peer's
#: sets again.  Between copies a publication copies only these (at most 256 hashes, a
#: few microseconds), so a handler call costs O(256), not O(21,000); a full copy is
#: paid once per 256 new hashes.
FILTER_MERGE_EVERY = 256
#: Newest known blocks a full copy takes (with every announced-unknown hash).  The
#: broadcaster only asks about a new tip and its parent, which the peer noted last
#: (a tip it sent or fetched, the end of its catch-up); a copy of all 20,000 would
#: cost about 1 MiB per peer (128 MiB at 125 peers), this one at most 5,376 hashes
#: (about 256 KiB).  A block noted more than 4,096 blocks ago and then become our
#: tip again (a deep reorg back to it) is announced to a peer that has it: one
#: ``inv`` it ignores.
FILTER_KNOWN_WINDOW = 4096


class Announce(enum.Enum):
    """What to do about a new tip for one peer."""

    SEND = "send"            # announce it (an ``inv``)
    SKIP = "skip"            # the peer has it, or a C++ peer that is catching up
    CATCH_UP = "catch-up"    # a C++ peer that may lack its parent: catch-up instead


def announce_decision(view, block_hash: bytes, parent: tuple[bytes, int] | None,
                      now: float) -> Announce:
    """The one rule for announcing block ``block_hash`` (parent ``(hash, height)``,
    None if unknown) to a peer whose ``view`` is a :class:`PeerRelayState` (handler
    thread) or an :class:`AnnounceFilter` (broadcaster).

    A Python peer hears of every new tip even mid-catch-up: if it cannot connect it
    yet, its ``getblocks`` fills the gap.  A C++ peer is never told about a block
    whose parent it may lack (it would store it as an orphan for good, ``chain D21``)."""
    if view.has(block_hash) or (view.is_cpp and view.catching_up(now)):
        return Announce.SKIP
    if not view.is_cpp:
        return Announce.SEND
    if parent is None:
        return Announce.SKIP
    parent_hash, parent_height = parent
    if parent_height == 0 or view.has(parent_hash):
        return Announce.SEND
    return Announce.CATCH_UP


@dataclass(frozen=True)
class AnnounceFilter:
    """Immutable snapshot of one peer's :class:`PeerRelayState` for the broadcaster.

    ``base`` is a copy of the peer's block sets (the newest
    :data:`FILTER_KNOWN_WINDOW` known blocks, every announced one), ``recent``
    what was noted since; a hash evicted from the per-peer sets may stay in
    ``base`` until the next copy (the oldest hashes, never a new tip's)."""

    is_cpp: bool
    catchup_deadline: float | None = None
    base: frozenset = frozenset()
    recent: frozenset = frozenset()

    def has(self, h: bytes) -> bool:
        return h in self.recent or h in self.base

    def catching_up(self, now: float) -> bool:
        return self.catchup_deadline is not None and now < self.catchup_deadline


class AnnounceFilters:
    """The board of published :class:`AnnounceFilter` snapshots, by peer id.

    Written by the message-handler thread (publish on change, drop on
    disconnect), read by broadcaster workers; ``_lock`` guards ``_filters`` and is
    held only for a dict operation.  A peer without a filter (its handshake
    listener has not run yet) is judged as a fresh peer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._filters: dict[int, AnnounceFilter] = {}

    def publish(self, peer_id: int, snapshot: AnnounceFilter) -> None:
        with self._lock:
            self._filters[peer_id] = snapshot

    def drop(self, peer_id: int) -> None:
        with self._lock:
            self._filters.pop(peer_id, None)

    def get(self, peer_id: int, is_cpp: bool) -> AnnounceFilter:
        with self._lock:
            snapshot = self._filters.get(peer_id)
        return snapshot if snapshot is not None else AnnounceFilter(is_cpp)

    def __len__(self) -> int:
        with self._lock:
            return len(self._filters)


@dataclass
class PeerRelayState:
    """Per-peer relay state (Core's ``Peer``/``CNodeState``).

    Owned by the message-handler thread: created in ``BlockRelay.on_handshake``,
    dropped in ``BlockRelay.on_disconnect``, read and written only there and by
    the handlers and posted calls that run on that thread.  No lock."""

    is_cpp: bool
    known: LRUSet[bytes] = field(default_factory=lambda: LRUSet(MAX_KNOWN_PER_PEER))
    announced: LRUSet[bytes] = field(
        default_factory=lambda: LRUSet(MAX_ANNOUNCED_UNKNOWN_PER_PEER))
    best_known_height: int = 0
    batch_last: bytes | None = None     # continuation trigger of the running catch-up
    batch_sent: float = 0.0
    next_height: int = 0                # first height of the next catch-up batch
    sent_addr: bool = False             # answered its getaddr (once per connection)
    getblocks_sent: float = float("-inf")   # when we last asked it for its chain
    batch_end: bytes | None = None      # last hash of the latest multi-block inv it sent us
    branch_tip: object = None           # highest block from it that entered our block tree
    #: Snapshot bookkeeping: the last published filter, and hashes noted since its base.
    _filter: AnnounceFilter | None = None
    _noted_since_base: set = field(default_factory=set)
    _dirty: bool = True

    def has(self, h: bytes) -> bool:
        """The peer has (or announced) block ``h``."""
        return h in self.known or h in self.announced

    def catching_up(self, now: float) -> bool:
        return self.batch_last is not None and now - self.batch_sent < CATCHUP_TIMEOUT_S

    def note_has(self, h: bytes, height: int | None) -> None:
        """The peer has block ``h`` (``height`` if it is in our block tree, else None)."""
        if height is None:
            self.announced.add(h)
        else:
            self.known.add(h)
            self.best_known_height = max(self.best_known_height, height)
        if len(self._noted_since_base) <= FILTER_MERGE_EVERY:
            self._noted_since_base.add(h)
        self._dirty = True

    def set_batch(self, last: bytes | None, sent: float = 0.0, next_height: int = 0) -> None:
        """Start (``last`` the batch's last hash) or end (None) a catch-up batch."""
        self.batch_last = last
        if last is not None:
            self.batch_sent, self.next_height = sent, next_height
        self._dirty = True

    def announce_filter(self) -> AnnounceFilter | None:
        """A new snapshot if anything changed since the last one, else None."""
        if not self._dirty:
            return None
        self._dirty = False
        deadline = self.batch_sent + CATCHUP_TIMEOUT_S if self.batch_last is not None else None
        old = self._filter
        if old is None or len(self._noted_since_base) > FILTER_MERGE_EVERY:
            newest_known = itertools.islice(self.known, max(0, len(self.known)
                                                            - FILTER_KNOWN_WINDOW), None)
            base = frozenset(newest_known) | frozenset(self.announced)
            self._noted_since_base = set()
            recent: frozenset = frozenset()
        else:
            base, recent = old.base, frozenset(self._noted_since_base)
        self._filter = AnnounceFilter(self.is_cpp, deadline, base, recent)
        return self._filter
