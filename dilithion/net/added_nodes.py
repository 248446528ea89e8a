"""Peers the operator asked for, kept connected.

The C++ node dials each ``--connect``/``--addnode`` entry once at start-up and
never again (``net D-28``), and its RPC ``addnode`` does nothing (``cli 6.3
#37``).  Here every such peer (``--connect``, ``--addnode``, RPC ``addnode add``)
is redialled when its connection goes away: after 2 s if it had completed a
handshake, otherwise with a delay that doubles up to 60 s while attempts fail.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from loguru import logger

__all__ = ["AddedNodes", "RECONNECT_INITIAL_DELAY", "RECONNECT_MAX_DELAY"]

RECONNECT_INITIAL_DELAY = 2.0
RECONNECT_MAX_DELAY = 60.0


@dataclass
class _AddedPeer:
    entry: str                       # as the operator wrote it (log lines)
    host: str
    port: int
    kind: str                        # "connect" or "addnode" (only the log wording differs)
    peer_id: int | None = None       # the current connection, None while waiting to redial
    was_up: bool = False             # the current connection completed its handshake
    next_attempt: float = 0.0
    delay: float = RECONNECT_INITIAL_DELAY


class AddedNodes:
    """The operator's peer list and its redial schedule.

    Ownership: ``add``/``remove`` are called from the main thread (start-up)
    and RPC threads, ``maintain`` from the node's main loop; ``_lock`` guards the
    list.  Dialling only queues a connection on the network thread, so holding
    the lock across it never blocks on a socket.
    """

    def __init__(self, connman, initial_delay: float = RECONNECT_INITIAL_DELAY,
                 max_delay: float = RECONNECT_MAX_DELAY) -> None:
        self._connman = connman
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._peers: list[_AddedPeer] = []
        self._lock = threading.Lock()

    def add(self, entry: str, host: str, port: int, kind: str = "addnode") -> int | None:
        """Remember the peer and dial it now; the peer id, or ``None`` if the dial failed
        (it is retried all the same).  Adding a peer twice keeps one entry."""
        with self._lock:
            peer = next((p for p in self._peers if (p.host, p.port) == (host, port)), None)
            if peer is None:
                peer = _AddedPeer(entry, host, port, kind, delay=self._initial_delay)
                self._peers.append(peer)
            elif peer.peer_id is not None:
                return peer.peer_id
            self._dial(peer, first=True)
            return peer.peer_id

    def remove(self, host: str, port: int) -> bool:
        """Forget the peer (its current connection stays up); ``False`` if unknown."""
        with self._lock:
            before = len(self._peers)
            self._peers = [p for p in self._peers if (p.host, p.port) != (host, port)]
            return len(self._peers) != before

    def entries(self) -> list[dict]:
        with self._lock:
            return [{"addednode": p.entry, "host": p.host, "port": p.port,
                     "connected": p.peer_id is not None and p.was_up, "peer_id": p.peer_id}
                    for p in self._peers]

    def maintain(self, now: float | None = None) -> None:
        """Redial peers whose connection is gone and whose delay has passed."""
        now = time.monotonic() if now is None else now
        pm = self._connman.peer_manager
        with self._lock:
            for peer in self._peers:
                if peer.peer_id is not None:
                    current = pm.get_peer(peer.peer_id)
                    if current is not None:
                        peer.was_up = peer.was_up or current.is_handshake_complete()
                        continue
                    self._schedule_redial(peer, now)
                    logger.warning(f"[P2P] Lost connection to {peer.entry}; "
                                   f"reconnecting in {peer.next_attempt - now:.0f} s")
                elif now >= peer.next_attempt:
                    self._dial(peer)

    # -- internals (caller holds _lock) -------------------------------------------
    def _dial(self, peer: _AddedPeer, first: bool = False) -> None:
        peer.peer_id = self._connman.connect(peer.host, peer.port)
        peer.was_up = False
        if peer.peer_id is not None:
            verb = "Connected to" if peer.kind == "connect" else "Added node"
            logger.info(f"    [OK] {verb} {peer.entry} (peer_id={peer.peer_id})" if first
                        else f"[P2P] Reconnecting to {peer.entry} (peer_id={peer.peer_id})")
            return
        verb = "connect to" if peer.kind == "connect" else "add node"
        logger.warning(f"    [FAIL] Failed to {verb} {peer.entry}" if first
                       else f"[P2P] Failed to reconnect to {peer.entry}")
        self._schedule_redial(peer, time.monotonic())

    def _schedule_redial(self, peer: _AddedPeer, now: float) -> None:
        """Next attempt after ``delay``; the delay doubles while attempts keep failing."""
        if peer.was_up:
            peer.delay = self._initial_delay
        peer.next_attempt = now + peer.delay
        if not peer.was_up:
            peer.delay = min(peer.delay * 2, self._max_delay)
        peer.peer_id = None
        peer.was_up = False
