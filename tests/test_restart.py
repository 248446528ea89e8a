"""Restarting from disk: C++ datadirs, long Python chains, damaged ``bestblock``, the UTXO set, SIGKILL.

Run as a script (``python test_restart.py child DATADIR FEED``) this file is the
child process of the SIGKILL test: it appends pre-mined blocks to a datadir
until it is killed.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import plyvel
import pytest

from dilithion.consensus.chain import BlockStatus, ChainState
from dilithion.core.chainparams import ChainParams
from dilithion.mining.template import mine_block, mine_chain
from dilithion.node.blockchain_storage import (BEST_BLOCK_KEY, BlockchainDB, StorageError,
                                               encode_index_record, index_key)
from dilithion.node.chain_loader import close_chain_state, load_chain_state, open_chain_state
from dilithion.node.context import NodeContext
from dilithion.node.genesis import create_genesis_block
from dilithion.node.utxo_set import UTXOSet
from dilithion.primitives.block import Block, BlockHeader, Uint256

REGTEST = ChainParams.regtest()
CPP_TIP = "0004447e0b12a6a522658a27d0235dda4fba7cdd343e3c084428498aab8b993c"
PKH_A = bytes(20)
PKH_B = b"\x0b" * 20

# Testnet block 7 on the C++ datadir's tip, mined once with the easiest bits the C++ range
# allows (0x1f0fffff: one hash in 4096, about two minutes of RandomX here; the genesis bits
# 0x1f060000 need one in 10923) by mine_block(hasher, tip, 7, bytes(20), testnet,
# bits=0x1f0fffff, now=<tip time> + 240).  The test re-hashes it, so it proves itself.
TESTNET_BLOCK7_HEADER = (
    "010000003c998bab8a492844083c3e34dd7cba4fda5d23d0278a6522a5a6120b7e440400a8d36ae72cf042f7035a"
    "46640d29863a4bc6fc096977015b9c761f988e7a1016ff2a056bffff0f1ff5040000")
TESTNET_BLOCK7_VTX = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff1a426c6f63"
    "6b2037206d696e65642062792044696c697468696f6effffffff0100f2052a010000001976a9140000000000000000"
    "00000000000000000000000088ac00000000")
TESTNET_BLOCK7_HASH = "000e8fa434db7cef330264266880b0988c31a9e2d95ecb98c914413731755e47"


def mine_on(hasher, parent_hash, parent_height, count, pkh, branch=0):
    return mine_chain(hasher, parent_hash, parent_height, count, pkh, REGTEST,
                      time_of=lambda height: REGTEST.genesis_time + 240 * height + branch)


_CONTEXTS: dict[int, NodeContext] = {}


def open_chain(datadir: Path, hasher, params=REGTEST, utxo: bool = False, strict=False) -> ChainState:
    ctx = open_chain_state(params, datadir, hasher, utxo=utxo, strict=strict)
    _CONTEXTS[id(ctx.chainstate)] = ctx
    return ctx.chainstate


def close_chain(chain: ChainState) -> None:
    close_chain_state(_CONTEXTS.pop(id(chain)))


class CountingHasher:
    """The real hasher, counting calls (to show that loading does not hash every block)."""

    def __init__(self, hasher):
        self.hasher, self.calls = hasher, 0

    def hash(self, data: bytes) -> bytes:
        self.calls += 1
        return self.hasher.hash(data)


@pytest.fixture(scope="module")
def genesis_hash(hasher) -> Uint256:
    return create_genesis_block(REGTEST).get_hash(hasher)


@pytest.fixture(scope="module")
def long_chain(hasher, genesis_hash):
    """200 regtest blocks, mined once for the module (~10 s)."""
    return mine_on(hasher, genesis_hash, 0, 200, PKH_A)


@pytest.fixture(scope="module")
def stored_chain(tmp_path_factory, hasher, long_chain):
    """A datadir holding ``long_chain`` plus a 5-block side branch from height 150."""
    datadir = tmp_path_factory.mktemp("stored")
    side = mine_on(hasher, long_chain[149][1], 150, 5, PKH_B, branch=1)
    chain = open_chain(datadir, hasher)
    for block, h in long_chain:
        assert chain.process_new_block(block, h).status is BlockStatus.TIP
    for block, h in side:
        assert chain.process_new_block(block, h).status is BlockStatus.SIDE
    close_chain(chain)
    return datadir, side


def copy_datadir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "blocks" / "LOCK").unlink(missing_ok=True)
    return dst


# ----------------------------------------------------------------------------- C++ datadir

@pytest.fixture
def cpp_datadir(tmp_path, vectors_dir) -> Path:
    shutil.unpack_archive(vectors_dir / "cpp-testnet-datadir.tar.gz", tmp_path)   # holds blocks/
    return tmp_path


def test_cpp_datadir_loads_to_height_6(cpp_datadir, hasher, cpp_chain):
    testnet = ChainParams.testnet()
    chain = open_chain(cpp_datadir, hasher, testnet)
    assert chain.height() == 6 and chain.tip().hash.get_hex() == CPP_TIP
    assert chain.tip().chain_work == 7 * 0x2AAAAAAAAAAA00
    for entry in cpp_chain["blocks"]:
        h = Uint256.from_hex(entry["hash"])
        assert chain.main_chain_hash_at(entry["height"]) == h
        assert chain.get_block(h).serialize().hex() == entry["block_message_payload_hex"]
    close_chain(chain)


def cpp_block7(hasher) -> tuple[Block, Uint256]:
    block = Block(BlockHeader.deserialize(bytes.fromhex(TESTNET_BLOCK7_HEADER)),
                  bytes.fromhex(TESTNET_BLOCK7_VTX))
    assert block.header.hash_prev_block.get_hex() == CPP_TIP and block.header.bits == 0x1F0FFFFF
    h = block.get_hash(hasher)
    assert h.get_hex() == TESTNET_BLOCK7_HASH
    return block, h


def test_block_appended_to_the_cpp_datadir_survives_a_restart(cpp_datadir, hasher):
    testnet = ChainParams.testnet()
    chain = open_chain(cpp_datadir, hasher, testnet)
    # The C++ rule checks only the block's own nBits inside the range (chain 3.8).
    block, h = cpp_block7(hasher)
    result = chain.process_new_block(block, h)
    assert result.status is BlockStatus.TIP and chain.height() == 7
    record = chain.db.read_block_index(h)
    assert (record.height, record.status, record.bits) == (7, 8, 0x1F0FFFFF)
    close_chain(chain)

    reloaded = open_chain(cpp_datadir, hasher, testnet)
    assert reloaded.height() == 7 and reloaded.tip().hash == h
    assert reloaded.main_chain_hash_at(6).get_hex() == CPP_TIP
    close_chain(reloaded)


def test_strict_mode_refuses_the_easy_bits_on_the_same_datadir(cpp_datadir, hasher):
    testnet = ChainParams.testnet()
    chain = open_chain(cpp_datadir, hasher, testnet, strict=True)
    block, h = cpp_block7(hasher)
    result = chain.process_new_block(block, h)
    assert result.status is BlockStatus.INVALID and result.reason.startswith("bad-diffbits")
    assert chain.height() == 6
    close_chain(chain)


@pytest.mark.slow
def test_freshly_mined_testnet_block_on_the_cpp_datadir(cpp_datadir, hasher):
    """The same as above with a block mined now (about two minutes of RandomX)."""
    testnet = ChainParams.testnet()
    chain = open_chain(cpp_datadir, hasher, testnet)
    block, h = mine_block(hasher, chain.tip().hash, 7, PKH_A, testnet, bits=0x1F0FFFFF)
    assert chain.process_new_block(block, h).status is BlockStatus.TIP
    close_chain(chain)
    reloaded = open_chain(cpp_datadir, hasher, testnet)
    assert reloaded.height() == 7 and reloaded.tip().hash == h
    close_chain(reloaded)


def test_datadir_of_another_network_is_refused(cpp_datadir, hasher):
    ctx = NodeContext(REGTEST, cpp_datadir, hasher=hasher)
    ctx.blockchain = BlockchainDB(cpp_datadir / "blocks")
    with pytest.raises(StorageError, match="wrong network"):
        ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                          utxo_set=ctx.utxo_set)
    assert ctx.blockchain.read_best_block().get_hex() == CPP_TIP       # nothing overwritten
    ctx.blockchain.close()


# ----------------------------------------------------------------------------- Python chains

def test_long_python_chain_restarts_without_hashing_every_block(stored_chain, long_chain, hasher, tmp_path):
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    side = stored_chain[1]
    counting = CountingHasher(hasher)
    chain = open_chain(datadir, counting)
    # The behaviour is a count: the genesis is the only block hashed.  How long a reload
    # takes is contrib/bench/bench_chain.py's figure ("reload s"), not a verdict here.
    assert counting.calls == 1                              # the genesis only
    assert chain.height() == 200 and chain.tip().hash == long_chain[-1][1]
    assert chain.main_chain_hashes(1, 200) == [h for _, h in long_chain]
    side_tip = chain.get_index(side[-1][1])
    assert side_tip is not None and side_tip.height == 155 and not chain.is_on_main_chain(side_tip)
    assert side_tip.chain_work == 156 * chain.get_index(long_chain[0][1]).chain_work // 2
    # the side branch is alive after the restart: 46 more blocks make it win (depth 50 reorg)
    more = mine_on(hasher, side[-1][1], 155, 46, PKH_B, branch=1)
    results = [chain.process_new_block(b, h) for b, h in more]
    assert results[-1].status is BlockStatus.REORG and chain.tip().hash == more[-1][1]
    close_chain(chain)


def _rewrite(datadir: Path, **changes) -> None:
    raw = plyvel.DB(str(datadir / "blocks"))
    for key, value in changes.items():
        key = BEST_BLOCK_KEY if key == "best" else bytes.fromhex(key)
        raw.delete(key) if value is None else raw.put(key, value)
    raw.close()


@pytest.mark.parametrize("best", [None, b"0" * 64, b"not hex"])
def test_missing_or_inconsistent_bestblock_falls_back_to_most_work(stored_chain, long_chain, hasher,
                                                                   tmp_path, best):
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    _rewrite(datadir, best=best)
    chain = open_chain(datadir, hasher)
    assert chain.tip().hash == long_chain[-1][1] and chain.height() == 200
    assert chain.db.read_best_block() == long_chain[-1][1]     # repaired
    close_chain(chain)


def test_index_record_contradicting_its_block_record(stored_chain, long_chain, hasher, tmp_path):
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    block, h = long_chain[10]

    class Wrong:
        height, status, time, bits, nonce, version = 11, 8, block.header.time + 1, block.header.bits, 0, 1

    _rewrite(datadir, **{index_key(h).hex(): encode_index_record(h, Wrong)})
    ctx = NodeContext(REGTEST, datadir, hasher=hasher)
    ctx.blockchain = BlockchainDB(datadir / "blocks")
    with pytest.raises(StorageError, match=f"i{h}"):
        ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                          utxo_set=ctx.utxo_set)
    ctx.blockchain.close()


def test_stored_block_without_index_record_is_not_connected_on_load(stored_chain, long_chain, hasher,
                                                                    tmp_path):
    """What the C++ leaves behind for an orphan (chain D21): a 'b' record, no 'i' record."""
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    extra = mine_on(hasher, long_chain[-1][1], 200, 2, PKH_A)
    with BlockchainDB(datadir / "blocks") as db:
        db.write_block(extra[1][1], extra[1][0])                   # block 202 without 201
    chain = open_chain(datadir, hasher)
    assert chain.height() == 200 and chain.get_index(extra[1][1]) is None
    # unlike the C++ node, the block is not lost: it connects once its parent arrives
    assert chain.process_new_block(*extra[1]).status is BlockStatus.ORPHAN
    result = chain.process_new_block(*extra[0])
    assert result.status is BlockStatus.TIP and chain.height() == 202
    close_chain(chain)


# ----------------------------------------------------------------------------- UTXO set

def test_utxo_set_is_rebuilt_and_reconciled_at_load(stored_chain, long_chain, hasher, tmp_path):
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    side = stored_chain[1]
    chain = open_chain(datadir, hasher, utxo=True)                 # empty chainstate: replay 0..200
    utxo = chain.utxo_set
    reference = list(utxo.coins())
    assert len(reference) == 200 and utxo.best_block().hash == long_chain[-1][1]
    # Simulate a crash during a reorganisation: the UTXO set moved to the side branch,
    # 'bestblock' did not.
    for block, h in reversed(long_chain[150:]):
        utxo.disconnect_block(block, chain.get_index(h).height, h)
    for block, h in side:
        utxo.connect_block(block, chain.get_index(h).height, h)
    assert list(utxo.coins()) != reference
    close_chain(chain)
    chain = open_chain(datadir, hasher, utxo=True)
    assert list(chain.utxo_set.coins()) == reference
    assert chain.utxo_set.best_block().hash == long_chain[-1][1]
    close_chain(chain)


def test_utxo_set_ahead_of_tip_records_a_power_loss_dropped(stored_chain, long_chain, hasher,
                                                             tmp_path):
    """Only each new tip's block record is synced (before the UTXO set applies the
    block); the UTXO writes and the index + 'bestblock' batch are not.  So a power
    loss may keep the set's later blocks and those block records but drop their
    index records and 'bestblock' moves: load() steps the set back with the stored
    blocks, and the blocks connect again when a peer sends them."""
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    chain = open_chain(datadir, hasher, utxo=True)
    reference = list(chain.utxo_set.coins())
    extra = mine_on(hasher, long_chain[-1][1], 200, 3, PKH_A)
    for block, h in extra:
        assert chain.process_new_block(block, h).status is BlockStatus.TIP
    assert chain.utxo_set.best_block().hash == extra[-1][1]
    close_chain(chain)
    _rewrite(datadir, best=long_chain[-1][1].get_hex().encode("ascii"),
             **{index_key(h).hex(): None for _, h in extra})
    chain = open_chain(datadir, hasher, utxo=True)
    assert chain.height() == 200 and chain.tip().hash == long_chain[-1][1]
    assert chain.utxo_set.best_block().hash == long_chain[-1][1]
    assert list(chain.utxo_set.coins()) == reference
    for block, h in extra:
        assert chain.process_new_block(block, h).status is BlockStatus.TIP
    assert chain.height() == 203 and len(list(chain.utxo_set.coins())) == 203
    close_chain(chain)


def test_utxo_set_of_another_chain_is_refused(stored_chain, hasher, tmp_path, cpp_datadir):
    datadir = copy_datadir(stored_chain[0], tmp_path / "copy")
    testnet_chain = open_chain(cpp_datadir, hasher, ChainParams.testnet(), utxo=True)
    close_chain(testnet_chain)
    shutil.copytree(cpp_datadir / "chainstate", datadir / "chainstate")
    ctx = NodeContext(REGTEST, datadir, hasher=hasher)
    ctx.blockchain = BlockchainDB(datadir / "blocks")
    ctx.utxo_set = UTXOSet(datadir / "chainstate")
    with pytest.raises(StorageError, match="another chain"):
        ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                          utxo_set=ctx.utxo_set)
    ctx.utxo_set.close()
    ctx.blockchain.close()


# ----------------------------------------------------------------------------- SIGKILL

class KnownHashes:
    """The child's hasher: real RandomX hashes computed by the parent, looked up by header.

    Building a RandomX cache costs about a second per process; the child only
    ever needs the genesis hash (blocks come with their hashes), so the parent
    hands it over instead.
    """

    def __init__(self, table: dict[bytes, bytes]):
        self.table = table

    def hash(self, data: bytes) -> bytes:
        return self.table[bytes(data)]


def run_child(datadir: str, feed_path: str, utxo: bool) -> None:
    from loguru import logger
    logger.remove()
    with open(feed_path, "rb") as f:
        feed = pickle.load(f)
    ctx = NodeContext(REGTEST, Path(datadir), hasher=KnownHashes(feed["hashes"]))
    ctx.blockchain = BlockchainDB(Path(datadir) / "blocks")
    ctx.utxo_set = UTXOSet(Path(datadir) / "chainstate") if utxo else None
    ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                      utxo_set=ctx.utxo_set)
    chain = ctx.chainstate
    print("ready", flush=True)
    for payload, raw_hash in feed["blocks"]:
        result = chain.process_new_block(Block.deserialize(payload), Uint256(raw_hash))
        print(result.status.value, raw_hash.hex(), flush=True)
    print("done", flush=True)


def seesaw(a, b):
    """A3, then B to 4 (reorg), A to 5 (reorg), B to 6 ... : a reorg every second block."""
    order = list(a[:3])
    ia, ib = 3, 0
    turn_b = True
    while ia < len(a) or ib < len(b):
        if turn_b:
            target = ia + 1
            order += b[ib:target]
            ib = max(ib, target)
        else:
            target = ib + 1
            order += a[ia:target]
            ia = max(ia, target)
        turn_b = not turn_b
    return order


@pytest.fixture(scope="module")
def kill_feed(tmp_path_factory, hasher, long_chain, genesis_hash):
    a = long_chain[:60]
    b = mine_on(hasher, genesis_hash, 0, 60, PKH_B, branch=2)
    order = seesaw(a, b)
    assert len(order) == 120
    genesis = create_genesis_block(REGTEST)
    path = tmp_path_factory.mktemp("feed") / "feed.pickle"
    with open(path, "wb") as f:
        pickle.dump({"hashes": {genesis.header.serialize(): bytes(genesis_hash)},
                     "blocks": [(blk.serialize(), bytes(h)) for blk, h in order]}, f)
    return path, order


def check_consistent(datadir: Path, hasher, reported: dict[bytes, str], utxo: bool) -> None:
    with BlockchainDB(datadir / "blocks") as db:
        best = db.read_best_block()
        indexed = [r.hash for r in db.iter_block_indexes()]
        assert all(db.block_exists(h) for h in indexed), "index record without block record"
    chain = open_chain(datadir, hasher, utxo=utxo)
    tip = chain.tip()
    assert best == tip.hash, "bestblock was not a loaded, linked block"
    assert len(chain._index) == len(indexed)                       # every index record linked
    main = chain.main_chain_hashes(0, tip.height + 1)
    assert len(main) == tip.height + 1
    for height in range(1, tip.height + 1):
        block = chain.get_block(main[height])
        assert block is not None and block.header.hash_prev_block == main[height - 1]
    assert tip.chain_work == max(i.chain_work for i in chain._index.values())
    for raw, status in reported.items():                           # completed calls are durable
        if status in ("tip", "reorg", "side"):
            assert chain.get_index(Uint256(raw)) is not None, status
    if utxo:                      # reconciled at load: equal to the main chain applied from scratch
        assert chain.utxo_set.best_block().hash == tip.hash
        with UTXOSet(datadir.parent / (datadir.name + "-scratch")) as scratch:
            for height, h in enumerate(main):
                scratch.connect_block(chain.get_block(h), height, h)
            assert list(scratch.coins()) == list(chain.utxo_set.coins())
        shutil.rmtree(datadir.parent / (datadir.name + "-scratch"))
    close_chain(chain)


REPORT_LINE = re.compile(r"[a-z]+ [0-9a-f]{64}")


def _parse_report(line: str) -> tuple[bytes, str]:
    status, block_hash = line.split(" ")
    return bytes.fromhex(block_hash), status


def kill_loop(tmp_path, hasher, feed, rounds: int, max_new_blocks: int, utxo: bool = False) -> dict:
    """Start the child, let it store a random number of new blocks, SIGKILL it a random
    fraction of a block later, then check the datadir; the next child continues on it."""
    feed_path, order = feed
    rng = random.Random(rounds)
    datadir = tmp_path / "run0"
    stats = {"kills": 0, "finished": 0, "reported": 0}
    for round_no in range(rounds):
        child = subprocess.Popen([sys.executable, __file__, "child", str(datadir), str(feed_path),
                                  "utxo" if utxo else "no-utxo"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = child.stdout.readline().strip()
        assert first == "ready", child.communicate()[1]
        lines: list[str] = []
        wanted = rng.randint(0, max_new_blocks)
        new = 0
        while new < wanted:
            line = child.stdout.readline().strip()
            if not line or line == "done":
                lines.append(line)
                break
            lines.append(line)
            new += not line.startswith("duplicate")
        time.sleep(rng.uniform(0, 0.004))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # The rest through the same buffered reader (communicate() would read the pipe
        # directly and lose what readline() had already buffered, cutting a line in two).
        lines += child.stdout.read().splitlines()
        child.stdout.close()
        child.stderr.close()
        reported = dict(_parse_report(line) for line in lines if REPORT_LINE.fullmatch(line))
        stats["reported"] += len(reported)
        check_consistent(datadir, hasher, reported, utxo)
        if "done" in lines:
            stats["finished"] += 1
            datadir = tmp_path / f"run{round_no + 1}"                 # start over on a new datadir
        else:
            stats["kills"] += 1
    return stats


def test_sigkill_at_random_moments_leaves_a_consistent_chain(tmp_path, hasher, kill_feed):
    stats = kill_loop(tmp_path, hasher, kill_feed, rounds=20, max_new_blocks=10)
    assert stats["kills"] >= 15, stats          # the rounds really die mid-stream
    assert stats["reported"] > 0


def test_sigkill_with_a_utxo_set_reconciles_both_databases(tmp_path, hasher, kill_feed):
    """The UTXO set is a second database: after each kill, load() must bring it to the tip."""
    stats = kill_loop(tmp_path, hasher, kill_feed, rounds=10, max_new_blocks=6, utxo=True)
    assert stats["kills"] >= 8, stats


@pytest.mark.slow
@pytest.mark.parametrize("utxo", [False, True])
def test_sigkill_soak(tmp_path, hasher, kill_feed, utxo):
    stats = kill_loop(tmp_path, hasher, kill_feed, rounds=200, max_new_blocks=15, utxo=utxo)
    assert stats["kills"] >= 100, stats


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "child":
    run_child(sys.argv[2], sys.argv[3], sys.argv[4] == "utxo")
