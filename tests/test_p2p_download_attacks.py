"""Hostile peers against block download: each attacker connects from its own
loopback address (127.0.0.10, 127.0.0.11, ...), the honest peer from 127.0.0.1,
and the tests assert what the honest side experiences.

Deterministic: the stall test drives the download scheduler's injected clock;
every wait is a 10 s liveness guard, never a speed bound (the connect time
under the inv flood is measured and printed, not asserted).
"""
from __future__ import annotations

import os
import threading
import time

import plyvel
import pytest

from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.net import block_download
from dilithion.net.block_fetch import MAX_INV_BLOCK_ITEMS, UNREQUESTED_BLOCK_SCORE
from dilithion.net.peer_relay_state import MAX_ANNOUNCED_UNKNOWN_PER_PEER
from dilithion.net.protocol import Inv, InvType, MsgBlock, MsgInv, MsgPing, MsgVersion
from dilithion.net.tx_relay import TxRelayManager
from dilithion.node.blockchain_storage import block_key
from dilithion.primitives.block import Block
from framework import (REGTEST, FakeClock, InProcessNode, RawPeer, next_commands, regtest_chain,
                       side_block, wait_until)

BLOCK = InvType.MSG_BLOCK_INV
HONEST = "127.0.0.1"
ATTACKER = "127.0.0.10"


def connect(node: InProcessNode, host: str, start_height: int | None = None) -> RawPeer:
    """A handshaken raw peer from ``host``; level with the node unless told otherwise."""
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    peer = RawPeer(node.p2p_port, node.params.magic, bind_host=host)
    height = node.height() if start_height is None else start_height
    peer.handshake(MsgVersion(timestamp=int(time.time()), nonce=7, user_agent=b"/attack:0.1/",
                              start_height=height))
    assert wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return peer


def peer_from(node: InProcessNode, host: str):
    return next(p for p in node.connman.peer_manager.get_connected_peers() if p.host == host)


def getdata_hashes(peer: RawPeer) -> list[bytes]:
    return [bytes(i.hash) for i in peer.wait_for("getdata", 10.0).inv]


def deliver_honestly(node: InProcessNode, honest: RawPeer, block_and_hash, during: str,
                     timeout: float = 10.0) -> None:
    """The honest peer announces a block, is asked for it, sends it, and it becomes
    the tip (the timeout is a liveness guard; the time taken is printed)."""
    block, h = block_and_hash
    started = time.monotonic()
    honest.send(MsgInv([Inv(BLOCK, bytes(h))]))
    assert getdata_hashes(honest) == [bytes(h)]
    honest.send(MsgBlock(block))
    wait_until(lambda: node.chain.tip().hash == h, timeout=timeout)
    print(f"\nhonest block connected {time.monotonic() - started:.3f} s after its inv ({during})")


# ----------------------------------------------------------------------------- (a)
def test_inv_flood_does_not_stop_an_honest_announcement(inprocess_nodes):
    chain = regtest_chain(2)
    node = inprocess_nodes("n")
    node.load(chain[:2])
    attacker = connect(node, ATTACKER)
    attacker.send(MsgInv([Inv(BLOCK, os.urandom(32)) for _ in range(10_000)]))
    flood = getdata_hashes(attacker)
    assert len(flood) == block_download.MAX_BLOCKS_IN_TRANSIT_PER_PEER   # 16, not 10,000
    honest = connect(node, HONEST)
    deliver_honestly(node, honest, chain[2], "10,000-hash inv flood running")
    assert node.metric("blocks_in_flight") == block_download.MAX_BLOCKS_IN_TRANSIT_PER_PEER
    attacker.close()
    honest.close()


# ----------------------------------------------------------------------------- (b)
def test_a_stalling_first_announcer_is_dropped_and_the_honest_one_asked(inprocess_nodes):
    chain = regtest_chain(2)
    node = inprocess_nodes("n")
    node.load(chain[:2])
    clock = FakeClock()
    node.ctx.block_relay.download.clock = clock
    real = bytes(chain[2][1])
    attacker = connect(node, ATTACKER)
    attacker.send(MsgInv([Inv(BLOCK, real)]))
    assert getdata_hashes(attacker) == [real]                   # and it never answers
    honest = connect(node, HONEST)
    honest.send(MsgInv([Inv(BLOCK, real)]))
    assert next_commands(honest) == []                          # in flight from the attacker
    clock.advance(block_download.STALL_TIMEOUT_S + 1)
    assert getdata_hashes(honest) == [real]                     # the stall checker moved it
    honest.send(MsgBlock(chain[2][0]))
    assert wait_until(lambda: node.height() == 2, timeout=10)
    assert attacker.is_closed(10.0)
    assert node.metric("block_download_stalls_total") == 1
    honest.close()


