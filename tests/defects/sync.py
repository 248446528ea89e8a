"""Defects of catch-up sync: what ``peer-kill`` and ``partition`` exist to catch."""
from __future__ import annotations

from defects import defect


@defect("no-catch-up", "a peer that is behind is never brought up to our chain: no catch-up"
        " after the handshake, no catch-up batches, getblocks unanswered (catch-up sync"
        " switched off)")
def no_catch_up() -> None:
    from dilithion.net.block_sync import BlockSync
    BlockSync.on_handshake = lambda self, peer, state: None
    BlockSync.send_catchup_batch = lambda self, *a, **kw: None
    BlockSync.on_getblocks = lambda self, *a, **kw: None
