"""In-memory block index entries (``CBlockIndex``, ``src/node/block_index.{h,cpp}``, ``chain`` 5.1).

One :class:`BlockIndex` per known block (main chain and side branches), linked
to its parent, with the cumulative chain work that decides the tip.  Unlike the
C++, the full header is always present (the C++ leaves it zeroed for indexes
loaded from disk, ``chain D15``/``D12``); the scalar fields the C++ copies
(``nTime``, ``nBits``, ``nNonce``, ``nVersion``) are read from it.
"""
from __future__ import annotations

from collections.abc import Collection

from dilithion.consensus.pow import add_chain_work
from dilithion.primitives.block import BlockHeader, Uint256

__all__ = ["BlockIndex", "connected_indexes", "BLOCK_VALID_UNKNOWN", "BLOCK_VALID_HEADER",
           "BLOCK_VALID_TREE", "BLOCK_VALID_TRANSACTIONS", "BLOCK_VALID_CHAIN", "BLOCK_VALID_SCRIPTS",
           "BLOCK_VALID_MASK", "BLOCK_HAVE_DATA", "BLOCK_HAVE_UNDO", "BLOCK_FAILED",
           "STATUS_STORED_GENESIS", "STATUS_STORED_BLOCK"]

# C++ ``CBlockIndex::BlockStatus`` values.  The valid mask overlaps the HAVE bits (``chain D17``).
BLOCK_VALID_UNKNOWN = 0
BLOCK_VALID_HEADER = 1
BLOCK_VALID_TREE = 2
BLOCK_VALID_TRANSACTIONS = 3
BLOCK_VALID_CHAIN = 4
BLOCK_VALID_SCRIPTS = 5
BLOCK_VALID_MASK = 31
BLOCK_HAVE_DATA = 8
BLOCK_HAVE_UNDO = 16
#: Python-only, in memory: the block failed strict validation while being connected.
BLOCK_FAILED = 32

#: What the C++ node writes into ``nStatus`` (before activation, never updated): genesis 12, others 8.
STATUS_STORED_GENESIS = BLOCK_VALID_CHAIN | BLOCK_HAVE_DATA
STATUS_STORED_BLOCK = BLOCK_HAVE_DATA


class BlockIndex:
    """One known block: hash, header, height, parent link, chain work, status.

    Ownership: created and mutated only under ``ChainState.lock``; other
    threads may read the immutable fields (hash, header, height, prev,
    chain_work) of an index they were handed without the lock.
    """

    __slots__ = ("hash", "header", "height", "prev", "next", "chain_work", "status")

    def __init__(self, block_hash: Uint256, header: BlockHeader, height: int,
                 prev: "BlockIndex | None", chain_work: int, status: int) -> None:
        self.hash = block_hash
        self.header = header
        self.height = height
        self.prev = prev
        #: ``pnext``: the child on the main chain, ``None`` for the tip and side branches.
        self.next: BlockIndex | None = None
        self.chain_work = chain_work
        self.status = status

    @classmethod
    def from_header(cls, block_hash: Uint256, header: BlockHeader,
                    prev: "BlockIndex | None", status: int) -> "BlockIndex":
        """A new entry below ``prev``: height and chain work follow from the parent
        (``BuildChainWork``: the genesis starts with its own block proof).

        C++: the ``CBlockIndex(const CBlockHeader&)`` constructor."""
        height = 0 if prev is None else prev.height + 1
        work = add_chain_work(0 if prev is None else prev.chain_work, header.bits)
        return cls(block_hash, header, height, prev, work, status)

    # The scalar copies the C++ keeps next to the header (and stores in the index record).
    @property
    def time(self) -> int:
        return self.header.time

    @property
    def bits(self) -> int:
        return self.header.bits

    @property
    def nonce(self) -> int:
        return self.header.nonce

    @property
    def version(self) -> int:
        return self.header.version

    n_tx = 0  # never set by the C++ either

    def is_failed(self) -> bool:
        return bool(self.status & BLOCK_FAILED)

    def __repr__(self) -> str:
        """``CBlockIndex::ToString``: the first 20 display characters of the hash."""
        return f"BlockIndex(hash={self.hash.get_hex()[:20]}..., height={self.height}, nTx={self.n_tx})"


def connected_indexes(new_tip: BlockIndex, connected: Collection) -> list[BlockIndex]:
    """The index entries of a tip listener's ``connected`` blocks, ascending.

    Those blocks end at ``new_tip``, so walking back from it finds them without
    hashing a block again: a block the miner (or ``generatetoaddress``) found
    was never hashed through ``ChainState.hash_block``, and hashing it there
    would cost one RandomX hash before its announcement.
    """
    indexes: list[BlockIndex] = []
    index: BlockIndex | None = new_tip
    for _ in connected:
        if index is None:
            break
        indexes.append(index)
        index = index.prev
    indexes.reverse()
    return indexes
