"""Peers, the peer table and bans: the port of ``src/net/peers.{h,cpp}``.

Differences from the C++ (``net`` 4.4, 4.5): the misbehaviour score is live
(bad input is scored and, past :attr:`PeerManager.BAN_THRESHOLD`, the host is
*discouraged* for ``ban_time`` seconds, :mod:`dilithion.net.banman`), manual
bans are by IP or subnet, expire and persist, the outbound limit of 8 is
enforced (``net D-26``), and a peer leaves the table when its connection
closes (``net D-19``, ``D-20``).  The dormant address database and the
hard-coded seeds are not ported (the node never dials anything implicitly).
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field

from loguru import logger

from dilithion.net.banman import BanMan
from dilithion.net.eviction import netgroup
from dilithion.net.protocol import CPP_USER_AGENT
from dilithion.node.metrics import NULL_METRICS, Metrics

__all__ = ["Peer", "PeerManager"]


@dataclass(eq=False)
class Peer:
    """One connection's identity and protocol state (``CPeer``).

    Written by the network thread (byte counters, ``last_send``/``last_recv``,
    ``connect_time``) and by the message-handler thread (the ``version``
    fields, ``version_received``/``verack_received``, ``ping_time``,
    ``min_ping_time``, and ``last_block_time`` when the block relay accepts a
    block from the peer, so junk blocks earn no eviction protection); readers
    elsewhere take snapshots.  Each of those fields has that single writer
    thread.  ``state`` and ``misbehavior_score`` are written only under
    ``PeerManager._cs_peers``.  Times are wall-clock seconds (for RPC).
    """

    class State(enum.IntEnum):
        STATE_DISCONNECTED = 0
        STATE_CONNECTING = 1
        STATE_CONNECTED = 2
        STATE_VERSION_SENT = 3
        STATE_HANDSHAKE_COMPLETE = 4
        STATE_BANNED = 5

    id: int
    host: str
    port: int
    inbound: bool
    state: "Peer.State" = State.STATE_DISCONNECTED
    version: int = 0
    user_agent: bytes = b""
    start_height: int = 0
    relay: bool = True
    services: int = 0
    nonce: int = 0
    connect_time: float = field(default_factory=time.time)
    last_send: float = 0.0
    last_recv: float = 0.0
    bytes_sent: int = 0
    bytes_recv: int = 0
    misbehavior_score: int = 0
    #: Handshake bookkeeping, written by the message-handler thread only.
    version_received: bool = False
    verack_received: bool = False
    #: Round-trip time of the last answered ping, in seconds (None before one).
    ping_time: float | None = None
    #: Lowest round-trip time seen (eviction protects the fastest peers).
    min_ping_time: float | None = None
    #: Wall-clock time this peer last sent us a block (0: never; eviction protects).
    last_block_time: float = 0.0

    def is_connected(self) -> bool:
        return self.State.STATE_CONNECTED <= self.state < self.State.STATE_BANNED

    def is_handshake_complete(self) -> bool:
        return self.state == self.State.STATE_HANDSHAKE_COMPLETE

    def is_cpp(self) -> bool:
        """The C++ node: start height always 0, no tx relay (``net D-08``, ``D-16``)."""
        return self.user_agent == CPP_USER_AGENT

    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log_fields(self) -> dict:
        """The JSON log's structured fields for a line about this peer
        (``logger.bind(**peer.log_fields())``; the text lines do not show them)."""
        return {"peer": self.id, "peer_addr": self.address()}

    def log(self):
        """loguru's logger bound to :meth:`log_fields`: a line this peer caused is
        charged to its host's share of the log budget (``node/log_rate_limit.py``),
        so a flooding peer cannot silence the same line about an honest one."""
        return logger.bind(**self.log_fields())

    def to_string(self) -> str:
        return (f"Peer(id={self.id}, addr={self.address()}, state={int(self.state)}, "
                f"version={self.version}, agent={self.user_agent.decode('ascii', 'replace')})")


class PeerManager:
    """The peer table (``CPeerManager``); bans and discouragement live in ``banman``.

    Shared by every thread; ``_cs_peers`` guards ``_peers``, the
    misbehaviour scores and every ``Peer.state`` (only :meth:`add_peer`,
    :meth:`transition`, :meth:`misbehaving` and :meth:`remove_peer` write it).
    ``_state_changed`` (a condition on that lock) wakes :meth:`wait_for_handshake`.
    Misbehaviour is scored here (:meth:`misbehaving`, logged and counted in
    ``metrics``); the transport only closes the connections it returns.
    Peer ids start at 1 and are never reused (``net`` 4.3).  ``banman``
    (:class:`~dilithion.net.banman.BanMan`, its own lock ``_cs_banned``, taken
    after ``_cs_peers``) is set once before the transport starts.

    Slots: outbound peers get ``max_outbound`` reserved slots; inbound peers at
    most ``max_peers - max_outbound``, and at most ``max_inbound_per_netgroup``
    from one netgroup (0: no limit).  When the inbound slots are full the
    network thread evicts an inbound peer (:mod:`dilithion.net.eviction`).
    """

    MAX_TOTAL_CONNECTIONS = 125
    MAX_OUTBOUND_CONNECTIONS = 8
    BAN_THRESHOLD = 100
    #: Discouragement time after misbehaviour (the C++'s dormant 86,400 s ban; one hour here).
    DEFAULT_BAN_TIME = 3600

    def __init__(self, max_peers: int = MAX_TOTAL_CONNECTIONS,
                 max_outbound: int = MAX_OUTBOUND_CONNECTIONS,
                 ban_time: float = DEFAULT_BAN_TIME, banman: BanMan | None = None,
                 max_inbound_per_netgroup: int = 0, metrics: Metrics = NULL_METRICS) -> None:
        self.metrics = metrics
        self.max_peers = max_peers
        self.max_outbound = max_outbound
        self.max_inbound = max(0, max_peers - max_outbound)
        self.max_inbound_per_netgroup = max_inbound_per_netgroup
        self.ban_time = ban_time
        self.banman = banman or BanMan(discourage_time=ban_time)
        self._cs_peers = threading.Lock()
        self._state_changed = threading.Condition(self._cs_peers)
        self._peers: dict[int, Peer] = {}
        self._next_id = 1

    # -- table -----------------------------------------------------------------
    def add_peer(self, host: str, port: int, inbound: bool,
                 state: "Peer.State" = Peer.State.STATE_DISCONNECTED) -> Peer | None:
        """A new table entry in ``state``, or None when full, over the outbound limit, or
        banned.  An inbound peer from a discouraged host needs one slot to spare
        (Core: ``discouraged && nInbound + 1 >= nMaxInbound``)."""
        with self._cs_peers:
            if self.banman.is_banned(host) or not self._has_room_locked(inbound, host):
                return None
            if inbound and self._inbound_count_locked() + 1 >= self.max_inbound and \
                    self.banman.is_discouraged(host):
                return None
            peer = Peer(self._next_id, host, port, inbound, state)
            self._next_id += 1
            self._peers[peer.id] = peer
            return peer

    def _inbound_count_locked(self) -> int:
        return sum(1 for p in self._peers.values() if p.inbound)

    def _has_room_locked(self, inbound: bool, host: str | None = None) -> bool:
        return self._refusal_locked(inbound, host) is None

    def _refusal_locked(self, inbound: bool, host: str | None) -> str | None:
        if len(self._peers) >= self.max_peers:
            return "full"
        if not inbound:
            outbound = sum(1 for p in self._peers.values() if not p.inbound)
            return None if outbound < self.max_outbound else "outbound full"
        inbound_peers = [p for p in self._peers.values() if p.inbound]
        if host is not None and self.max_inbound_per_netgroup:
            group = netgroup(host)
            if sum(1 for p in inbound_peers
                   if netgroup(p.host) == group) >= self.max_inbound_per_netgroup:
                return "netgroup"
        return "full" if len(inbound_peers) >= self.max_inbound else None

    def inbound_refusal(self, host: str) -> str | None:
        """Why a new inbound connection from ``host`` has no slot: ``"netgroup"``
        (its netgroup is at its limit), ``"full"`` (every inbound slot taken:
        evict one), or None (room)."""
        with self._cs_peers:
            return self._refusal_locked(True, host)

    def remove_peer(self, peer_id: int) -> Peer | None:
        with self._cs_peers:
            peer = self._peers.pop(peer_id, None)
            if peer is not None and peer.state != Peer.State.STATE_BANNED:
                peer.state = Peer.State.STATE_DISCONNECTED
            self._state_changed.notify_all()
        return peer

    def transition(self, peer: Peer, from_states: "tuple[Peer.State, ...]", to: "Peer.State") -> bool:
        """Move ``peer`` to ``to`` only if it is in one of ``from_states`` (atomically,
        so a handshake step never overwrites a concurrent ban or disconnect)."""
        with self._cs_peers:
            if peer.state not in from_states:
                return False
            peer.state = to
            self._state_changed.notify_all()
            return True

    def wait_for_handshake(self, peer_id: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until the peer completes the handshake (True), or is gone, or
        ``timeout`` passes, or ``stop`` is set (False)."""
        deadline = time.monotonic() + timeout
        with self._cs_peers:
            while True:
                peer = self._peers.get(peer_id)
                if peer is None:
                    return False
                if peer.is_handshake_complete():
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._state_changed.wait(min(left, 0.1))

    def get_peer(self, peer_id: int) -> Peer | None:
        with self._cs_peers:
            return self._peers.get(peer_id)

    def get_all_peers(self) -> list[Peer]:
        with self._cs_peers:
            return [self._peers[k] for k in sorted(self._peers)]

    def get_connected_peers(self) -> list[Peer]:
        """Snapshot of peers with an open connection, ascending id."""
        return [p for p in self.get_all_peers() if p.is_connected()]

    def handshake_complete_peers(self) -> list[Peer]:
        return [p for p in self.get_all_peers() if p.is_handshake_complete()]

    def get_connection_count(self) -> int:
        with self._cs_peers:
            return len(self._peers)

    def get_inbound_count(self) -> int:
        with self._cs_peers:
            return sum(1 for p in self._peers.values() if p.inbound)

    # -- misbehaviour, discouragement and bans ---------------------------------------
    def misbehaving(self, peer_id: int, howmuch: int, reason: str, *,
                    quiet: bool = False) -> Peer | None:
        """Score bad input of a peer (C++ ``CPeerManager::Misbehaving``, live here).

        Returns the peer when this call crossed :attr:`BAN_THRESHOLD`: its host
        is now discouraged (:meth:`BanMan.discourage`) and the caller closes
        **every** connection of that host (the disconnect the C++ never does);
        None otherwise, and for unknown peers.  Score 0 is an honest fault
        (wrong network magic): logged, no score, no metric; the caller
        disconnects.  ``reason`` reads ``"<kind>: <detail>"``; ``<kind>`` labels
        the ``peer_misbehaviour`` metric.  ``quiet`` scores without that log
        line and metric (a flood whose first dropped message was logged).
        Any thread.
        """
        if quiet:
            peer, crossed = self._score(peer_id, howmuch)
        else:
            peer = self.get_peer(peer_id)
            if peer is None:
                return None
            if howmuch <= 0:
                logger.bind(**peer.log_fields()).info(
                    f"[P2P] Disconnecting peer {peer_id} ({peer.address()}): {reason} "
                    f"(not scored: a misconfigured node, not an attack)")
                return None
            _, crossed = self._score(peer_id, howmuch)
            kind = reason.split(":", 1)[0].strip() or "other"
            logger.bind(**peer.log_fields()).warning(
                f"[P2P] Misbehaving peer {peer_id} ({peer.address()}): {reason} "
                f"(+{howmuch}, score {peer.misbehavior_score})")
            self.metrics.misbehaviour_events.labels(reason=kind).inc()
        if not crossed:
            return None
        logger.bind(**peer.log_fields()).warning(
            f"[P2P] Discouraging {peer.host} for {self.ban_time:g} s "
            f"(peer {peer.id} reached score {peer.misbehavior_score}: {reason}); "
            f"closing all its connections")
        return peer

    def _score(self, peer_id: int, howmuch: int) -> tuple[Peer | None, bool]:
        """Add to the peer's score under ``_cs_peers``: (the peer, whether this
        call crossed the threshold).  Crossing discourages the host (``_cs_banned``
        is taken after ``_cs_peers``).  Not crossed for unknown peers and for
        peers already past the threshold."""
        with self._cs_peers:
            peer = self._peers.get(peer_id)
            if peer is None:
                return None, False
            before = peer.misbehavior_score
            peer.misbehavior_score += howmuch
            if before < self.BAN_THRESHOLD <= peer.misbehavior_score:
                self.banman.discourage(peer.host)
                peer.state = Peer.State.STATE_BANNED
                self._state_changed.notify_all()
                return peer, True
            return peer, False

    def is_banned(self, host: str) -> bool:
        return self.banman.is_banned(host)

    def is_discouraged(self, host: str) -> bool:
        return self.banman.is_discouraged(host)
