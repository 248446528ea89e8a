"""The transaction memory pool (``CTxMemPool``, ``chain`` 7) and its admission rule.

The C++ pool keeps the fee-rate order, the no-conflict rule and the fee check
of ``AddTx``; it has no eviction, no expiry and leaves conflicting
transactions in the pool when a block confirms a competing spend (``chain
D40``).  This pool adds all three:

* size limit: when full, entries with the lowest fee rate are evicted if the
  newcomer ranks above them; otherwise the newcomer is refused ("Mempool full").
  Like Core's ``-maxmempool`` (``DynamicMemoryUsage``) the limit bounds the
  memory the entries cost, not their serialized bytes: a standard transaction
  of 2,900 outputs costs about five times its size in Python objects;
* expiry: :meth:`TxMemPool.expire` drops entries older than ``expiry_seconds``;
* :meth:`TxMemPool.remove_for_block` removes the confirmed transactions *and*
  every pooled transaction spending an outpoint the block spent.

Pooled transactions only spend confirmed outputs (admission validates against
the UTXO set), so there are no in-pool ancestor chains to track.
"""
from __future__ import annotations

import bisect
import threading
import time as _time
from dataclasses import dataclass, field
from typing import Iterable

from loguru import logger

from dilithion.consensus.fees import calculate_fee_rate, fee_rejection_reason
from dilithion.consensus.params import COINBASE_MATURITY
from dilithion.consensus.tx_validation import (TxValidationError, check_transaction,
                                               standard_rejection_reason)
from dilithion.consensus.validation import block_transactions
from dilithion.net.serialize import SerializationError
from dilithion.primitives.transaction import OutPoint, Transaction

__all__ = ["MempoolEntry", "TxMemPool", "accept_to_memory_pool", "mempool_entry_sort_key",
           "DEFAULT_MAX_MEMPOOL_BYTES", "DEFAULT_EXPIRY_SECONDS", "TxValidationError",
           "ENTRY_USAGE_OVERHEAD", "INPUT_USAGE_OVERHEAD", "OUTPUT_USAGE_OVERHEAD"]

#: ``CTxMemPool::max_mempool_size`` (300 MiB), here of memory usage (:attr:`MempoolEntry.usage`).
DEFAULT_MAX_MEMPOOL_BYTES = 300 * 1024 * 1024
#: Memory an entry costs beyond its serialized bytes, measured with ``tracemalloc``
#: (the decoded transaction, the entry, its order key and its spent-outpoint
#: index): about 1 KiB per transaction, 306 bytes per input, 149 per output.
ENTRY_USAGE_OVERHEAD = 1024
INPUT_USAGE_OVERHEAD = 320
OUTPUT_USAGE_OVERHEAD = 160
DEFAULT_EXPIRY_SECONDS = 14 * 24 * 60 * 60


@dataclass
class MempoolEntry:
    """``CTxMemPoolEntry``: the transaction with what the pool orders and limits it by."""

    tx: Transaction
    fee: int
    time: int
    height: int
    txid: bytes = field(init=False)
    size: int = field(init=False)
    fee_rate: float = field(init=False)
    #: Memory this entry costs (serialized bytes plus the measured overheads).
    usage: int = field(init=False)

    def __post_init__(self) -> None:
        self.txid = self.tx.get_hash()
        self.size = self.tx.get_serialized_size()
        self.fee_rate = calculate_fee_rate(self.fee, self.size)
        self.usage = (self.size + ENTRY_USAGE_OVERHEAD + INPUT_USAGE_OVERHEAD * len(self.tx.vin)
                      + OUTPUT_USAGE_OVERHEAD * len(self.tx.vout))


def mempool_entry_sort_key(entry: MempoolEntry) -> tuple[float, int, bytes]:
    """C++ order: higher fee rate first, then earlier time, then smaller raw txid.

    C++: the comparator ``CompareTxMemPoolEntryByFeeRate``.
    """
    return (-entry.fee_rate, entry.time, entry.txid)


