"""Strict mode and bodies another body could cure; the miner's nTime (issue 21).

* CVE-2012-2459: a real block of three transactions and its copy with the last
  transaction repeated have the same merkle root, hence the same header and
  the same block hash.  A ``--strict`` node refuses the copy without
  remembering the hash, scores its sender, and connects the real block from
  the honest peer afterwards; a default node (the C++ acceptance rule, chain
  D23) keeps the first body it received.  Both end on the same tip.
* The miner stamps ``max(now, median time past + 1)`` (Core's ``UpdateTime``):
  a fast chain mined by a default node is accepted block for block by a
  ``--strict`` peer.

Each attacker connects from its own loopback address, the honest peer from
127.0.0.1; every block has real RandomX proof of work.  Waits are liveness
guards; the miner's clock is frozen (injected), so the fast chain does not
depend on the machine's speed.
"""
from __future__ import annotations

import os
import time

import pytest

from dilithion.consensus.block_index import BlockIndex
from dilithion.consensus.pow import get_median_time_past
from dilithion.consensus.tx_validation import Coin
from dilithion.consensus.validation import (BlockValidationError, Framing, block_transactions,
                                            check_block_body, committed_merkle_root,
                                            compute_merkle_root, parse_block_transactions)
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.crypto.sha3 import sha3_256
from dilithion.mining.template import create_coinbase, mine_block, template_time
from dilithion.net.protocol import Inv, InvType, MsgBlock, MsgInv, MsgVersion
from dilithion.net.serialize import SerializationError, ser_compact_size
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction
from coins_helpers import FEE, p2pkh, spend
from framework import MINER, REGTEST, InProcessNode, RawPeer, regtest_chain, wait_until

HONEST = "127.0.0.1"
ATTACKER = "127.0.0.10"
#: The block with three transactions: two spends of the (mature) coinbases of heights 1 and 2.
SPEND_HEIGHT = 102


# ----------------------------------------------------------------------------- chain
def _block_time(height: int) -> int:
    return REGTEST.genesis_time + 60 * height


_BLOCKS: dict[str, tuple[Block, object]] = {}


def three_tx_chain():
    """``regtest_chain(101)`` + block 102 (coinbase and two spends) + block 103 on it."""
    chain = regtest_chain(SPEND_HEIGHT - 1)
    if not _BLOCKS:
        hasher = RandomXHasher.for_key()
        subsidy = create_coinbase(1, MINER.pub_key_hash(), params=REGTEST).vout[0].value
        spends = []
        for height in (1, 2):
            coinbase = block_transactions(chain[height][0])[0]
            coin = Coin(subsidy, p2pkh(MINER), height, True)
            spends.append(spend(MINER, [(OutPoint(coinbase.get_hash(), 0), coin)],
                                [(subsidy - FEE, p2pkh(MINER))]))
        _BLOCKS["real"] = mine_block(hasher, chain[-1][1], SPEND_HEIGHT, MINER.pub_key_hash(), REGTEST,
                                     now=_block_time(SPEND_HEIGHT),
                                     transactions=[(tx, FEE) for tx in spends])
        _BLOCKS["child"] = mine_block(hasher, _BLOCKS["real"][1], SPEND_HEIGHT + 1, MINER.pub_key_hash(),
                                      REGTEST, now=_block_time(SPEND_HEIGHT + 1))
    return chain, _BLOCKS["real"], _BLOCKS["child"]


def counted_vtx(txs: list[Transaction]) -> bytes:
    return ser_compact_size(len(txs)) + b"".join(tx.serialize() for tx in txs)


def duplicated_last(block: Block) -> Block:
    """CVE-2012-2459: the same header over the transactions with the last one repeated."""
    txs = block_transactions(block)
    return Block(block.header, counted_vtx(txs + [txs[-1]]))


def top_of_tree(block: Block) -> Block:
    """The same header over 64 bytes: the two hashes under the merkle root of
    ``[a, b, c]``.  Undecodable, and SHA3 of them is the root, as for any ``vtx``
    that is not a counted list."""
    a, b, c = (tx.get_hash() for tx in block_transactions(block))
    return Block(block.header, sha3_256(a + b) + sha3_256(c + c))


COPIES = {"duplicated last transaction": duplicated_last, "64-byte top of the tree": top_of_tree}


