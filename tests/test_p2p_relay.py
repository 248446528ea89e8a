"""Transaction relay between real Python nodes (inv → getdata → tx → mempool →
inv), its bad-input paths, and the TxRelayManager bookkeeping (net 5, D-16/D-29 fixed)."""
from __future__ import annotations

import time

import pytest

from dilithion.consensus.validation import block_transactions
from dilithion.crypto.mldsa import KeyPair
from dilithion.net import tx_relay as tx_relay_mod
from dilithion.net.protocol import Inv, InvType, MsgGetdata, MsgInv, MsgTx
from dilithion.net.tx_relay import TxRelayManager
from dilithion.node.mempool import accept_to_memory_pool
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut
from coins_helpers import FEE, p2pkh, spend
from framework import MINER, FakeClock, InProcessNode, next_commands, raw_peer, regtest_chain, wait_until

TX = InvType.MSG_TX_INV
RECIPIENT = KeyPair.from_seed(b"\x07" * 32)
#: Heights 0..101: the coinbases of heights 1 and 2 are mature at the next block.
MATURE_TIP = 101


@pytest.fixture
def mempool_node(inprocess_nodes):
    """``make(name)`` -> a started node with a mempool, on a chain whose first coinbases
    are mature (spendable)."""
    return lambda name: inprocess_nodes(name, coins=True, chain=regtest_chain(MATURE_TIP))


def spend_coinbase(node: InProcessNode, height: int) -> Transaction:
    """A valid signed transaction spending the miner's coinbase at ``height``."""
    block = regtest_chain(height)[height][0]
    outpoint = OutPoint(block_transactions(block)[0].get_hash(), 0)
    coin = node.ctx.utxo_set.get(outpoint)
    assert coin is not None
    return spend(MINER, [(outpoint, coin)], [(coin.value - FEE, p2pkh(RECIPIENT))])


def test_tx_relays_a_to_b_to_c(mempool_node):
    a, b, c = mempool_node("a"), mempool_node("b"), mempool_node("c")
    a.dial(b)
    b.dial(c)
    tx = spend_coinbase(a, 1)
    txid = accept_to_memory_pool(a.ctx.chainstate, a.ctx.utxo_set, a.ctx.mempool, tx)
    a.ctx.broadcaster.broadcast_tx(txid)
    assert wait_until(lambda: c.ctx.mempool.exists(txid), timeout=10)
    assert b.ctx.mempool.exists(txid)
    assert c.ctx.mempool.get_tx(txid).serialize() == tx.serialize()
    # Nothing is left in flight anywhere.
    for node in (a, b, c):
        assert node.ctx.tx_relay.get_stats()[1] == 0


def test_rejected_tx_is_not_pooled_or_relayed(mempool_node):
    node = mempool_node("n")
    sender = raw_peer(node, start_height=MATURE_TIP)
    watcher = raw_peer(node, start_height=MATURE_TIP)
    good = spend_coinbase(node, 2)
    forged = Transaction(good.version, [TxIn(good.vin[0].prevout, b"\x01" * 10)], good.vout,
                         good.lock_time)                      # not a valid signature
    sender.send(MsgTx(forged))
    unknown_input = spend(MINER, [(OutPoint(b"\x99" * 32, 0), None)], [(1000, p2pkh(RECIPIENT))])
    sender.send(MsgTx(unknown_input))
    assert next_commands(sender) == []
    assert node.ctx.mempool.size() == 0
    assert next_commands(watcher) == []
    # No misbehaviour score for a rejected transaction (C++ 3.10 step 4).
    assert all(p.misbehavior_score == 0 for p in node.connman.peer_manager.get_connected_peers())
    # The valid one is pooled and announced to the other peer only.
    sender.send(MsgTx(good))
    assert watcher.wait_for("inv").inv == [Inv(TX, good.get_hash())]
    assert node.ctx.mempool.exists(good.get_hash())
    assert next_commands(sender) == []
    sender.close()
    watcher.close()


def test_tx_inv_is_requested_once_and_getdata_served_from_mempool(mempool_node):
    node = mempool_node("n")
    peer = raw_peer(node, start_height=MATURE_TIP)
    pooled = spend_coinbase(node, 1)
    ctx = node.ctx
    ctx.broadcaster.broadcast_tx(accept_to_memory_pool(ctx.chainstate, ctx.utxo_set, ctx.mempool,
                                                       pooled))
    # The peer (relay=1) gets the announcement; drain it first.
    assert peer.wait_for("inv").inv == [Inv(TX, pooled.get_hash())]
    wanted = b"\x42" * 32
    peer.send(MsgInv([Inv(TX, pooled.get_hash()), Inv(TX, wanted), Inv(TX, wanted)]))
    peer.send(MsgInv([Inv(TX, wanted)]))          # in flight: not asked again
    assert next_commands(peer) == [("getdata", MsgGetdata([Inv(TX, wanted)]))]
    peer.send(MsgGetdata([Inv(TX, b"\x43" * 32), Inv(TX, pooled.get_hash())]))
    got = next_commands(peer)
    # Unknown: a notfound first (a Python peer; a C++ one gets none, net D-15), then the tx.
    assert [cmd for cmd, _ in got] == ["notfound", "tx"]
    assert got[0][1].inv == [Inv(TX, b"\x43" * 32)]
    assert got[1][1].tx.serialize() == pooled.serialize()
    peer.close()