class TxMemPool:
    """Unconfirmed transactions, best fee rate first.

    Shared by the P2P, RPC and mining threads; ``self.lock`` (an ``RLock``)
    guards every container, and every public method takes it.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_MEMPOOL_BYTES,
                 expiry_seconds: int = DEFAULT_EXPIRY_SECONDS) -> None:
        self.max_bytes = max_bytes
        self.expiry_seconds = expiry_seconds
        self.lock = threading.RLock()
        self._entries: dict[bytes, MempoolEntry] = {}
        self._order: list[tuple[float, int, bytes]] = []   # sorted sort keys
        self._spent: dict[OutPoint, bytes] = {}            # outpoint -> spending txid
        self._bytes = 0
        self._usage = 0                                    # sum of the entries' usage

    # -- admission ---------------------------------------------------------------
    def add_tx(self, tx: Transaction, fee: int, time: int, height: int) -> None:
        """``AddTx``: the caller has validated ``tx`` and computed ``fee``.

        Raises :class:`TxValidationError` ("Already in mempool", a conflict,
        a fee rule, "Mempool full").
        """
        if tx.is_null():
            raise TxValidationError("Transaction is null")
        entry = MempoolEntry(tx, fee, time, height)
        with self.lock:
            if entry.txid in self._entries:
                raise TxValidationError("Already in mempool")
            conflict = self._conflict(tx)
            if conflict is not None:
                raise TxValidationError(conflict)
            reason = fee_rejection_reason(entry.size, fee, check_relay=True)
            if reason:
                raise TxValidationError(reason)
            victims = self._eviction_victims(entry)
            for victim in victims:
                logger.info(f"Mempool full: evicting {victim.txid[::-1].hex()[:16]}... "
                            f"(fee rate {victim.fee_rate:.1f} ions/byte)")
                self._remove(victim.txid)
            self._insert(entry)

    def _conflict(self, tx: Transaction) -> str | None:
        for txin in tx.vin:
            spender = self._spent.get(txin.prevout)
            if spender is not None:
                return (f"Input {txin.prevout.hash[::-1].hex()}:{txin.prevout.n} already spent "
                        f"by mempool transaction {spender[::-1].hex()}")
        return None

    def _eviction_victims(self, entry: MempoolEntry) -> list[MempoolEntry]:
        """Lowest-ranked entries to drop so ``entry`` fits; refuses if it ranks below them."""
        if entry.usage > self.max_bytes:
            raise TxValidationError("Mempool full")
        need = self._usage + entry.usage - self.max_bytes
        victims = []
        new_key = mempool_entry_sort_key(entry)
        for key in reversed(self._order):
            if need <= 0:
                break
            if key <= new_key:
                raise TxValidationError("Mempool full")
            victim = self._entries[key[2]]
            victims.append(victim)
            need -= victim.usage
        return victims

    def _insert(self, entry: MempoolEntry) -> None:
        self._entries[entry.txid] = entry
        bisect.insort(self._order, mempool_entry_sort_key(entry))
        for txin in entry.tx.vin:
            self._spent[txin.prevout] = entry.txid
        self._bytes += entry.size
        self._usage += entry.usage

    def _remove(self, txid: bytes) -> MempoolEntry | None:
        entry = self._entries.pop(txid, None)
        if entry is None:
            return None
        key = mempool_entry_sort_key(entry)
        del self._order[bisect.bisect_left(self._order, key)]
        for txin in entry.tx.vin:
            if self._spent.get(txin.prevout) == txid:
                del self._spent[txin.prevout]
        self._bytes -= entry.size
        self._usage -= entry.usage
        return entry

    # -- removal -----------------------------------------------------------------
    def remove_for_block(self, txs: Iterable[Transaction]) -> list[bytes]:
        """Drop confirmed transactions and every pooled transaction they conflict with.

        Returns the removed txids (confirmed ones first in block order, then
        conflicts as found).  C++: ``RemoveConfirmedTxs``.
        """
        removed = []
        with self.lock:
            for tx in txs:
                txid = tx.get_hash()
                if self._remove(txid) is not None:
                    removed.append(txid)
                if tx.is_coinbase():
                    continue
                for txin in tx.vin:
                    spender = self._spent.get(txin.prevout)
                    if spender is not None:
                        self._remove(spender)
                        removed.append(spender)
                        logger.info(f"Mempool: removed {spender[::-1].hex()[:16]}... "
                                    f"(conflicts with confirmed {txid[::-1].hex()[:16]}...)")
        return removed

    def expire(self, now: int | None = None) -> list[bytes]:
        """Drop entries that entered the pool more than ``expiry_seconds`` before ``now``."""
        now = int(_time.time()) if now is None else now
        with self.lock:
            old = [e.txid for e in self._entries.values() if e.time < now - self.expiry_seconds]
            for txid in old:
                self._remove(txid)
        if old:
            logger.info(f"Mempool: expired {len(old)} transaction(s)")
        return old

    def remove_unspendable(self, view, next_height: int) -> list[bytes]:
        """After a reorganisation: drop entries whose inputs are gone or now immature.

        ``view`` is the UTXO set at the new tip, ``next_height`` the height of
        the next block.  Signatures and fees do not depend on the chain, so
        only input existence and coinbase maturity are rechecked.
        """
        with self.lock:
            doomed = [entry.txid for entry in self._entries.values()
                      if not _inputs_spendable(entry.tx, view, next_height)]
            for txid in doomed:
                self._remove(txid)
        if doomed:
            logger.info(f"Mempool: removed {len(doomed)} transaction(s) whose inputs left the chain")
        return doomed

    def on_tip_changed(self, new_tip, connected, disconnected, coins=None) -> None:
        """Chain tip listener: drop what the new blocks confirmed or made unspendable.

        ``coins`` is the UTXO set at the new tip (needed only after a
        reorganisation: pooled inputs may have left the chain with the old branch).
        A default-mode block may carry any bytes (``chain D22``); one whose
        transactions cannot be parsed leaves the pool untouched.
        """
        if disconnected and coins is not None:
            self.remove_unspendable(coins, new_tip.height + 1)
        for block in connected:
            try:
                txs = block_transactions(block)
            except SerializationError as e:
                logger.debug(f"Mempool: block transactions not parseable, pool untouched: {e}")
                continue
            self.remove_for_block(txs)

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()
            self._order.clear()
            self._spent.clear()
            self._bytes = 0

    # -- queries -----------------------------------------------------------------
    def exists(self, txid: bytes) -> bool:
        with self.lock:
            return bytes(txid) in self._entries

    def get_tx(self, txid: bytes) -> Transaction | None:
        with self.lock:
            entry = self._entries.get(bytes(txid))
        return entry.tx if entry else None

    def get_entry(self, txid: bytes) -> MempoolEntry | None:
        """The pooled entry of ``txid``, or ``None`` (C++ ``CTxMemPool::GetTx``)."""
        with self.lock:
            return self._entries.get(bytes(txid))

    def find_conflict(self, tx: Transaction) -> str | None:
        """Why ``tx`` conflicts with a pooled transaction (an input already spent), or ``None``."""
        with self.lock:
            return self._conflict(tx)

    def spender_of(self, outpoint: OutPoint) -> bytes | None:
        with self.lock:
            return self._spent.get(outpoint)

    def get_ordered_entries(self) -> list[MempoolEntry]:
        with self.lock:
            return [self._entries[key[2]] for key in self._order]

    def get_ordered_txs(self) -> list[Transaction]:
        return [entry.tx for entry in self.get_ordered_entries()]

    def txids(self) -> list[bytes]:
        """Pooled txids in fee-rate order."""
        with self.lock:
            return [key[2] for key in self._order]

    def size(self) -> int:
        with self.lock:
            return len(self._entries)

    def total_bytes(self) -> int:
        """Bytes of all pooled transactions (C++ ``GetMempoolSize``)."""
        with self.lock:
            return self._bytes

    def usage(self) -> int:
        """Memory the pooled entries cost (what ``max_bytes`` bounds)."""
        with self.lock:
            return self._usage

    def get_stats(self) -> dict:
        """``GetStats``: count, bytes, lowest and highest fee rate (zeros when empty)."""
        with self.lock:
            if not self._order:
                return {"count": 0, "bytes": 0, "min_fee_rate": 0.0, "max_fee_rate": 0.0}
            return {"count": len(self._entries), "bytes": self._bytes,
                    "min_fee_rate": -self._order[-1][0], "max_fee_rate": -self._order[0][0]}


def _inputs_spendable(tx: Transaction, view, next_height: int) -> bool:
    for txin in tx.vin:
        coin = view.get(txin.prevout)
        if coin is None or (coin.is_coinbase and next_height - coin.height < COINBASE_MATURITY):
            return False
    return True


def accept_to_memory_pool(chain, coins, mempool: TxMemPool | None, tx: Transaction,
                          now: int | None = None) -> bytes:
    """Validate ``tx`` against ``coins`` (the UTXO set) and pool it in ``mempool``; returns its txid.

    The transaction is checked as if it were in the next block of ``chain``
    (height = tip + 1, so a coinbase from height h is accepted from tip h + 99
    on), plus the standardness policy.  Cheap checks run before the ML-DSA
    verification.  The chain lock is held so no block connects between
    validation and insertion.  Raises :class:`TxValidationError` with the
    reason.  A relay-only node (no UTXO set, no mempool) refuses every
    transaction with that reason.
    """
    if coins is None or mempool is None or chain is None:
        raise TxValidationError("Transaction validation unavailable: no UTXO set or mempool")
    now = int(_time.time()) if now is None else now
    txid = tx.get_hash()
    if tx.is_coinbase():
        raise TxValidationError("Coinbase transaction is only valid in a block")
    reason = standard_rejection_reason(tx)
    if reason:
        raise TxValidationError(reason)
    with chain.lock:
        if mempool.exists(txid):
            raise TxValidationError("Already in mempool")
        conflict = mempool.find_conflict(tx)
        if conflict is not None:
            raise TxValidationError(conflict)
        height = chain.height() + 1
        fee = check_transaction(tx, coins, height)
        mempool.add_tx(tx, fee, now, height)
    logger.info(f"Accepted transaction {txid[::-1].hex()} to mempool (fee {fee}, "
                f"{tx.get_serialized_size()} bytes)")
    return txid
