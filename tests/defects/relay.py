"""Defects of block relay: what the propagation gates exist to catch."""
from __future__ import annotations

from defects import defect


@defect("no-relay", "a peer is never told about a new block: the broadcaster drops every"
        " block announcement")
def no_relay() -> None:
    from dilithion.net.async_broadcaster import AsyncBroadcaster
    AsyncBroadcaster.broadcast_block = lambda self, *a, **kw: None
