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

__all__ = ["build_merkle_root", "compute_merkle_root", "committed_merkle_root",
           "contextual_header_failure", "BlockValidationError", "Framing", "ParsedBlock",
           "parse_block_transactions", "block_transactions", "CoinsViewCache", "apply_transaction",
           "apply_transactions", "check_block_body", "check_block"]

#: Smallest possible serialized transaction (version, two empty counts, lock time).
_MIN_TX_SIZE = 10


def compute_merkle_root(txids: list[bytes]) -> tuple[bytes, bool]:
    """The merkle root of ``txids`` and whether the tree is *mutated* (Core's
    ``ComputeMerkleRoot`` with its ``mutated`` flag).

    An odd last element is paired with itself, so ``[a, b, c]`` and
    ``[a, b, c, c]`` have the same root (CVE-2012-2459), and so do longer
    lists whose last pair or subtree is repeated at a higher level.  Every
    such copy has two identical siblings at some level, which a list of
    distinct transactions never has: that is the flag.  A mutated list always
    holds a transaction twice, so it is never a valid block body, and the
    unmutated list with the same root may be.
    """
    if not txids:
        return bytes(32), False
    level = list(txids)
    mutated = False
    while len(level) > 1:
        if any(level[i] == level[i + 1] for i in range(0, len(level) - 1, 2)):
            mutated = True
        level = [sha3_256(level[i] + level[min(i + 1, len(level) - 1)])
                 for i in range(0, len(level), 2)]
    return level[0], mutated


def build_merkle_root(txids: list[bytes]) -> bytes:
    """``BuildMerkleRoot``: SHA3 pairs, an odd last element paired with itself."""
    return compute_merkle_root(txids)[0]


class BlockValidationError(ValueError):
    """A block breaks a strict consensus rule; ``reason`` says which.

    ``curable`` (Core's ``BLOCK_MUTATED``): a different body under the same
    header -- hence the same block hash -- could pass, so the chain must not
    remember the hash as failed; the real block may still come from another
    peer.  Everything the header or the merkle-committed transaction list
    decides is not curable.
    """

    def __init__(self, reason: str, curable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.curable = curable


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


def _committed_root(block: Block, parsed: ParsedBlock | None) -> tuple[bytes, bool]:
    """The root ``block``'s ``vtx`` commits to, and whether its tree is mutated."""
    if parsed is not None and parsed.framing is Framing.COUNTED:
        return compute_merkle_root([tx.get_hash() for tx in parsed.txs])
    return sha3_256(block.vtx), False


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
            parsed = None
    return _committed_root(block, parsed)[0]


def contextual_header_failure(header: BlockHeader, parent, params, now: int) -> BlockValidationError | None:
    """Strict mode's header rules on top of ``parent`` (a ``BlockIndex``), which the C++
    library has and the node never applies; None when the header passes.

    The header is the hash, so no other body cures these; only ``time-too-new``
    is curable, by a later clock (Core's ``BLOCK_TIME_FUTURE``).
    """
    expected = get_next_work_required(parent, params)
    if header.bits != expected:
        return BlockValidationError(f"bad-diffbits: nBits 0x{header.bits:08x}, expected 0x{expected:08x}")
    if header.time > now + MAX_FUTURE_BLOCK_TIME:
        return BlockValidationError(f"time-too-new: nTime {header.time} is more than 2 h after our "
                                    f"clock {now}", curable=True)
    if not check_block_timestamp(header.time, parent, now):
        return BlockValidationError(f"time-invalid: nTime {header.time} is not after the median time past")
    return None


def check_block_body(block: Block) -> ParsedBlock:
    """The context-free strict checks (Core's ``CheckBlock`` part), cheapest first;
    returns the parsed body or raises :class:`BlockValidationError`.
    C++: the library's ``VerifyMerkleRoot``, ``CheckNoDuplicateTransactions`` and
    ``CheckNoDoubleSpends`` parts of ``CheckBlock``, plus Core's mutated-tree check.

    The header hash commits to ``vtx`` only through the merkle root, and the
    root does not commit to the framing (``chain D3``), to CompactSize
    encodings, or to a repeated odd tail (CVE-2012-2459); a failure that one of
    those could explain is ``curable`` (see docs/TRANSACTIONS.md, strict-mode
    classification):

    * ``vtx`` empty or undecodable: curable (64 undecodable bytes that are the
      two top-level hashes of a counted list hash to that list's root);
    * merkle root mismatch, or a mutated tree: curable;
    * over 1,000,000 bytes: curable, checked before anything is decoded.  The
      txids hash the canonical encoding while the decoder accepts
      non-canonical CompactSizes (``net D-10``), and a one-element counted
      list has the root of the shorter bare form, so a copy can be padded over
      the limit.  (Whether the smallest encoding fits would need the decode
      this order avoids; an oversized block is only refused again, and its
      sender scored again, when it is sent again);
    * ``nVersion < 1`` and the structure of a committed list (coinbase first
      and only there, no duplicate txid, no outpoint spent twice, coinbase
      basics): not curable.
    """
    if not block.vtx:
        raise BlockValidationError("bad-blk-empty: Block has no transactions", curable=True)
    if len(block.vtx) > params.MAX_BLOCK_SIZE:
        raise BlockValidationError(f"bad-blk-length: Block size exceeds maximum ({len(block.vtx)} bytes)",
                                   curable=True)
    if block.header.version < 1:
        raise BlockValidationError("bad-version: Invalid block version")
    try:
        parsed = parse_block_transactions(block)
    except SerializationError as exc:
        raise BlockValidationError(f"bad-blk-undecodable: Failed to deserialize transactions: {exc}",
                                   curable=True) from None
    root, mutated = _committed_root(block, parsed)
    if Uint256(root) != block.header.hash_merkle_root:
        raise BlockValidationError(f"bad-txnmrklroot: Merkle root mismatch: header has "
                                   f"{block.header.hash_merkle_root}, transactions give {Uint256(root)}",
                                   curable=True)
    if mutated:
        raise BlockValidationError("bad-txns-duplicate: Duplicate transaction (mutated merkle tree, "
                                   "CVE-2012-2459)", curable=True)
    if parsed.framing is not Framing.GENESIS:
        _check_structure(parsed.txs)
        try:
            check_transaction_basic(parsed.txs[0])
        except TxValidationError as exc:
            raise BlockValidationError(f"Invalid coinbase: {exc.reason}") from None
    return parsed


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
    transaction sees the outputs of the earlier ones.  After
    :func:`check_block_body` every failure here is decided by the committed
    transaction list and the parent's UTXO set, so none is curable.

    C++: also ``CheckCoinbase`` and ``CalculateTotalFees``, folded in.
    """
    parsed = check_block_body(block)
    if parsed.framing is Framing.GENESIS:
        return 0
    txs = parsed.txs
    coinbase = txs[0]
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
