"""Accepting inbound connections on the network thread (``AcceptConnection``).

A collaborator of :class:`~dilithion.net.net_transport.ConnectionManager`,
owned by its network thread: :class:`InboundAcceptor` takes every pending
connection off the listener, refuses banned hosts and hosts over the
per-netgroup limit, makes room by evicting an inbound peer when the inbound
slots are full (:mod:`dilithion.net.eviction`, Core's
``AttemptToEvictConnection``), and admits the rest to the peer table.  The
transport keeps the selector and the connection table: the acceptor gets what
it needs from them as named callbacks at construction.
"""
from __future__ import annotations

import errno
from typing import Callable, Iterable

from loguru import logger

from dilithion.net.connection import Connection
from dilithion.net.eviction import EvictionCandidate, netgroup, select_node_to_evict
from dilithion.net.peers import Peer, PeerManager
from dilithion.net.socket import Socket
from dilithion.node.metrics import Metrics

__all__ = ["InboundAcceptor"]

State = Peer.State

#: ``accept`` errors that mean the process is out of descriptors or memory: the
#: pending connection stays queued, so the listener must rest before the next try.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class InboundAcceptor:
    """Accept, refuse or make room (``AcceptConnection``).

    Owner: the network thread, which calls :meth:`accept_all` when the listener
    is readable.  Built with the peer table (``peer_manager``, its own lock), the
    transport's ``metrics`` and callbacks: ``connections()`` (a snapshot of the
    open connections, the eviction candidates), ``add(peer, sock)`` (create the
    connection in the transport's table), ``opened(conn)`` (arm the selector and
    tell the message processor) and ``close(conn, reason, category)``.
    """

    def __init__(self, peer_manager: PeerManager, metrics: Metrics, *,
                 connections: Callable[[], Iterable[Connection]],
                 add: Callable[[Peer, Socket], Connection],
                 opened: Callable[[Connection], None],
                 close: Callable[[Connection, str, str], None]) -> None:
        self.peer_manager = peer_manager
        self.metrics = metrics
        self._connections = connections
        self._add = add
        self._opened = opened
        self._close = close

    def accept_all(self, listener: Socket) -> bool:
        """Accept every pending inbound connection; False when the process is out
        of descriptors (the caller rests the listener)."""
        while True:
            try:
                accepted = listener.accept()
            except OSError as e:
                logger.warning(f"[P2P] Failed to accept peer connection: {e}")
                self.metrics.socket_errors.inc()
                return e.errno not in _OUT_OF_RESOURCES
            if accepted is None:
                return True
            sock, host, port = accepted
            if self.peer_manager.is_banned(host):
                logger.info(f"[P2P] Refused connection from banned host {host}:{port}")
                sock.close()
                continue
            refusal = self.peer_manager.inbound_refusal(host)
            if refusal == "full" and not self.peer_manager.is_discouraged(host) \
                    and self._evict_inbound():
                refusal = self.peer_manager.inbound_refusal(host)
            peer = None if refusal else self.peer_manager.add_peer(
                host, port, inbound=True, state=State.STATE_CONNECTED)
            if peer is None:
                limit = (f"{self.peer_manager.max_inbound_per_netgroup} inbound connections "
                         f"from {netgroup(host)} already" if refusal == "netgroup" else
                         f"{self.peer_manager.max_inbound} inbound connections already, "
                         f"none evictable")
                logger.info(f"[P2P] Failed to accept peer connection from {host}:{port}: {limit}")
                sock.close()
                continue
            conn = self._add(peer, sock)
            log = logger.bind(**peer.log_fields())
            log.info(f"[P2P] New peer connected: {host}:{port}")
            log.info(f"[P2P] Peer accepted and added to connection pool (peer_id={peer.id})")
            self._opened(conn)

    def _evict_inbound(self) -> bool:
        """Make room for a new inbound connection by closing one inbound peer
        (Core's ``AttemptToEvictConnection``); False when every one is protected."""
        pm = self.peer_manager
        inbound = {c.peer.id: c for c in self._connections() if c.peer.inbound and not c.closed}
        candidates = [EvictionCandidate(c.peer.id, netgroup(c.peer.host), c.opened,
                                        c.peer.is_handshake_complete(), c.peer.min_ping_time,
                                        c.peer.last_block_time, pm.is_discouraged(c.peer.host))
                      for c in inbound.values()]
        victim = select_node_to_evict(candidates)
        conn = inbound.get(victim) if victim is not None else None
        if conn is None:
            return False
        self.metrics.peers_evicted.inc()
        self._close(conn, "evicted to make room for a new inbound connection", "evicted")
        return True
