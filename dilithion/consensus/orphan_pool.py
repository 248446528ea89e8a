"""Blocks whose parent is not known yet (``chain D21`` fixed).

The C++ node stores such a block and never looks at it again; here it waits,
bounded in count and bytes, and is connected as soon as its parent arrives.
"""
from __future__ import annotations

from loguru import logger

from dilithion.core.lru import LRUDict
from dilithion.primitives.block import Block, Uint256

__all__ = ["OrphanPool", "MAX_ORPHAN_BLOCKS", "MAX_ORPHAN_BYTES"]

#: Orphan pool bounds: blocks and total ``vtx`` bytes (the oldest is evicted first).
MAX_ORPHAN_BLOCKS = 750
MAX_ORPHAN_BYTES = 64 * 1024 * 1024


class OrphanPool:
    """Blocks waiting for their parent, oldest first, bounded in count and bytes.

    Ownership: guarded by ``ChainState.lock`` (it has no lock of its own).
    """

    def __init__(self, max_blocks: int = MAX_ORPHAN_BLOCKS, max_bytes: int = MAX_ORPHAN_BYTES) -> None:
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        # One spare slot: add() evicts by its own rule, which also settles the bytes.
        self._blocks: LRUDict[Uint256, Block] = LRUDict(max_blocks + 1)
        self._children: dict[Uint256, list[Uint256]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def add(self, block_hash: Uint256, block: Block) -> None:
        if block_hash in self._blocks:
            return
        self._blocks.put(block_hash, block)
        self._children.setdefault(block.header.hash_prev_block, []).append(block_hash)
        self._bytes += len(block.vtx)
        while len(self._blocks) > self.max_blocks or (self._bytes > self.max_bytes
                                                      and len(self._blocks) > 1):
            oldest, _block = self._blocks.oldest()
            logger.debug("[Chain] Orphan pool full, evicting {}...", oldest.short())
            self.remove(oldest)

    def remove(self, block_hash: Uint256) -> Block | None:
        block = self._blocks.pop(block_hash)
        if block is None:
            return None
        self._bytes -= len(block.vtx)
        siblings = self._children.get(block.header.hash_prev_block)
        if siblings is not None:
            siblings.remove(block_hash)
            if not siblings:
                del self._children[block.header.hash_prev_block]
        return block

    def pop_children(self, parent_hash: Uint256) -> list[tuple[Uint256, Block]]:
        """Remove and return the waiting children of ``parent_hash``, oldest first."""
        out = []
        for child in list(self._children.get(parent_hash, ())):
            block = self.remove(child)
            if block is not None:
                out.append((child, block))
        return out

    def missing_root(self, parent_hash: Uint256) -> Uint256:
        """Follow parents through the pool to the first block nobody has."""
        seen = 0
        while parent_hash in self._blocks and seen <= len(self._blocks):
            parent_hash = self._blocks[parent_hash].header.hash_prev_block
            seen += 1
        return parent_hash