# ----------------------------------------------------------------------------- (c)
def test_strict_mutated_body_does_not_poison_the_real_block(inprocess_nodes):
    chain = regtest_chain(3)
    node = inprocess_nodes("n", ["--strict"])
    node.load(chain[:2])
    real, real_hash = chain[2]
    mutated = Block(real.header, real.vtx + b"\x00")           # same header and hash, other body
    attacker = connect(node, ATTACKER)
    attacker.send(MsgBlock(mutated))
    assert attacker.is_closed(10.0)                             # scored for the mutated block
    assert node.height() == 1 and node.chain.get_index(real_hash) is None
    honest = connect(node, HONEST)
    honest.send(MsgInv([Inv(BLOCK, bytes(real_hash))]))
    assert getdata_hashes(honest) == [bytes(real_hash)]
    honest.send(MsgBlock(real))
    honest.send(MsgBlock(chain[3][0]))                          # and its child connects too
    assert wait_until(lambda: node.height() == 3, timeout=10)
    assert node.chain.tip().hash == chain[3][1]
    assert peer_from(node, HONEST).misbehavior_score == 0
    honest.close()


# ----------------------------------------------------------------------------- (d)
def test_unrequested_side_blocks_are_not_stored_and_cost_score(inprocess_nodes):
    chain = regtest_chain(3)
    node = inprocess_nodes("n")
    node.load(chain[:4])
    hasher = RandomXHasher.for_key()
    body_size = 1 << 20
    blocks = [side_block(hasher, chain[0][1], os.urandom(body_size), REGTEST.genesis_time + 60 + i)
              for i in range(4)]
    blocks_dir = node.datadir / "blocks"

    def disk() -> int:
        return sum(f.stat().st_size for f in blocks_dir.iterdir() if f.is_file())

    before = disk()
    attacker = connect(node, ATTACKER)
    for block, _h in blocks:
        attacker.send(MsgBlock(block))
    assert wait_until(lambda: node.metric("blocks_unrequested_dropped_total") == len(blocks), timeout=10)
    assert peer_from(node, ATTACKER).misbehavior_score == UNREQUESTED_BLOCK_SCORE * len(blocks)
    for _block, h in blocks:
        assert node.chain.get_index(h) is None and not node.ctx.blockchain.block_exists(h)
    assert disk() - before < body_size          # none of the 4 MiB of bodies was written
    assert node.height() == 3
    attacker.close()


# ----------------------------------------------------------------------------- (e)
def test_a_corrupt_side_branch_record_is_dropped_at_start_up(inprocess_nodes):
    chain = regtest_chain(3)
    node = inprocess_nodes("n")
    node.load(chain[:4])
    side, side_hash = side_block(RandomXHasher.for_key(), chain[0][1], b"side", REGTEST.genesis_time + 61)
    node.chain.process_new_block(side, block_hash=side_hash)   # a requested side block: stored
    assert node.ctx.blockchain.block_exists(side_hash)
    node.stop()
    db = plyvel.DB(str(node.datadir / "blocks"))
    db.put(block_key(side_hash), b"\x01garbage")
    db.close()
    node.start()
    assert node.height() == 3 and node.chain.tip().hash == chain[3][1]
    assert node.log_lines(r"Corrupt side-branch record of block")
    assert node.chain.get_index(side_hash) is None
    node.stop()
    node.start()                                                # repaired: a clean start
    assert node.height() == 3 and not node.log_lines(r"Corrupt side-branch record")
    # A corrupt main-chain record still stops the start-up with a clear error.
    node.stop()
    db = plyvel.DB(str(node.datadir / "blocks"))
    db.put(block_key(chain[2][1]), b"\x01garbage")
    db.close()
    with pytest.raises(Exception, match="Cannot load chain state") as failed:
        node.start()
    assert "corrupt record of main-chain block" in " ".join(failed.value.lines)


