"""Builders shared by the UTXO, mempool and transaction-validation tests.

Blocks come from the real template code (``mining.template``) but are not
mined: ``UTXOSet.connect_block`` does not check proof of work, so a test chain
of 100+ regtest blocks costs milliseconds instead of RandomX hashes.  The block
"hash" passed along is SHA3 of the header, a stand-in that is unique per block.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from dilithion.consensus.tx_validation import Coin, sign_input
from dilithion.consensus.validation import block_transactions
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair, create_script_pub_key
from dilithion.crypto.sha3 import sha3_256
from dilithion.mining.template import create_block_template
from dilithion.node.genesis import create_genesis_block
from dilithion.node.utxo_set import UTXOSet
from dilithion.primitives.block import Block, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

FEE = 500_000  # comfortably inside [max(50,000 + 25*size, 100,000), 10,000,000] for small spends


def fake_hash(block: Block) -> Uint256:
    return Uint256(sha3_256(block.header.serialize()))


def db_snapshot(utxo: UTXOSet) -> list[tuple[bytes, bytes]]:
    """Every key/value pair of the chainstate database, in key order."""
    with utxo.lock:
        return list(utxo._db.iterator())


def p2pkh(keypair: KeyPair) -> bytes:
    return create_script_pub_key(keypair.pub_key_hash())


def spend(keypair: KeyPair, inputs: list[tuple[OutPoint, Coin]], outputs: list[tuple[int, bytes]],
          version: int = 1) -> Transaction:
    """A transaction spending ``inputs`` to ``outputs``, every input signed by ``keypair``."""
    tx = Transaction(version, [TxIn(op) for op, _ in inputs],
                     [TxOut(value, spk) for value, spk in outputs])
    for i in range(len(inputs)):
        sign_input(tx, i, keypair)
    return tx


@dataclass
class RegtestChain:
    """A regtest chain applied to a real ``UTXOSet``; the miner key owns every coinbase."""

    utxo: UTXOSet
    miner: KeyPair
    params: ChainParams = field(default_factory=ChainParams.regtest)
    blocks: list[tuple[Block, Uint256]] = field(default_factory=list)

    def __post_init__(self) -> None:
        genesis = create_genesis_block(self.params)
        self.utxo.connect_block(genesis, 0, fake_hash(genesis), strict=True)
        self.blocks.append((genesis, fake_hash(genesis)))

    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    @property
    def tip_hash(self) -> Uint256:
        return self.blocks[-1][1]

    def make_block(self, transactions=(), height: int | None = None) -> Block:
        """The next block's template (``transactions`` are ``(tx, fee)`` pairs), not connected."""
        height = self.height + 1 if height is None else height
        return create_block_template(self.tip_hash, height, self.params.genesis_bits,
                                     self.miner.pub_key_hash(), self.params, list(transactions),
                                     now=self.params.genesis_time + height).block

    def connect(self, block: Block, strict: bool = True) -> Uint256:
        block_hash = fake_hash(block)
        self.utxo.connect_block(block, self.height + 1, block_hash, strict=strict)
        self.blocks.append((block, block_hash))
        return block_hash

    def add_block(self, transactions=(), strict: bool = True) -> Block:
        block = self.make_block(transactions)
        self.connect(block, strict)
        return block

    def disconnect(self) -> Block:
        block, block_hash = self.blocks.pop()
        self.utxo.disconnect_block(block, self.height + 1, block_hash)
        return block

    def grow(self, count: int) -> None:
        for _ in range(count):
            self.add_block()

    def coinbase_coin(self, height: int) -> tuple[OutPoint, Coin]:
        """The miner's coinbase output of the block at ``height``."""
        block = self.blocks[height][0]
        outpoint = OutPoint(block_transactions(block)[0].get_hash(), 0)
        coin = self.utxo.get(outpoint)
        assert coin is not None, f"coinbase of height {height} is spent or missing"
        return outpoint, coin


class TipHeight:
    """The two members of ``ChainState`` that ``accept_to_memory_pool`` reads
    (``height()`` and ``lock``), answered from a :class:`RegtestChain`, so mempool
    tests need neither RandomX nor a blocks database."""

    def __init__(self, chain: RegtestChain) -> None:
        self._chain = chain
        self.lock = threading.RLock()

    def height(self) -> int:
        return self._chain.height
