"""The blocks of the built-in corpus that need proof of work, mined once.

Testnet RandomX in light mode runs at a few dozen hashes a second here, so a
block at the easiest allowed ``nBits`` (``0x1f0fffff``, about 4,096 hashes) costs
minutes.  ``dilithion-diff mine-corpus`` therefore mines only what it lacks and
keeps every solved block in the harness's ``MINED_FILE``
(``dilithion/testing/data/mined-blocks.json``, committed; the lab reads it too),
keyed by name; the runs never mine.

The blocks hang off the C++ vector chain (heights 0..6, ``nBits 0x1f060000``):

* ``F6`` (parent ``V5``, easy bits, a timestamp before its parent's): a side
  branch with less work than ``V6``;
* ``F7`` (on ``F6``, timestamp ``0xffffffff``) and ``F8`` (on ``F7``): three
  easy blocks outweigh one hard block (work ``2^64/m`` per block), so ``F8``
  reorganises ``V6`` away, depth 1;
* ``G8`` (on ``F7``, same bits as ``F8``): an exact tie with ``F8``;
* ``H9`` (on ``F8``) and ``H10`` (on ``H9``): delivered out of order (orphans);
* ``A7``..``A108`` and ``B7``..``B107`` (two easy-bits branches on ``V6``): the
  C++ depth limit (``MAX_REORG_DEPTH = 100``, tip height minus fork height).
  With ``A106`` the tip, ``B107`` outweighs it at depth 100 (allowed); with
  ``B107`` the tip, ``A107`` ties and ``A108`` outweighs it at depth 101
  (refused).  Mined in full mode: about 830,000 hashes;
* ``EASYOUT``, ``HARDOUT``, ``HARDEND``, ``SIGNONLY`` and ``BIT23``: the edges of
  the allowed nBits range (:data:`EDGE_SPECS`);
* ``BADBITS`` (on ``V6``, ``nBits 0x207fffff``, outside the testnet range, its hash
  meets its own target) and ``BADPOW`` (on ``V6``, easy bits, a hash that does
  not meet them) need no real work.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from dilithion.consensus.pow import compact_to_big, hash_less_than
from dilithion.core.chainparams import MAX_DIFFICULTY_BITS, MIN_DIFFICULTY_BITS, ChainParams
from dilithion.crypto.mldsa import KeyPair
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.template import create_block_template, search_nonce
from dilithion.primitives.block import Block, Uint256
from dilithion.testing.testnet_blocks import MINED_FILE, known_blocks

#: Pays every mined coinbase; any fixed key would do.
MINER = KeyPair.from_seed(bytes(32))
TESTNET = ChainParams.testnet()
EASY_BITS = MAX_DIFFICULTY_BITS                 # 0x1f0fffff, the easy end of the range
OUT_OF_RANGE_BITS = 0x207FFFFF                  # regtest's limit: outside testnet's range


@dataclass(frozen=True)
class BlockSpec:
    name: str
    parent: str
    height: int
    bits: int
    time_delta: int | None = None     # added to the parent's nTime
    time: int | None = None           # absolute nTime (odd timestamps)
    valid_pow: bool = True            # False: find a nonce whose hash misses the target
    salt: int = 0                     # tells apart siblings that are otherwise equal


SPECS = (
    BlockSpec("F6", "V5", 6, EASY_BITS, time_delta=-3600),
    BlockSpec("F7", "F6", 7, EASY_BITS, time=0xFFFFFFFF),
    BlockSpec("F8", "F7", 8, EASY_BITS, time_delta=-7200),
    BlockSpec("G8", "F7", 8, EASY_BITS, time_delta=-7100, salt=1),
    BlockSpec("H9", "F8", 9, EASY_BITS, time_delta=60),
    BlockSpec("H10", "H9", 10, EASY_BITS, time_delta=60),
    BlockSpec("BADBITS", "V6", 7, OUT_OF_RANGE_BITS, time_delta=60),
    BlockSpec("BADPOW", "V6", 7, EASY_BITS, time_delta=60, valid_pow=False),
)


def branch(prefix: str, fork: str, first_height: int, last_height: int,
           spacing: int) -> tuple[BlockSpec, ...]:
    """A chain of easy blocks ``<prefix><height>`` on ``fork``, ``spacing`` seconds apart
    (two branches on one fork differ by their spacing, so no two headers are equal)."""
    names = [fork] + [f"{prefix}{h}" for h in range(first_height, last_height + 1)]
    return tuple(BlockSpec(name, parent, first_height + i, EASY_BITS, time_delta=spacing)
                 for i, (parent, name) in enumerate(zip(names, names[1:])))


#: The reorganisation-depth case: depth 100 allowed, depth 101 refused (``chain`` 5.4).
DEPTH_SPECS = branch("A", "V6", 7, 108, spacing=60) + branch("B", "V6", 7, 107, spacing=61)

#: The edges of the allowed nBits range, compared as compact integers (``chain`` 3.3),
#: after the depth case (tip ``B107``): one step outside each end, the hard end itself
#: (no proof of work there: 2^32 hashes), a mantissa with only the sign bit (target 0)
#: and ``0x1effffff``, whose target ignores mantissa bit 23 while its work counts it
#: (``chain`` 3.4): on ``B106`` it outweighs ``B107`` (about 131,000 hashes).
EDGE_SPECS = (
    BlockSpec("EASYOUT", "B107", 108, MAX_DIFFICULTY_BITS + 1, time_delta=60),
    BlockSpec("HARDOUT", "B107", 108, MIN_DIFFICULTY_BITS - 1, time_delta=60, valid_pow=False),
    BlockSpec("HARDEND", "B107", 108, MIN_DIFFICULTY_BITS, time_delta=60, valid_pow=False),
    BlockSpec("SIGNONLY", "B107", 108, 0x1E800000, time_delta=60, valid_pow=False),
    BlockSpec("BIT23", "B106", 107, 0x1EFFFFFF, time_delta=62),
)
ALL_SPECS = SPECS + DEPTH_SPECS + EDGE_SPECS
#: Above this many expected hashes the dataset build (about a minute) pays for itself.
FULL_MODE_HASHES = 50_000


def expected_hashes(spec: BlockSpec) -> int:
    target = compact_to_big(spec.bits)
    return (1 << 256) // (target + 1) if spec.valid_pow else 1


def _solve(hasher, template, threads: int) -> tuple[Block, Uint256]:
    """Search nonces on ``threads`` threads (``VM.hash`` releases the GIL)."""
    stop = threading.Event()
    found: list[tuple[Block, Uint256]] = []

    def work(start: int) -> None:
        result = search_nonce(hasher, template, start_nonce=start, step=threads, stop=stop)
        if result is not None and not stop.is_set():
            found.append(result)
            stop.set()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return found[0]


def _miss(hasher, template) -> tuple[Block, Uint256]:
    """The first nonce whose hash does not meet the target (bad proof of work)."""
    block = template.block
    for nonce in range(1 << 16):
        block.header.nonce = nonce
        digest = hasher.hash(block.header.serialize())
        if not hash_less_than(digest, compact_to_big(block.header.bits)):
            return block, Uint256(digest)
    raise RuntimeError("no failing nonce in 65,536 tries")


def mine_missing(vectors_file: Path, mined_file: Path = MINED_FILE, threads: int = 2) -> dict:
    """Mine every block of :data:`ALL_SPECS` not yet in ``mined_file``; return name -> hex payload."""
    mined: dict[str, str] = json.loads(mined_file.read_text()) if mined_file.exists() else {}
    hasher = RandomXHasher.for_key()
    known = known_blocks(vectors_file, mined, hasher)
    missing = [spec for spec in ALL_SPECS if spec.name not in mined]
    if sum(map(expected_hashes, missing)) > FULL_MODE_HASHES:
        hasher.start_full_mode(threads)        # a minute of dataset, hours of light hashing saved
    for spec in missing:
        if spec.name in mined:
            continue
        parent, parent_hash = known[spec.parent]
        when = spec.time if spec.time is not None else parent.header.time + spec.time_delta
        template = create_block_template(parent_hash, spec.height, spec.bits,
                                         MINER.pub_key_hash(), TESTNET, now=when + spec.salt)
        logger.info("mining {} on {} (nBits {:#x})", spec.name, spec.parent, spec.bits)
        block, block_hash = (_solve(hasher, template, threads) if spec.valid_pow
                             else _miss(hasher, template))
        known[spec.name] = (block, block_hash)
        mined[spec.name] = block.serialize().hex()
        mined_file.write_text(json.dumps(mined, indent=1) + "\n")     # keep each solved block
        logger.info("mined {} = {}", spec.name, block_hash.get_hex())
    return mined
