"""Address messages: ``getaddr`` and ``addr`` (Core's ``ProcessMessage`` addr branches).

Thread: the message-handler thread; the once-per-connection reply flag lives in
the peer's :class:`~dilithion.net.peer_relay_state.PeerRelayState`.  No lock.
"""
from __future__ import annotations

from loguru import logger

from dilithion.net.net_transport import ConnectionManager
from dilithion.net.peer_relay_state import PeerRelayState
from dilithion.net.protocol import Address, MsgAddr

__all__ = ["AddrRelay", "MAX_ADDR_REPLY"]

#: Most addresses returned for ``getaddr``.
MAX_ADDR_REPLY = 1000


class AddrRelay:
    """Answers ``getaddr`` with the listening addresses we dialled; logs ``addr``."""

    def __init__(self, transport: ConnectionManager) -> None:
        self.transport = transport

    def on_getaddr(self, peer, state: PeerRelayState, msg) -> None:
        """Reply once per connection with the listening addresses we dialled
        (inbound peers' ports are ephemeral).  The C++ never answers (``net`` 3.5).

        C++: ``ProcessGetAddrMessage``; the reply is what ``GetPeerAddresses`` was for.
        """
        if state.sent_addr:
            return
        state.sent_addr = True
        addrs = []
        for p in self.transport.peer_manager.handshake_complete_peers():
            if p.inbound or p.id == peer.id:
                continue
            try:
                addrs.append(Address.from_ipv4(p.host, p.port))
            except ValueError:
                continue
        if addrs:
            self.transport.send_message(peer.id, MsgAddr(addrs[:MAX_ADDR_REPLY]))

    def on_addr(self, peer, state: PeerRelayState, msg) -> None:
        """Addresses are only logged: the node dials what it is told (``--connect``/``--addnode``).

        C++: ``ProcessAddrMessage``.
        """
        logger.debug(f"[P2P] Received {len(msg.addrs)} address(es) from peer {peer.id}")
