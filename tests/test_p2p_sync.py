"""Block relay between real nodes: fetch, orphan walk-back, catch-up, relay along a line.

Every test uses real sockets on loopback, real LevelDB chain state in tmp dirs
and real RandomX; the mined regtest chain is shared for the session.
"""
from __future__ import annotations

from dilithion.net.protocol import (CPP_USER_AGENT, Inv, InvType, MsgBlock, MsgGetblocks, MsgGetdata,
                                    MsgInv)
from dilithion.net import block_download, block_sync
from dilithion.primitives.block import Block, BlockHeader
from dilithion.crypto.mldsa import KeyPair
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.template import mine_block, mine_chain
from framework import REGTEST, next_commands, raw_peer, regtest_chain, wait_until

BLOCK = InvType.MSG_BLOCK_INV


# --------------------------------------------------------------------------- catch-up
def test_fresh_node_catches_up_300_blocks(inprocess_nodes):
    chain = regtest_chain(300)
    server = inprocess_nodes("server")
    server.load(chain)
    fresh = inprocess_nodes("fresh")
    fresh.dial(server)
    assert wait_until(lambda: fresh.height() == 300, timeout=60), fresh.height()   # liveness guard
    assert fresh.chain.tip().hash == chain[300][1]
    # Hashed on spare cores as the blocks were queued (dilithion.net.pow_prefetch).
    assert fresh.ctx.pow_prefetch.headers_done > 0
    # Every block was learned from an inv and timed until connected.
    assert wait_until(lambda: fresh.metric("block_propagation_time_seconds_count", role="receive") == 300)
    # Nothing is left waiting.
    assert fresh.ctx.block_relay.in_flight_count() == 0


def test_catch_up_batches_continue_on_getdata_and_on_echo(inprocess_nodes, monkeypatch):
    """C++-style peer: from height 1, ascending batches; the next batch follows a
    getdata for the batch's last hash, or the C++ echo (block) of it."""
    monkeypatch.setattr(block_sync, "INV_BATCH", 10)
    chain = regtest_chain(25)
    node = inprocess_nodes("n")
    node.load(chain)
    peer = raw_peer(node, agent=CPP_USER_AGENT, start_height=0)
    first = peer.wait_for("inv")
    assert [i.hash for i in first.inv] == [bytes(h) for _, h in chain[1:11]]
    assert all(i.type == BLOCK for i in first.inv)
    # getdata for everything in the batch: blocks come back in order, then batch 2.
    peer.send(MsgGetdata(first.inv))
    for _, h in chain[1:11]:
        got = peer.wait_for("block")
        assert got.block.get_hash(node.ctx.hasher) == h
    second = peer.wait_for("inv")
    assert [i.hash for i in second.inv] == [bytes(h) for _, h in chain[11:21]]
    # The C++ echo of the last hash (it already had it) also continues.
    peer.send(MsgBlock(chain[20][0]))
    third = peer.wait_for("inv")
    assert [i.hash for i in third.inv] == [bytes(h) for _, h in chain[21:26]]
    peer.send(MsgGetdata(third.inv[-1:]))
    assert peer.wait_for("block").block.header.serialize() == chain[25][0].header.serialize()
    # Caught up: no further inv.
    assert [c for c, _ in next_commands(peer)] == []
    peer.close()


def test_python_peer_is_announced_from_its_start_height(inprocess_nodes):
    chain = regtest_chain(12)
    node = inprocess_nodes("n")
    node.load(chain)
    peer = raw_peer(node, start_height=9)
    inv = peer.wait_for("inv")
    assert [i.hash for i in inv.inv] == [bytes(h) for _, h in chain[10:13]]
    peer.close()
    # A peer that is not behind gets no catch-up inv.
    level = raw_peer(node, start_height=12)
    assert [c for c, _ in next_commands(level)] == []
    level.close()


def test_cpp_peer_never_gets_a_block_whose_parent_it_may_lack(inprocess_nodes):
    chain = regtest_chain(4)
    node = inprocess_nodes("n")
    peer = raw_peer(node, agent=CPP_USER_AGENT)
    node.load(chain[1:2])
    inv1 = peer.wait_for("inv")
    assert [i.hash for i in inv1.inv] == [bytes(chain[1][1])]   # parent = genesis
    # The peer does not fetch block 1; blocks 2 and 3 arrive meanwhile.
    node.load(chain[2:4])
    inv2 = peer.wait_for("inv")
    # Never block 2 or 3 alone: a batch that starts at the first block it lacks.
    assert [i.hash for i in inv2.inv][0] == bytes(chain[1][1])
    assert [i.hash for i in inv2.inv] == [bytes(h) for _, h in chain[1:1 + len(inv2.inv)]]
    peer.close()


