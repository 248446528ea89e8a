"""The UTXO set in its own LevelDB (the datadir's ``chainstate/``).

The C++ ``CUTXOSet`` (``chain`` 4.8) is never opened by the C++ node, so no
on-disk format has to be shared with it; this module uses its own, documented
in ``docs/TRANSACTIONS.md``, which removes the C++ defects:

* every record kind has its own one-byte prefix (``c`` coin, ``U`` undo, ``s``
  statistics, ``B`` best block, ``V`` format version), so undo records can no
  longer be mistaken for coins (``chain D24``);
* a block's undo record holds the *before image* of every outpoint the block
  touched, so disconnecting restores the set byte for byte, including outputs
  created and spent inside the block and spends of outputs that did not exist
  (``chain D25``/``D26``);
* statistics are updated from the same before/after pairs and are exact
  (``chain D27``);
* a connect or disconnect is one atomic LevelDB write batch: coins, undo,
  statistics and best-block marker change together or not at all.

The best-block marker lets start-up compare the set with the block database.
"""
from __future__ import annotations

import contextlib
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import plyvel
from loguru import logger

from dilithion.consensus.tx_validation import Coin
from dilithion.consensus.validation import (BlockValidationError, CoinsViewCache,
                                            apply_transactions, block_transactions, check_block)
from dilithion.net.serialize import DataStream, SerializationError
from dilithion.consensus.storage import StorageError
from dilithion.primitives.block import Block, Uint256
from dilithion.primitives.transaction import OutPoint

__all__ = ["Coin", "BlockValidationError", "BestBlock", "UTXOStats", "UTXOSet", "UTXOStorageError", "UTXOStateError",
           "FORMAT_VERSION", "encode_coin", "decode_coin"]

FORMAT_VERSION = 1

_COIN = b"c"
_UNDO = b"U"
_STATS = b"s"
_BEST = b"B"
_VERSION = b"V"

_COIN_HEAD = struct.Struct("<IBQI")   # height, coinbase flag, value, script length
_BEST_VALUE = struct.Struct("<32sI")  # raw block hash, height
_STATS_VALUE = struct.Struct("<QQQ")  # coin count, total amount (low, high 64 bits)


class UTXOStorageError(StorageError):
    """The chainstate database cannot be opened, written, or holds data in another format."""


class UTXOStateError(RuntimeError):
    """A caller asked for a connect/disconnect that does not fit the current tip."""


@dataclass(frozen=True)
class BestBlock:
    hash: Uint256
    height: int


@dataclass(frozen=True)
class UTXOStats:
    count: int
    total_amount: int
    height: int | None
    best_hash: Uint256 | None


def encode_coin(coin: Coin) -> bytes:
    """The C++ UTXO value layout: ``u32 height | u8 coinbase | u64 value | u32 len | script``.

    C++: ``SerializeUTXOEntry``.
    """
    return _COIN_HEAD.pack(coin.height, int(coin.is_coinbase), coin.value,
                           len(coin.script_pubkey)) + coin.script_pubkey


def decode_coin(data: bytes) -> Coin:
    """The inverse of :func:`encode_coin` (C++ ``DeserializeUTXOEntry``)."""
    if len(data) < _COIN_HEAD.size:
        raise SerializationError(f"coin record of {len(data)} bytes is shorter than {_COIN_HEAD.size}")
    height, flag, value, length = _COIN_HEAD.unpack_from(data)
    if _COIN_HEAD.size + length != len(data):
        raise SerializationError(f"coin record script length {length} does not match "
                                 f"{len(data) - _COIN_HEAD.size} bytes present")
    return Coin(value, data[_COIN_HEAD.size:], height, flag != 0)


def _coin_key(outpoint: OutPoint) -> bytes:
    """The database key of a coin: prefix, txid, output index (C++ ``SerializeOutPoint``)."""
    return _COIN + outpoint.hash + outpoint.n.to_bytes(4, "little")


def _encode_undo(prev_best: BestBlock | None,
                 before: list[tuple[OutPoint, Coin | None]]) -> bytes:
    s = DataStream()
    s.write_uint8(FORMAT_VERSION)
    if prev_best is None:
        s.write_uint8(0)
    else:
        s.write_uint8(1).write(_BEST_VALUE.pack(prev_best.hash, prev_best.height))
    s.write_compact_size(len(before))
    for outpoint, coin in before:
        outpoint.serialize_to(s)
        if coin is None:
            s.write_uint8(0)
        else:
            s.write_uint8(1).write_var_bytes(encode_coin(coin))
    return s.get_data()


def _decode_undo(data: bytes) -> tuple[BestBlock | None, list[tuple[OutPoint, Coin | None]]]:
    s = DataStream(data)
    version = s.read_uint8("undo format version")
    if version != FORMAT_VERSION:
        raise SerializationError(f"undo record format {version} is not {FORMAT_VERSION}")
    prev_best = None
    if s.read_uint8("undo previous-best flag"):
        raw, height = _BEST_VALUE.unpack(s.read(_BEST_VALUE.size, "undo previous best"))
        prev_best = BestBlock(Uint256(raw), height)
    count = s.read_count(2**32 - 1, "undo entry count", 32 + 4 + 1)
    entries = []
    for _ in range(count):
        outpoint = OutPoint.deserialize_from(s)
        existed = s.read_uint8("undo coin flag")
        entries.append((outpoint, decode_coin(s.read_var_bytes("undo coin")) if existed else None))
    s.expect_end("undo record")
    return prev_best, entries


