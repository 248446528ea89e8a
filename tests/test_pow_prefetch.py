"""Proof-of-work prefetch (``dilithion.net.pow_prefetch``) and the header-hash cache.

(That a catch-up is hashed ahead is asserted in
``test_p2p_sync.test_fresh_node_catches_up_300_blocks``.)

Received blocks are hashed on spare cores as they are queued, and the handler
waits for a hash in progress instead of computing it again.  Real RandomX,
real sockets, real LevelDB; the attacker connects from its own loopback address.
"""
from __future__ import annotations

import sys
import threading

from dilithion.consensus.pow import HeaderHashCache
from dilithion.net.protocol import MsgBlock
from dilithion.primitives.block import Block, BlockHeader
from framework import TestPeer, regtest_chain, wait_until

ATTACKER = "127.0.0.10"


class GatedHasher:
    """The real hasher, counting calls; the first call waits until ``release``."""

    def __init__(self, hasher) -> None:
        self._hasher = hasher
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def hash(self, data: bytes) -> bytes:
        self.calls += 1
        self.entered.set()
        self.release.wait(30)
        return self._hasher.hash(data)


def _waiting_in_event_wait(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and "threading" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_a_header_asked_for_twice_at_once_is_hashed_once(hasher):
    gated = GatedHasher(hasher)
    cache = HeaderHashCache(gated)
    header = regtest_chain(1)[1][0].header.serialize()
    results = []
    first = threading.Thread(target=lambda: results.append(cache.get(header)))
    first.start()
    assert gated.entered.wait(10)
    second = threading.Thread(target=lambda: results.append(cache.get(header)))
    second.start()
    wait_until(lambda: _waiting_in_event_wait(second), timeout=10)   # parked on the first
    gated.release.set()
    first.join(10)
    second.join(10)
    assert gated.calls == 1
    assert results == [regtest_chain(1)[1][1]] * 2


def test_out_of_range_nbits_is_never_prehashed_and_the_honest_peer_still_syncs(inprocess_nodes):
    chain = regtest_chain(5)
    node = inprocess_nodes("target")
    good = chain[1][0]
    bogus = [Block(BlockHeader(good.header.version, good.header.hash_prev_block,
                               good.header.hash_merkle_root, good.header.time, bits,
                               good.header.nonce), good.vtx)
             for bits in (0x01000001, 0x2100ffff, 0xffffffff)]
    with TestPeer(bind_host=ATTACKER) as attacker:
        attacker.connect(node.p2p_port)
        attacker.handshake()
        for block in bogus:
            attacker.send(MsgBlock(block))
        attacker.wait_for_disconnect(timeout=10)
    assert node.connman.peer_manager.is_discouraged(ATTACKER)
    assert node.ctx.pow_prefetch.headers_done == 0
    # The honest peer on 127.0.0.1 still hands over its chain, hashed ahead as usual.
    honest = inprocess_nodes("honest")
    honest.load(chain)
    node.dial(honest)
    wait_until(lambda: node.height() == 5, timeout=60, message=lambda: node.height())
    assert node.ctx.pow_prefetch.headers_done > 0