# --------------------------------------------------------------------------- fetching
def test_unknown_block_inv_is_fetched_once_and_known_ones_are_not_echoed(inprocess_nodes):
    chain = regtest_chain(3)
    node = inprocess_nodes("n")
    node.load(chain[:2])
    peer = raw_peer(node, start_height=3)
    known, unknown = bytes(chain[1][1]), bytes(chain[2][1])
    peer.send(MsgInv([Inv(BLOCK, known), Inv(BLOCK, unknown), Inv(BLOCK, unknown)]))
    peer.send(MsgInv([Inv(BLOCK, unknown)]))     # in flight: not requested again
    got = next_commands(peer)
    assert got == [("getdata", MsgGetdata([Inv(BLOCK, unknown)]))]   # no block echo (net D-14)
    peer.send(MsgBlock(chain[2][0]))
    assert wait_until(lambda: node.metric("block_propagation_time_seconds_count", role="receive") == 1)
    assert node.height() == 2
    peer.close()


def test_orphan_walks_back_to_genesis_through_the_sender(inprocess_nodes):
    """Fed only the tip by a C++ peer (no ``getblocks``), a fresh node asks it for
    each missing parent in turn."""
    chain = regtest_chain(20)
    node = inprocess_nodes("n")
    peer = raw_peer(node, agent=CPP_USER_AGENT)
    by_hash = {bytes(h): b for b, h in chain}
    peer.send(MsgBlock(chain[20][0]))
    requested = []
    while node.height() < 20:
        getdata = peer.wait_for("getdata", timeout=10)
        assert len(getdata.inv) == 1 and getdata.inv[0].type == BLOCK
        requested.append(getdata.inv[0].hash)
        peer.send(MsgBlock(by_hash[getdata.inv[0].hash]))
        if len(requested) == 19:
            break
    assert requested == [bytes(h) for _, h in reversed(chain[1:20])]
    assert wait_until(lambda: node.height() == 20, timeout=10)
    assert node.chain.tip().hash == chain[20][1]
    peer.close()


def test_orphan_from_a_python_peer_asks_for_its_chain_with_a_locator(inprocess_nodes):
    """A Python peer gets one ``getblocks`` (our locator) per interval, not a parent walk."""
    chain = regtest_chain(20)
    node = inprocess_nodes("n")
    node.load(chain[:13])
    peer = raw_peer(node, start_height=20)
    peer.send(MsgBlock(chain[20][0]))
    getblocks = peer.wait_for("getblocks", timeout=10)
    # Heights 12..3 one by one, then doubling steps (1), then the genesis.
    expected = [bytes(h) for _, h in reversed(chain[3:13])] + [bytes(chain[1][1]), bytes(chain[0][1])]
    assert [bytes(h) for h in getblocks.locator] == expected
    peer.send(MsgBlock(chain[19][0]))                     # another orphan within the interval
    assert "getblocks" not in [c for c, _ in next_commands(peer)]
    # Asked the same way, the node answers with its main chain after the shared block.
    peer.send(MsgGetblocks([bytes(chain[5][1]), bytes(chain[0][1])]))
    assert peer.wait_for("inv").inv == [Inv(BLOCK, bytes(h)) for _, h in chain[6:13]]
    peer.close()


def test_getdata_serves_stored_blocks_and_answers_unknown_with_notfound(inprocess_nodes):
    chain = regtest_chain(2)
    node = inprocess_nodes("n")
    node.load(chain)
    peer = raw_peer(node, start_height=2)
    unknown = bytes(32)
    peer.send(MsgGetdata([Inv(BLOCK, unknown), Inv(BLOCK, bytes(chain[2][1])),
                          Inv(BLOCK, bytes(chain[0][1]))]))
    got = next_commands(peer)
    # A Python peer is told what we lack (a C++ peer is not, net D-15), then served.
    assert [c for c, _ in got] == ["notfound", "block", "block"]
    assert got[0][1].inv == [Inv(BLOCK, unknown)]
    assert got[1][1].block.serialize() == chain[2][0].serialize()
    assert got[2][1].block.serialize() == chain[0][0].serialize()
    peer.close()


def test_invalid_block_gets_the_sender_discouraged(inprocess_nodes):
    chain = regtest_chain(1)
    node = inprocess_nodes("n")
    peer = raw_peer(node)
    good = chain[1][0]
    # A target no hash can meet: proof of work fails.
    bad = Block(BlockHeader(good.header.version, good.header.hash_prev_block,
                            good.header.hash_merkle_root, good.header.time, 0x03000001,
                            good.header.nonce), good.vtx)
    peer.send(MsgBlock(bad))
    assert peer.is_closed(timeout=5)
    assert node.connman.peer_manager.is_discouraged("127.0.0.1")
    assert node.height() == 0


# --------------------------------------------------------------------------- relay
def test_block_entering_at_a_reaches_c_through_b(inprocess_nodes):
    a, b, c = inprocess_nodes("a"), inprocess_nodes("b"), inprocess_nodes("c")
    a.dial(b)
    b.dial(c)
    chain = regtest_chain(3)
    for height in (1, 2, 3):
        a.load(chain[height:height + 1])           # as if A had mined it
        assert wait_until(lambda: c.height() == height, timeout=10), (height, c.height())
    assert c.chain.tip().hash == chain[3][1]
    assert wait_until(lambda: c.metric("block_propagation_time_seconds_count", role="receive") == 3)
    assert b.metric("block_propagation_time_seconds_count", role="announce") >= 3
    assert a.metric("block_propagation_time_seconds_count", role="announce") == 3


