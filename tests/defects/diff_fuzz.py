"""Defects that ``dilithion-diff fuzz`` must find on its own (tests/test_diff_fuzz.py).

Both hinge on a ``block`` message with bytes after its ``vtx``, which the C++
node and ours ignore (spec ``net`` 3.x): the fuzzer's byte and count mutators
make such payloads often (a block seed with bytes appended, inserted, or a
shorter ``vtx`` length), so a short run with a fixed seed meets one, and the
minimiser can cut the input down to the block and one extra byte.
"""
from __future__ import annotations

import os

from defects import defect

#: The exit status of the crashing defect (any non-zero one would do).
CRASH_STATUS = 70


def _has_trailing_bytes(payload: bytes) -> bool:
    from dilithion.primitives.block import Block
    try:
        return len(Block.deserialize(payload, allow_trailing=True).serialize()) < len(payload)
    except ValueError:
        return False


def _patch_block_with_trailing_bytes(action) -> None:
    from dilithion.net.net_processing import NetMessageProcessor
    original = NetMessageProcessor.process_message

    def process_message(self, conn, net_msg):
        if (net_msg.command == "block" and conn.peer.is_handshake_complete()
                and _has_trailing_bytes(net_msg.payload)):
            return action(self, conn)
        return original(self, conn, net_msg)
    NetMessageProcessor.process_message = process_message


@defect("diff-fuzz-block-trailing-disconnect", "disconnects the sender of a block with bytes"
        " after its vtx (both nodes ignore such bytes)")
def block_trailing_disconnect() -> None:
    _patch_block_with_trailing_bytes(
        lambda self, conn: self.transport.disconnect(conn.peer.id, "trailing bytes (defect)"))


@defect("diff-fuzz-block-trailing-exit", f"exits with status {CRASH_STATUS} on a block with bytes"
        " after its vtx (a crash the fuzzer must report as one)")
def block_trailing_exit() -> None:
    _patch_block_with_trailing_bytes(lambda self, conn: os._exit(CRASH_STATUS))


@defect("diff-fuzz-block-trailing-hang", "its message thread stops for good on a block with"
        " bytes after its vtx: the node answers nothing more (a hang the fuzzer must report)")
def block_trailing_hang() -> None:
    import threading
    _patch_block_with_trailing_bytes(lambda self, conn: threading.Event().wait())
