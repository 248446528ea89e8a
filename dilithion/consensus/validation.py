"""Block transactions and block validation (``CBlockValidator``, ``chain`` 1.5, 6.2).

``vtx`` is an opaque byte string with three framings (``chain`` 1.5): the
genesis text (no transaction), the node's bare coinbase, and the library's
CompactSize-counted list.  :func:`parse_block_transactions` understands all
three -- the C++ ``DeserializeBlockTransactions`` understands only the last and
so could not read any block the C++ node mines (``chain D28``).

:func:`check_block` is the strict (``--strict``) rule set.  It keeps the C++
library checks and adds what the library misses: signatures are verified
(``chain D30``), and a transaction may spend an output created by an earlier
transaction of the same block (the C++ rejects that, ``chain D31``).  It does
not check proof of work, time or linkage: the chain does that with the hash
it has already computed.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator

from dilithion.consensus import params
from dilithion.consensus.pow import (MAX_FUTURE_BLOCK_TIME, calculate_block_subsidy,
                                     check_block_timestamp, get_next_work_required)
from dilithion.consensus.tx_validation import (Coin, CoinsView, TxValidationError,
                                               check_transaction, check_transaction_basic)
from dilithion.crypto.sha3 import sha3_256
from dilithion.net.serialize import DataStream, SerializationError
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction

__all__ = ["build_merkle_root", "committed_merkle_root", "mutation_reason", "contextual_header_failure",
           "BlockValidationError", "Framing", "ParsedBlock", "parse_block_transactions",
           "block_transactions", "CoinsViewCache", "apply_transaction", "apply_transactions",
           "check_block"]

#: Smallest possible serialized transaction (version, two empty counts, lock time).
_MIN_TX_SIZE = 10


def build_merkle_root(txids: list[bytes]) -> bytes:
    """``BuildMerkleRoot``: SHA3 pairs, an odd last element paired with itself."""
    if not txids:
        return bytes(32)
    level = list(txids)
    while len(level) > 1:
        level = [sha3_256(level[i] + level[min(i + 1, len(level) - 1)])
                 for i in range(0, len(level), 2)]
    return level[0]


class BlockValidationError(ValueError):
    """A block breaks a strict consensus rule; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Framing(enum.Enum):
    GENESIS = "genesis"   # vtx is the genesis message, not a transaction
    BARE = "bare"         # exactly one transaction, no count (C++ node template)
    COUNTED = "counted"   # CompactSize count + transactions (C++ library template)


@dataclass
class ParsedBlock:
    framing: Framing
    txs: list[Transaction]


def _parse_counted(vtx: bytes) -> list[Transaction]:
    s = DataStream(vtx)
    if vtx[:1] == b"\xff":
        raise SerializationError("Unsupported transaction count encoding (255)")
    count = s.read_count(params.MAX_BLOCK_TRANSACTIONS, "transaction count", _MIN_TX_SIZE)
    if count == 0:
        raise SerializationError("Block transaction count is zero")
    txs = [Transaction.deserialize_from(s) for _ in range(count)]
    s.expect_end("last transaction")
    return txs


def parse_block_transactions(block: Block) -> ParsedBlock:
    """Decode ``vtx`` in whichever framing it uses; raises ``SerializationError``.

    C++: ``DeserializeBlockTransactions``.

    A null parent means genesis (its ``vtx`` is text).  Otherwise the bare form
    is tried first because it is what every C++-mined block holds; the header
    does not commit to the framing (``chain D3``), so the merkle check in
    :func:`check_block` is per framing.
    """
    if block.header.hash_prev_block.is_null():
        return ParsedBlock(Framing.GENESIS, [])
    if not block.vtx:
        raise SerializationError("Block has no transactions")
    try:
        return ParsedBlock(Framing.BARE, [Transaction.deserialize(block.vtx)[0]])
    except SerializationError as bare_error:
        try:
            return ParsedBlock(Framing.COUNTED, _parse_counted(block.vtx))
        except SerializationError as counted_error:
            raise SerializationError(f"vtx is neither one transaction ({bare_error}) nor a "
                                     f"counted list ({counted_error})") from None