# ----------------------------------------------------------------------------- (f)
def test_one_huge_inv_logs_a_line_and_adds_a_bounded_number_of_entries(inprocess_nodes):
    node = inprocess_nodes("n")
    attacker = connect(node, ATTACKER)
    attacker.send(MsgInv([Inv(BLOCK, os.urandom(32)) for _ in range(50_000)]))
    assert len(getdata_hashes(attacker)) == block_download.MAX_BLOCKS_IN_TRANSIT_PER_PEER
    assert next_commands(attacker) == []                        # the inv is fully processed
    relay = node.ctx.block_relay
    assert len(node.log_lines(r"announced")) <= 2               # not 50,000
    assert relay.download.table_sizes()["wanted"] <= MAX_INV_BLOCK_ITEMS
    pid = peer_from(node, ATTACKER).id
    assert len(relay._peers[pid].known) == 0                    # made-up hashes are not "known"
    assert len(relay._peers[pid].announced) <= MAX_ANNOUNCED_UNKNOWN_PER_PEER
    assert len(relay.fetch._first_seen) <= MAX_INV_BLOCK_ITEMS
    attacker.close()


def test_repeated_inv_floods_of_made_up_hashes_stay_within_the_announced_cap(inprocess_nodes):
    """Three hosts each announce 25 x 1,000 made-up block hashes: each peer's per-peer
    block sets hold at most ``MAX_ANNOUNCED_UNKNOWN_PER_PEER`` of them (20,000 each
    before, about 2.8 MB a peer), and the honest block still connects."""
    chain = regtest_chain(2)
    node = inprocess_nodes("n")
    node.load(chain[:2])
    attackers = [connect(node, f"127.0.0.{10 + i}") for i in range(3)]
    for _ in range(25):
        for attacker in attackers:
            attacker.send(MsgInv([Inv(BLOCK, os.urandom(32)) for _ in range(MAX_INV_BLOCK_ITEMS)]))
    for attacker in attackers:
        attacker.send(MsgPing(77))
        attacker.wait_for("pong", 30.0)                         # every inv before it is processed
    relay = node.ctx.block_relay
    for i in range(3):
        sync = relay._peers[peer_from(node, f"127.0.0.{10 + i}").id]
        assert len(sync.known) + len(sync.announced) <= MAX_ANNOUNCED_UNKNOWN_PER_PEER
    honest = connect(node, HONEST)
    deliver_honestly(node, honest, chain[2], "inv floods of made-up hashes")
    for peer in [honest, *attackers]:
        peer.close()


def test_one_huge_tx_inv_is_bounded_per_peer(inprocess_nodes):
    node = inprocess_nodes("n", coins=True)
    attacker = connect(node, ATTACKER)
    attacker.send(MsgInv([Inv(InvType.MSG_TX_INV, os.urandom(32)) for _ in range(50_000)]))
    assert len(getdata_hashes(attacker)) == TxRelayManager.MAX_PEER_TX_IN_FLIGHT
    assert next_commands(attacker) == []
    announced, in_flight, _recent = node.ctx.tx_relay.get_stats()
    assert announced <= TxRelayManager.MAX_PEER_TX_ANNOUNCEMENTS
    assert in_flight == TxRelayManager.MAX_PEER_TX_IN_FLIGHT
    # An honest peer's transaction announcement is still requested.
    honest = connect(node, HONEST)
    txid = os.urandom(32)
    honest.send(MsgInv([Inv(InvType.MSG_TX_INV, txid)]))
    assert getdata_hashes(honest) == [txid]
    attacker.close()
    honest.close()


# ----------------------------------------------------------------------------- measurement
@pytest.mark.slow
def test_honest_block_connects_while_a_peer_floods_the_handler_thread(inprocess_nodes):
    """Handler flood: the attacker keeps the message-handler thread busy with
    50,000-item invs (each costs a full decode) while the honest peer announces a
    block.  Round-robin processing serves the honest peer between the attacker's
    messages; reports the honest block's inv-to-connected time (target: under 3 s)."""
    chain = regtest_chain(2)
    node = inprocess_nodes("n")
    node.load(chain[:2])
    attacker = connect(node, ATTACKER)
    honest = connect(node, HONEST)
    big = MsgInv([Inv(BLOCK, os.urandom(32)) for _ in range(50_000)]).to_net_message(
        REGTEST.magic).serialize()
    stop = False

    def flood():
        while not stop:
            try:
                attacker.send_raw(big)
            except OSError:
                return
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    time.sleep(1.0)                                  # the handler's backlog is full by now
    deliver_honestly(node, honest, chain[2], "handler flood of 50,000-item invs running",
                     timeout=30)
    stop = True
    attacker.close()
    honest.close()