# ----------------------------------------------------------------------------- the detector
def test_the_mutated_flag_on_the_cve_shapes():
    a, b, c, d, e, f = (bytes([i]) * 32 for i in range(1, 7))
    root3, mutated3 = compute_merkle_root([a, b, c])
    assert not mutated3
    assert compute_merkle_root([a, b, c, c]) == (root3, True)          # same root, flagged
    root6, mutated6 = compute_merkle_root([a, b, c, d, e, f])
    assert not mutated6
    assert compute_merkle_root([a, b, c, d, e, f, e, f]) == (root6, True)   # repeated pair, level 1
    root5, _ = compute_merkle_root([a, b, c, d, e])
    assert compute_merkle_root([a, b, c, d, e, e]) == (root5, True)
    for n in range(1, 10):                                  # distinct transactions: never flagged
        assert compute_merkle_root([bytes([i]) * 32 for i in range(n)])[1] is False
    assert compute_merkle_root([a, a])[1] is True


def test_a_real_three_transaction_block_and_its_copies():
    _chain, (real, _h), _child = three_tx_chain()
    parsed = check_block_body(real)
    assert parsed.framing is Framing.COUNTED and len(parsed.txs) == 3
    assert committed_merkle_root(real) == bytes(real.header.hash_merkle_root)
    for name, make in COPIES.items():
        copy = make(real)
        assert copy.vtx != real.vtx and copy.header.serialize() == real.header.serialize(), name
        assert committed_merkle_root(copy) == bytes(real.header.hash_merkle_root), name
        with pytest.raises(BlockValidationError) as caught:
            check_block_body(copy)
        assert caught.value.curable, (name, caught.value.reason)
    with pytest.raises(SerializationError):
        parse_block_transactions(top_of_tree(real))
    for body in (b"", b"\0" * 1_000_001):               # empty; over the limit (checked undecoded)
        with pytest.raises(BlockValidationError) as caught:
            check_block_body(Block(real.header, body))
        assert caught.value.curable, caught.value.reason
    # A transaction list that is itself invalid is not curable: every body with its root is it.
    reordered = parsed.txs[1:] + parsed.txs[:1]
    header = BlockHeader(**{**vars(real.header), "hash_merkle_root": Uint256(
        compute_merkle_root([tx.get_hash() for tx in reordered])[0])})
    with pytest.raises(BlockValidationError) as caught:
        check_block_body(Block(header, counted_vtx(reordered)))
    assert not caught.value.curable and "not coinbase" in caught.value.reason


# ----------------------------------------------------------------------------- over the wire
def connect(node: InProcessNode, host: str) -> RawPeer:
    pm = node.connman.peer_manager
    last_id = max((p.id for p in pm.get_all_peers()), default=0)
    peer = RawPeer(node.p2p_port, node.params.magic, bind_host=host)
    peer.handshake(MsgVersion(timestamp=int(time.time()), nonce=int.from_bytes(os.urandom(4), "little"),
                              user_agent=b"/mutation:0.1/", start_height=node.height()))
    assert wait_until(lambda: any(p.id > last_id for p in pm.handshake_complete_peers()))
    return peer


def score_of(node: InProcessNode, host: str) -> int | None:
    """The misbehaviour score of ``host``'s connection (``None``: not connected any more)."""
    return next((p.misbehavior_score for p in node.connman.peer_manager.get_connected_peers()
                 if p.host == host), None)


def serve_requests(node: InProcessNode, honest: RawPeer, blocks: dict[bytes, Block], want: bytes) -> None:
    """Answer the node's ``getdata`` with the honest blocks until ``want`` is its tip."""
    def answered() -> bool:
        if node.chain.tip().hash == want:
            return True
        try:
            msg = honest.wait_for("getdata", 0.2)
        except TimeoutError:
            return False
        for item in msg.inv:
            honest.send(MsgBlock(blocks[bytes(item.hash)]))
        return False

    assert wait_until(answered, timeout=15)


@pytest.mark.parametrize("copy", list(COPIES))
def test_a_mutated_copy_sent_first_does_not_poison_a_strict_node(inprocess_nodes, copy):
    chain, (real, real_hash), _child = three_tx_chain()
    node = inprocess_nodes("strict", ["--strict"], coins=True)
    node.load(chain)
    attacker = connect(node, ATTACKER)
    attacker.send(MsgBlock(COPIES[copy](real)))
    assert attacker.is_closed(10.0)                       # scored 100 for the copy, discouraged
    assert node.height() == SPEND_HEIGHT - 1 and node.chain.get_index(real_hash) is None
    honest = connect(node, HONEST)
    honest.send(MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(real_hash))]))
    assert [bytes(i.hash) for i in honest.wait_for("getdata", 10.0).inv] == [bytes(real_hash)]
    honest.send(MsgBlock(real))
    assert wait_until(lambda: node.chain.tip().hash == real_hash, timeout=10)
    assert score_of(node, HONEST) == 0
    assert node.metric("peer_discouraged_total") == 1      # the attacker's host, nobody else
    honest.close()