def block_transactions(block: Block) -> list[Transaction]:
    """The block's transactions, coinbase first (``[]`` for genesis)."""
    return parse_block_transactions(block).txs


class CoinsViewCache:
    """A write overlay on a :class:`CoinsView` that remembers what it replaced.

    Used for one block at a time by one thread (the caller holds the UTXO set's
    lock).  :meth:`changes` yields every touched outpoint once, in first-touch
    order, with its coin before the block and after it: exactly what an undo
    record must hold to restore the base byte for byte.
    """

    def __init__(self, base: CoinsView) -> None:
        self._base = base
        self._coins: dict[OutPoint, Coin | None] = {}
        self._before: dict[OutPoint, Coin | None] = {}

    def get(self, outpoint: OutPoint) -> Coin | None:
        if outpoint in self._coins:
            return self._coins[outpoint]
        return self._base.get(outpoint)

    def _set(self, outpoint: OutPoint, coin: Coin | None) -> None:
        if outpoint not in self._before:
            self._before[outpoint] = self._base.get(outpoint)
        self._coins[outpoint] = coin

    def add(self, outpoint: OutPoint, coin: Coin) -> None:
        """Create (or overwrite, for a repeated txid) an output."""
        self._set(outpoint, coin)

    def spend(self, outpoint: OutPoint) -> Coin | None:
        """Remove an output; returns it, or ``None`` (and changes nothing) if absent."""
        coin = self.get(outpoint)
        if coin is not None:
            self._set(outpoint, None)
        return coin

    def changes(self) -> Iterator[tuple[OutPoint, Coin | None, Coin | None]]:
        for outpoint, before in self._before.items():
            yield outpoint, before, self._coins[outpoint]


def apply_transaction(view: CoinsViewCache, tx: Transaction, height: int, is_coinbase: bool) -> None:
    """Spend the inputs (unless coinbase) and create the outputs; a missing input is skipped."""
    if not is_coinbase:
        for txin in tx.vin:
            view.spend(txin.prevout)
    txid = tx.get_hash()
    for n, out in enumerate(tx.vout):
        view.add(OutPoint(txid, n), Coin(out.value, out.script_pubkey, height, is_coinbase))


def apply_transactions(view: CoinsViewCache, txs: list[Transaction], height: int) -> None:
    """Apply a block's transactions in order, never failing (the C++ ``ApplyBlock`` walk).

    The first transaction is the coinbase *by position*, as in the C++: its
    inputs are not spent and its outputs are flagged coinbase.  A missing input
    is skipped (the default mode accepts any ``vtx``, ``chain`` 5.3); the second
    spend of one outpoint finds it gone and is skipped too (``chain D25``).
    """
    for position, tx in enumerate(txs):
        apply_transaction(view, tx, height, position == 0)


def committed_merkle_root(block: Block, parsed: ParsedBlock | None = None) -> bytes:
    """The merkle root ``block``'s ``vtx`` commits to, per framing (``chain`` 1.5, D3).

    A counted list commits as ``BuildMerkleRoot(txids)``; the genesis text, a
    bare coinbase (what the C++ node mines) and undecodable bytes as
    ``SHA3(vtx)``, which for a bare coinbase equals its txid.
    """
    if parsed is None:
        try:
            parsed = parse_block_transactions(block)
        except SerializationError:
            return sha3_256(block.vtx)
    if parsed.framing is Framing.COUNTED:
        return build_merkle_root([tx.get_hash() for tx in parsed.txs])
    return sha3_256(block.vtx)


def mutation_reason(block: Block) -> str | None:
    """Why the body does not match the header's merkle root (Core: ``BLOCK_MUTATED``),
    or None.  A different body could cure it, so the header hash is never marked failed."""
    root = Uint256(committed_merkle_root(block))
    if root != block.header.hash_merkle_root:
        return f"bad-txnmrklroot: header has {block.header.hash_merkle_root}, transactions give {root}"
    return None


