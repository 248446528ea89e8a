"""What the chain state needs from the databases under it, as interfaces.

:class:`~dilithion.consensus.chain.ChainState` decides which blocks are
accepted and which chain is active; the block database and the UTXO set that
it writes through live in the node layer (``dilithion.node.blockchain_storage``,
``dilithion.node.utxo_set``).  Consensus code names them only through these
protocols, so it never imports the node layer, and a test or tool may hand it
any object with the same methods.  No C++ counterpart: the C++ ``CChainState``
includes ``node/blockchain_storage.h`` directly.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dilithion.consensus.block_index import BlockIndex
    from dilithion.primitives.block import Block, Uint256

__all__ = ["StorageError", "BlockBatchWriter", "BlockStore", "CoinStore"]


class StorageError(Exception):
    """A database cannot be opened, read or written.

    The message is meant for the operator: it names the directory or the key
    and says what is wrong (locked, corrupt, disk full ...).
    """


class BlockBatchWriter(Protocol):
    """One atomic write batch of the block database."""

    def write_block(self, block_hash: Uint256, block: Block) -> None: ...

    def write_block_index(self, block_hash: Uint256, index: BlockIndex) -> None: ...

    def write_best_block(self, block_hash: Uint256) -> None: ...


class BlockStore(Protocol):
    """The block database as the chain state uses it (``CBlockchainDB``)."""

    path: object

    def read_block(self, block_hash: Uint256) -> Block | None: ...

    def block_exists(self, block_hash: Uint256) -> bool: ...

    def erase_block(self, block_hash: Uint256) -> None: ...

    def batch(self, sync: bool = False) -> AbstractContextManager[BlockBatchWriter]: ...


class CoinStore(Protocol):
    """The UTXO set as the chain state uses it while connecting blocks (``CUTXOSet``)."""

    def connect_block(self, block: Block, height: int, block_hash: Uint256,
                      strict: bool = False) -> None: ...

    def disconnect_block(self, block: Block, height: int, block_hash: Uint256) -> None: ...