def test_disconnect_releases_in_flight_requests(mempool_node):
    node = mempool_node("n")
    first = raw_peer(node, start_height=MATURE_TIP)
    second = raw_peer(node, start_height=MATURE_TIP)
    wanted = b"\x44" * 32
    first.send(MsgInv([Inv(TX, wanted)]))
    assert next_commands(first) == [("getdata", MsgGetdata([Inv(TX, wanted)]))]
    first.close()
    assert wait_until(lambda: node.ctx.tx_relay.get_stats()[1] == 0)
    second.send(MsgInv([Inv(TX, wanted)]))
    assert next_commands(second) == [("getdata", MsgGetdata([Inv(TX, wanted)]))]
    second.close()


def test_node_without_mempool_ignores_tx_items(inprocess_nodes):
    """Like the C++ node (net 5.5): no getdata for tx items, tx messages discarded."""
    node = inprocess_nodes("bare")
    peer = raw_peer(node)
    peer.send(MsgInv([Inv(TX, b"\x45" * 32)]))
    peer.send(MsgTx(Transaction(1, [TxIn(OutPoint(b"\x01" * 32, 0))], [TxOut(5, b"\x51")])))
    assert next_commands(peer) == []
    peer.close()


# --------------------------------------------------------------------------- manager
def test_manager_announce_bookkeeping_and_per_peer_bound(monkeypatch):
    monkeypatch.setattr(TxRelayManager, "MAX_ANNOUNCED_PER_PEER", 3)
    m = TxRelayManager()
    ids = [bytes([i]) * 32 for i in range(5)]
    assert m.should_announce(1, ids[0])
    for t in ids:
        m.mark_announced(1, t)
    assert not m.should_announce(1, ids[4]) and m.should_announce(2, ids[4])
    assert m.should_announce(1, ids[0])           # oldest dropped by the bound
    assert m.get_stats() == (3, 0, 5)
    m.peer_disconnected(1)
    assert m.get_stats() == (0, 0, 5)


def test_manager_requests_expire_and_follow_disconnects():
    # A hand-driven clock: with 50 ms timeouts and the real clock, a stall between
    # mark_requested and the first assertion would expire the request early.
    clock = FakeClock()
    m = TxRelayManager(clock=clock)
    a, b = b"\x0a" * 32, b"\x0b" * 32
    m.mark_requested(a, 1)
    m.mark_requested(b, 2)
    m.mark_announced(3, a)
    assert m.already_have(a, None) and m.in_flight(b)
    m.peer_disconnected(2)
    assert not m.in_flight(b) and m.get_stats() == (1, 1, 1)
    clock.advance(TxRelayManager.TX_ANNOUNCE_TTL)                 # 15 s: stamps expire, requests not
    assert m.already_have(a, None)
    assert m.cleanup_expired() == 0 and m.get_stats() == (1, 1, 0)
    clock.advance(TxRelayManager.TX_REQUEST_TIMEOUT - TxRelayManager.TX_ANNOUNCE_TTL)  # at 60 s
    assert not m.already_have(a, None)            # expired even before cleanup runs
    assert m.cleanup_expired() == 1
    assert m.get_stats() == (1, 0, 0)
    m.mark_requested(a, 1)
    m.remove_in_flight(a)
    assert m.get_stats()[1] == 0


def test_relay_cleans_up_expired_requests_periodically(mempool_node, monkeypatch):
    monkeypatch.setattr(TxRelayManager, "TX_REQUEST_TIMEOUT", 0.05)
    monkeypatch.setattr(tx_relay_mod.TxRelay, "CLEANUP_INTERVAL_S", 0.0)
    node = mempool_node("n")
    peer = raw_peer(node, start_height=MATURE_TIP)
    never_sent = b"\x46" * 32
    peer.send(MsgInv([Inv(TX, never_sent)]))
    assert next_commands(peer) == [("getdata", MsgGetdata([Inv(TX, never_sent)]))]
    time.sleep(0.1)
    # Expired: the next announcement (of anything) sweeps it and asks again.
    peer.send(MsgInv([Inv(TX, never_sent)]))
    assert next_commands(peer) == [("getdata", MsgGetdata([Inv(TX, never_sent)]))]
    assert node.ctx.tx_relay.get_stats()[1] == 1
    peer.close()