class UTXOSet:
    """All unspent outputs of the main chain, plus the undo data to step back.

    Ownership: created and closed by the node's start-up thread; mutated by the
    thread that holds the chain lock (``ChainState`` calls :meth:`connect_block`
    and :meth:`disconnect_block`); read by any thread (mempool acceptance, RPC,
    P2P).  ``self.lock`` (an ``RLock``) guards the database handle and every
    method, so a reader never sees half a block: each block is one atomic batch.
    """

    def __init__(self, path: str | Path, sync: bool = False) -> None:
        """Open (or create) the set at ``path`` (C++ ``CUTXOSet::Open``).

        Writes are not synced by default: ``ChainState`` syncs each new tip's block
        record before the set applies the block, so whatever of the set survives a
        power loss stands on stored blocks, and start-up reconciles it with the tip
        (``chain_loader._reconcile_utxo``).  ``sync=True`` fsyncs every block."""
        self.path = Path(path)
        self.lock = threading.RLock()
        self._sync = sync
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = plyvel.DB(str(self.path), create_if_missing=True, compression="snappy")
        except plyvel.IOError as exc:
            raise UTXOStorageError(f"cannot open chainstate database {self.path} "
                                   f"(locked by another node, or unreadable): {exc}") from None
        except plyvel.CorruptionError as exc:
            raise UTXOStorageError(f"chainstate database {self.path} is corrupt: {exc}") from None
        try:
            self._check_format()
        except UTXOStorageError:
            self._db.close()
            raise

    def _check_format(self) -> None:
        version = self._db.get(_VERSION)
        if version is None:
            if next(self._db.iterator(include_value=False), None) is not None:
                raise UTXOStorageError(f"{self.path} holds a database without a format marker "
                                       f"(not a Python chainstate; the C++ layout is not read)")
            with self._db.write_batch(transaction=True, sync=self._sync) as batch:
                batch.put(_VERSION, bytes((FORMAT_VERSION,)))
                batch.put(_STATS, _STATS_VALUE.pack(0, 0, 0))
        elif version != bytes((FORMAT_VERSION,)):
            raise UTXOStorageError(f"{self.path} has chainstate format {version.hex()}, "
                                   f"this node reads {FORMAT_VERSION}")

    # -- reads -----------------------------------------------------------------
    def get(self, outpoint: OutPoint) -> Coin | None:
        """The unspent coin at ``outpoint``, or ``None`` (C++ ``GetUTXO``)."""
        with self.lock:
            data = self._db.get(_coin_key(outpoint))
        if data is None:
            return None
        try:
            return decode_coin(data)
        except SerializationError as exc:
            # Our own database is damaged: a storage error, never the fault of the
            # peer whose transaction happened to look the coin up.
            raise UTXOStorageError(f"{self.path}: corrupt coin record for "
                                   f"{outpoint.hash[::-1].hex()}:{outpoint.n}: {exc}") from exc

    def have(self, outpoint: OutPoint) -> bool:
        """Whether ``outpoint`` is unspent (C++ ``HaveUTXO``)."""
        return self.get(outpoint) is not None

    def best_block(self) -> BestBlock | None:
        """The last connected block, to compare with the block database at start-up."""
        with self.lock:
            data = self._db.get(_BEST)
        if data is None:
            return None
        raw, height = _BEST_VALUE.unpack(data)
        return BestBlock(Uint256(raw), height)

    def _read_stats(self) -> tuple[int, int]:
        data = self._db.get(_STATS)
        if data is None:
            return 0, 0
        count, low, high = _STATS_VALUE.unpack(data)
        return count, low | high << 64

    def stats(self) -> UTXOStats:
        """Coin count, total amount and best block (C++ ``CUTXOSet::GetStats``)."""
        with self.lock:
            count, total = self._read_stats()
            best = self.best_block()
        return UTXOStats(count, total, best.height if best else None, best.hash if best else None)

    def has_undo(self, block_hash: bytes) -> bool:
        with self.lock:
            return self._db.get(_UNDO + bytes(block_hash)) is not None

    def coins(self) -> Iterator[tuple[OutPoint, Coin]]:
        """Every unspent output in outpoint order (a snapshot taken under the lock).

        C++: ``ForEach``, as an iterator.
        """
        with self.lock:
            items = list(self._db.iterator(prefix=_COIN))
        for key, value in items:
            yield OutPoint(key[1:33], int.from_bytes(key[33:37], "little")), decode_coin(value)

    def verify_consistency(self) -> bool:
        """Recount the coins and compare with the stored statistics."""
        with self.lock:
            count, total = self._read_stats()
            coins = list(self.coins())
        return count == len(coins) and total == sum(coin.value for _, coin in coins)

    # -- writes ----------------------------------------------------------------
    def connect_block(self, block: Block, height: int, block_hash: bytes, strict: bool = False,
                      verify_scripts: bool = True) -> None:
        """Apply ``block`` (at ``height``, hash ``block_hash``) and store its undo record.

        Default mode never fails for consensus reasons, like the C++ node that
        accepts any ``vtx``: an unparseable ``vtx`` changes no coins, a spend of
        a missing output is skipped.  The best-block marker still advances so
        the set follows the chain.  ``strict`` first runs :func:`check_block`
        and raises :class:`BlockValidationError` before anything is written.
        :class:`UTXOStateError` means the caller's order is wrong (the block
        does not extend the current best block, or is already connected).
        C++: ``ApplyBlock``, with ``AddUTXO`` and ``SpendUTXO`` folded in.
        """
        block_hash = Uint256(bytes(block_hash))
        with self.lock:
            prev_best = self.best_block()
            if prev_best is not None and block.header.hash_prev_block != prev_best.hash:
                raise UTXOStateError(
                    f"block {block_hash.short()} at height {height} does not extend the UTXO set's "
                    f"best block {prev_best.hash.short()} (height {prev_best.height})")
            if self._db.get(_UNDO + block_hash) is not None:
                raise UTXOStateError(f"block {block_hash.short()} is already connected")
            if strict:
                check_block(block, height, self, verify_scripts)
            try:
                txs = block_transactions(block)
            except SerializationError as exc:
                logger.warning(f"UTXO: block {block_hash.short()} at height {height} has an "
                               f"unparseable vtx ({exc}); no coins changed")
                txs = []
            overlay = CoinsViewCache(self)
            apply_transactions(overlay, txs, height)
            changes = list(overlay.changes())
            with self._writing(block_hash), self._db.write_batch(transaction=True, sync=self._sync) as batch:
                for outpoint, _, after in changes:
                    self._put_coin(batch, outpoint, after)
                batch.put(_UNDO + block_hash,
                          _encode_undo(prev_best, [(op, before) for op, before, _ in changes]))
                self._put_stats(batch, changes)
                batch.put(_BEST, _BEST_VALUE.pack(block_hash, height))

    def disconnect_block(self, block: Block, height: int, block_hash: bytes) -> None:
        """Undo the best block exactly, from its undo record alone (C++ ``UndoBlock``).

        ``block`` is checked against the record (its parent must be the best
        block the record restores); its ``vtx`` is not re-parsed, so a block
        whose ``vtx`` could not be applied is undone just as exactly.
        """
        block_hash = Uint256(bytes(block_hash))
        with self.lock:
            best = self.best_block()
            if best is None or best.hash != block_hash:
                raise UTXOStateError(
                    f"block {block_hash.short()} is not the UTXO set's best block "
                    f"({best.hash.short() if best else 'none'})")
            data = self._db.get(_UNDO + block_hash)
            if data is None:
                raise UTXOStateError(f"no undo record for block {block_hash.short()}")
            try:
                prev_best, before = _decode_undo(data)
            except SerializationError as exc:
                raise UTXOStorageError(f"undo record of {block_hash.short()} is corrupt: {exc}") from None
            if prev_best is not None and prev_best.hash != block.header.hash_prev_block:
                raise UTXOStateError(f"block {block_hash.short()} has parent "
                                     f"{block.header.hash_prev_block.short()}, its undo record "
                                     f"restores {prev_best.hash.short()}")
            changes = [(op, self.get(op), coin) for op, coin in before]
            with self._writing(block_hash), self._db.write_batch(transaction=True, sync=self._sync) as batch:
                for outpoint, _, restored in changes:
                    self._put_coin(batch, outpoint, restored)
                self._put_stats(batch, changes)
                batch.delete(_UNDO + block_hash)
                if prev_best is None:
                    batch.delete(_BEST)
                else:
                    batch.put(_BEST, _BEST_VALUE.pack(prev_best.hash, prev_best.height))

    @contextlib.contextmanager
    def _writing(self, block_hash: Uint256):
        """Turn LevelDB write failures (disk full, I/O) into one operator-facing error."""
        try:
            yield
        except plyvel.Error as exc:
            raise UTXOStorageError(f"cannot write block {block_hash.short()} to chainstate "
                                   f"{self.path}: {exc}") from exc

    @staticmethod
    def _put_coin(batch, outpoint: OutPoint, coin: Coin | None) -> None:
        if coin is None:
            batch.delete(_coin_key(outpoint))
        else:
            batch.put(_coin_key(outpoint), encode_coin(coin))

    def _put_stats(self, batch, changes: list[tuple[OutPoint, Coin | None, Coin | None]]) -> None:
        """Statistics after replacing each ``old`` coin by ``new`` (exact, ``chain D27``)."""
        count, total = self._read_stats()
        for _, old, new in changes:
            count += (new is not None) - (old is not None)
            total += (new.value if new else 0) - (old.value if old else 0)
        batch.put(_STATS, _STATS_VALUE.pack(count, total & (2**64 - 1), total >> 64))

    def close(self) -> None:
        with self.lock:
            if not self._db.closed:
                self._db.close()

    def __enter__(self) -> "UTXOSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