def contextual_header_failure(header: BlockHeader, parent, params, now: int) -> str | None:
    """Strict mode's header rules on top of ``parent`` (a ``BlockIndex``), which the C++
    library has and the node never applies; None when the header passes."""
    expected = get_next_work_required(parent, params)
    if header.bits != expected:
        return f"bad-diffbits: nBits 0x{header.bits:08x}, expected 0x{expected:08x}"
    if header.time > now + MAX_FUTURE_BLOCK_TIME:
        return f"time-too-new: nTime {header.time} is more than 2 h after our clock {now}"
    if not check_block_timestamp(header.time, parent, now):
        return f"time-invalid: nTime {header.time} is not after the median time past"
    return None


def _check_merkle_root(block: Block, parsed: ParsedBlock) -> None:
    """The header commits to these transactions (``VerifyMerkleRoot``)."""
    if committed_merkle_root(block, parsed) != block.header.hash_merkle_root:
        raise BlockValidationError("Merkle root mismatch")


def _check_structure(txs: list[Transaction]) -> None:
    """One coinbase, first; no duplicate transactions (``CheckNoDuplicateTransactions``)
    and no outpoint spent twice (``CheckNoDoubleSpends``)."""
    if not txs[0].is_coinbase():
        raise BlockValidationError("First transaction is not coinbase")
    if any(tx.is_coinbase() for tx in txs[1:]):
        raise BlockValidationError("Multiple coinbase transactions")
    txids = [tx.get_hash() for tx in txs]
    if len(set(txids)) != len(txids):
        raise BlockValidationError("Duplicate transaction")
    spent: set[OutPoint] = set()
    for tx in txs[1:]:
        for txin in tx.vin:
            if txin.prevout in spent:
                raise BlockValidationError(
                    f"Double spend in block: {txin.prevout.hash[::-1].hex()}:{txin.prevout.n}")
            spent.add(txin.prevout)


def check_block(block: Block, height: int, view: CoinsView, verify_scripts: bool = True) -> int:
    """Validate ``block`` at ``height`` against ``view`` (the UTXO set before it).

    Raises :class:`BlockValidationError`; returns the total fees.  ``view`` is
    only read: the block's own effects go to a private overlay so each
    transaction sees the outputs of the earlier ones.

    C++: also ``CheckCoinbase`` and ``CalculateTotalFees``, folded in.
    """
    if not block.vtx:
        raise BlockValidationError("Block has no transactions")
    if len(block.vtx) > params.MAX_BLOCK_SIZE:
        raise BlockValidationError("Block size exceeds maximum")
    if block.header.version < 1:
        raise BlockValidationError("Invalid block version")
    try:
        parsed = parse_block_transactions(block)
    except SerializationError as exc:
        raise BlockValidationError(f"Failed to deserialize transactions: {exc}") from None
    _check_merkle_root(block, parsed)
    if parsed.framing is Framing.GENESIS:
        return 0
    txs = parsed.txs
    _check_structure(txs)
    coinbase = txs[0]
    try:
        check_transaction_basic(coinbase)
    except TxValidationError as exc:
        raise BlockValidationError(f"Invalid coinbase: {exc.reason}") from None
    overlay = CoinsViewCache(view)
    apply_transaction(overlay, coinbase, height, is_coinbase=True)
    total_fees = 0
    for index, tx in enumerate(txs[1:], start=1):
        try:
            total_fees += check_transaction(tx, overlay, height, verify_scripts)
        except TxValidationError as exc:
            raise BlockValidationError(f"Transaction {index} ({tx.get_hash()[::-1].hex()}) "
                                       f"invalid: {exc.reason}") from None
        apply_transaction(overlay, tx, height, is_coinbase=False)
    allowed = calculate_block_subsidy(height) + total_fees
    if coinbase.get_value_out() > allowed:
        raise BlockValidationError(f"Coinbase value {coinbase.get_value_out()} exceeds "
                                   f"subsidy + fees {allowed}")
    return total_fees
