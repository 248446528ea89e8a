"""Defects of the transport: sends that stall, a dead-peer check tuned for
loopback, an inbound limit of a handful of peers.  What the "send timeouts"
gate, the ``latency`` scenario and "50+ concurrent peers" exist to catch."""
from __future__ import annotations

from defects import defect

#: ``pong-deadline-1s``: a keepalive ping every second, the pong due within a
#: second; on loopback a pong takes microseconds, over the latency scenario's
#: links (2 s each way) it takes 4 s, so every link is closed as dead.
PING_S = 1.0
#: ``inbound-limit-6``: inbound connections a node accepts (the real node: 117).
INBOUND_LIMIT = 6


@defect("block-send-stalls", "the send path never writes a 'block' message: the connection"
        " makes no progress and the send timeout fires on a healthy link")
def block_send_stalls() -> None:
    from dilithion.net.socket import SendQueue
    original = SendQueue.write_to

    def write_to(self, sock):
        with self._lock:
            head = self._items[0] if self._items else None
        if head is not None and bytes(head[4:16]).rstrip(b"\0") == b"block":
            return 0, 0                        # as if the kernel took nothing
        return original(self, sock)
    SendQueue.write_to = write_to


def _patch_transport_config(**forced) -> None:
    from dilithion.net.connection import TransportConfig
    original = TransportConfig.__init__

    def init(self, **kwargs):
        original(self, **{**kwargs, **forced})
    TransportConfig.__init__ = init


@defect("pong-deadline-1s", f"pings every {PING_S:g} s and closes a peer whose pong takes over"
        f" {PING_S:g} s: a dead-peer check that takes every distant peer for dead")
def pong_deadline() -> None:
    _patch_transport_config(ping_interval=PING_S, ping_timeout=PING_S)


@defect("inbound-limit-6", f"accepts at most {INBOUND_LIMIT} inbound peers")
def inbound_limit() -> None:
    _patch_transport_config(max_peers=8 + INBOUND_LIMIT, max_outbound=8)