def test_received_block_is_not_announced_back_to_its_sender(inprocess_nodes):
    chain = regtest_chain(1)
    node = inprocess_nodes("n")
    sender = raw_peer(node)
    other = raw_peer(node)
    sender.send(MsgBlock(chain[1][0]))
    assert other.wait_for("inv").inv == [Inv(BLOCK, bytes(chain[1][1]))]
    assert [c for c, _ in next_commands(sender)] == []
    sender.close()
    other.close()


def test_unanswered_parent_request_is_repeated_after_expiry(inprocess_nodes, monkeypatch):
    # The request timeout is block_download's 30 s while "in flight" is checked, and 0
    # when expiry is: with a 0.2 s timeout and a sleep, a slow handler thread could
    # see the request expire before the "asks for nothing" check.
    chain = regtest_chain(3)
    node = inprocess_nodes("n")
    peer = raw_peer(node, agent=CPP_USER_AGENT)
    parent = MsgGetdata([Inv(BLOCK, bytes(chain[2][1]))])
    peer.send(MsgBlock(chain[3][0]))
    assert peer.wait_for("getdata") == parent
    # The orphan itself is not fetched again, and while the request is in
    # flight a re-sent orphan asks for nothing.
    peer.send(MsgInv([Inv(BLOCK, bytes(chain[3][1]))]))
    peer.send(MsgBlock(chain[3][0]))
    assert next_commands(peer) == []
    monkeypatch.setattr(block_download, "BLOCK_REQUEST_TIMEOUT_S", 0.0)   # now expired
    peer.send(MsgBlock(chain[3][0]))               # expired: the walk resumes
    assert peer.wait_for("getdata") == parent
    peer.close()


# --------------------------------------------------------------------------- forks
def _fork(parent_hash, length: int, payee_seed: int, time_offset: int):
    """``length`` regtest blocks on the genesis ``parent_hash`` paying a payee of their
    own, so two forks never mine identical blocks."""
    payee = KeyPair.from_seed(bytes([payee_seed]) * 32)
    return mine_chain(RandomXHasher.for_key(), parent_hash, 0, length, payee.pub_key_hash(), REGTEST,
                      time_of=lambda h: REGTEST.genesis_time + 240 * h + time_offset)


def test_a_fork_deeper_than_the_orphan_pool_heals_between_python_nodes(inprocess_nodes):
    """Two nodes that mined apart from the genesis: the shorter one reorganises to the
    longer chain even though the fork is deeper than its orphan pool (getblocks with
    a locator instead of a parent-by-parent walk, which the pool would cut short)."""
    genesis = regtest_chain(0)
    heavy = _fork(genesis[0][1], 36, payee_seed=1, time_offset=0)
    light = _fork(genesis[0][1], 30, payee_seed=2, time_offset=7)
    a, b = inprocess_nodes("heavy"), inprocess_nodes("light")
    a.load(genesis + heavy)
    b.load(genesis + light)
    b.chain.orphans.max_blocks = 8           # far shallower than the 36-block fork
    assert b.height() == 30 and a.height() == 36
    b.dial(a)
    assert wait_until(lambda: b.chain.tip().hash == heavy[-1][1], timeout=30), b.height()
    # The old branch is still known, as a side branch.
    assert ("valid-fork", 30) in {(status, index.height) for index, _, status in b.chain.chain_tips()}
    # A new block on the heavy chain now reaches b like any other.
    block37, hash37 = mine_block(RandomXHasher.for_key(), heavy[-1][1], 37, bytes([1]) * 20,
                                 REGTEST, now=REGTEST.genesis_time + 240 * 37)
    assert a.chain.process_new_block(block37, hash37).status.value == "tip"
    assert wait_until(lambda: b.chain.tip().hash == hash37, timeout=10)


def test_fork_heals_when_batches_end_on_blocks_we_never_request(inprocess_nodes, monkeypatch):
    """The soak's stall: with small batches, a batch can end on a block the receiver
    already has or lost from a full orphan pool, so it never requests the batch's
    last hash and the sender never sends the next batch.  The receiver asks for more
    itself (``getblocks`` from the end of what it has of that branch)."""
    monkeypatch.setattr(block_sync, "INV_BATCH", 10)
    monkeypatch.setattr(block_sync, "GETBLOCKS_INTERVAL_S", 0.2)
    genesis = regtest_chain(0)
    heavy = _fork(genesis[0][1], 45, payee_seed=3, time_offset=0)
    light = _fork(genesis[0][1], 25, payee_seed=4, time_offset=9)
    a, b = inprocess_nodes("heavy"), inprocess_nodes("light")
    a.load(genesis + heavy)
    b.load(genesis + light)
    b.chain.orphans.max_blocks = 6
    b.dial(a)
    assert wait_until(lambda: b.chain.tip().hash == heavy[-1][1], timeout=40), b.height()
