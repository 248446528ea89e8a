"""RPC ``getblockpropagation``: the per-block propagation record of one block.

Kept out of ``methods.py`` (near the module size limit); registered in the
same table by the ``rpc_method`` decorator when the RPC server imports this
module.  The record itself is :class:`dilithion.net.propagation.PropagationLog`,
owned by the block relay.
"""
from __future__ import annotations

from dilithion.rpc.methods import (RPC_INVALID_ADDRESS_OR_KEY, RPCError, _parse_hash,
                                   rpc_method)

__all__ = ["rpc_getblockpropagation"]


@rpc_method("getblockpropagation",
            "Show when a recent block connected here and, per peer, when its inv and the block were sent")
def rpc_getblockpropagation(rpc, hash: str) -> dict:  # noqa: A002 - the RPC parameter's name
    relay = getattr(rpc.ctx, "block_relay", None)
    if relay is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Block relay not running (no P2P)")
    block_hash = _parse_hash(hash, "block hash")
    record = relay.propagation.get(bytes(block_hash))
    if record is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY,
                       "Block not in the propagation record (it keeps the last blocks that"
                       " became the tip here)")
    pm = relay.transport.peer_manager
    for entry in record["peers"]:
        peer = pm.get_peer(entry["peer"])
        entry["addr"] = peer.address() if peer is not None else None
    peers = record["peers"]
    record["summary"] = {
        "peers": len(peers),
        "inv_written": sum(1 for p in peers if p["inv_written"] is not None),
        "getdata": sum(1 for p in peers if p["getdata"] is not None),
        "block_sent": sum(1 for p in peers if p["block_written"] is not None),
        "not_sent": sum(1 for p in peers if p["not_sent"]),
    }
    return record