def test_a_mutated_copy_from_the_first_announcer_does_not_lose_the_honest_announcement(inprocess_nodes):
    """The attacker announces first and is asked; the honest peer's announcement of the
    same hash waits behind that request.  The copy is refused, so the honest peer is
    asked next (its announcement is not forgotten with the attacker's delivery)."""
    chain, (real, real_hash), _child = three_tx_chain()
    node = inprocess_nodes("strict", ["--strict"], coins=True)
    node.load(chain)
    inv = MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(real_hash))])
    attacker = connect(node, ATTACKER)
    attacker.send(inv)
    assert [bytes(i.hash) for i in attacker.wait_for("getdata", 10.0).inv] == [bytes(real_hash)]
    honest = connect(node, HONEST)
    honest.send(inv)
    assert wait_until(lambda: node.ctx.block_relay.download.announcers(bytes(real_hash))
                      == [node.peer_id_of(attacker), node.peer_id_of(honest)], timeout=10)
    attacker.send(MsgBlock(duplicated_last(real)))
    assert attacker.is_closed(10.0)
    assert [bytes(i.hash) for i in honest.wait_for("getdata", 10.0).inv] == [bytes(real_hash)]
    honest.send(MsgBlock(real))
    assert wait_until(lambda: node.chain.tip().hash == real_hash, timeout=10)
    assert score_of(node, HONEST) == 0
    honest.close()


def test_strict_and_default_nodes_end_on_the_same_tip(inprocess_nodes):
    """The issue's done-when: the same honest chain, a mutated copy sent first, one tip."""
    chain, (real, real_hash), (child, child_hash) = three_tx_chain()
    honest_blocks = {bytes(real_hash): real, bytes(child_hash): child}
    tips = {}
    for mode, args in (("strict", ["--strict"]), ("default", [])):
        node = inprocess_nodes(mode, args, coins=True)
        node.load(chain)
        attacker = connect(node, ATTACKER)
        attacker.send(MsgBlock(duplicated_last(real)))
        if mode == "default":                             # the C++ rule: first body under the hash
            assert wait_until(lambda: node.chain.tip().hash == real_hash, timeout=10)
            assert score_of(node, ATTACKER) == 0
        else:
            assert attacker.is_closed(10.0)
        honest = connect(node, HONEST)
        honest.send(MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(h)) for h in (real_hash, child_hash)]))
        serve_requests(node, honest, honest_blocks, child_hash)
        assert score_of(node, HONEST) == 0
        tips[mode] = node.chain.tip().hash
        honest.close()
        attacker.close()
    assert tips["strict"] == tips["default"] == child_hash


# ----------------------------------------------------------------------------- miner time
def test_template_time_is_never_before_the_median_time_past():
    chain, *_ = three_tx_chain()
    index = None
    for block, h in chain[:12]:
        index = BlockIndex.from_header(h, block.header, index, 0)
    mtp = get_median_time_past(index)
    assert mtp == _block_time(6)
    assert template_time(index, mtp) == mtp + 1 == template_time(index, 0)
    assert template_time(index, mtp + 500) == mtp + 500               # a normal clock is kept


def test_a_fast_default_mode_chain_is_accepted_by_a_strict_peer(inprocess_nodes):
    """Twenty blocks in one (frozen) second: nTime must climb past the median time past."""
    miner = inprocess_nodes("miner", coins=True, rpc=True)
    strict = inprocess_nodes("strict", ["--strict"], coins=True, rpc=True)
    strict.connect_to(miner)
    frozen = int(time.time())
    miner.ctx.miner.clock = lambda: frozen
    hashes = miner.mine(20)
    assert wait_until(lambda: strict.best_hash() == hashes[-1], timeout=30,
                      message=lambda: f"strict at {strict.height()}, miner at {miner.height()}")
    index = strict.chain.tip()
    while index.prev is not None:
        assert index.time > get_median_time_past(index.prev)
        index = index.prev
    assert strict.chain.tip().time > frozen                    # the rule did lift nTime
    assert [p["banscore"] for p in strict.peers()] == [0]
    assert all(p.misbehavior_score == 0 for p in strict.connman.peer_manager.get_connected_peers())
    assert strict.metric("peer_discouraged_total") == 0 and miner.metric("peer_discouraged_total") == 0
