"""The blocks database (``src/node/blockchain_storage.{h,cpp}``, ``chain`` 4.1-4.7, 4.9).

Keys and values are byte-for-byte the C++ ones, so this class opens a datadir
written by the C++ node and the C++ node could read ours:

* ``b`` + display hex of the block hash -> block record,
* ``i`` + display hex -> block-index record,
* ``bestblock`` -> 64 ASCII hex characters (no envelope).

Both records share one envelope: ``u32le(1) | u32le(len(DATA)) | DATA |
u32le(byte sum of DATA)``.

Two deliberate differences from the C++ writer (neither changes a stored byte):

* records that belong together (a block, its index record and the ``bestblock``
  that makes it the tip) go into ONE LevelDB write batch, and the batch that
  moves the tip is synced, so a crash at any instant leaves the previous
  consistent state on disk (``chain D19``: the C++ uses independent unsynced puts);
* every failure raises :class:`StorageError` with a message naming the key or
  the directory, instead of returning ``false``: a corrupt record is never
  silently skipped or overwritten, and a locked, missing or full datadir gives
  one clear sentence the node turns into exit status 1.
"""
from __future__ import annotations

import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import plyvel
from loguru import logger

from dilithion.consensus.storage import StorageError
from dilithion.primitives.block import HEADER_SIZE, Block, BlockHeader, Uint256

__all__ = ["StorageError", "BlockchainDB", "BlockBatch", "IndexRecord", "RECORD_VERSION",
           "BLOCK_PREFIX", "INDEX_PREFIX", "BEST_BLOCK_KEY", "block_key", "index_key",
           "encode_block_record", "decode_block_record", "encode_index_record",
           "decode_index_record"]

RECORD_VERSION = 1
BLOCK_PREFIX = b"b"
INDEX_PREFIX = b"i"
BEST_BLOCK_KEY = b"bestblock"
_KEY_LENGTH = 65                          # prefix + 64 hex characters
_ENVELOPE = struct.Struct("<II")          # version, length of DATA
_CHECKSUM = struct.Struct("<I")
_INDEX_FIELDS = struct.Struct("<iIIIIiI")  # height, status, time, bits, nonce, version, nTx
_HEX_DIGITS = frozenset(b"0123456789abcdef")


# --------------------------------------------------------------------------- keys

def block_key(block_hash: Uint256) -> bytes:
    return BLOCK_PREFIX + block_hash.get_hex().encode("ascii")


def index_key(block_hash: Uint256) -> bytes:
    return INDEX_PREFIX + block_hash.get_hex().encode("ascii")


def _parse_hex_hash(text: bytes, what: str) -> Uint256:
    """64 lowercase hex characters as the C++ ``GetHex`` writes them; anything else is corrupt."""
    if len(text) != 64 or not _HEX_DIGITS.issuperset(text):
        raise StorageError(f"{what}: expected 64 lowercase hex characters, got {text[:80]!r}")
    return Uint256.from_hex(text.decode("ascii"))


def _hash_from_key(key: bytes) -> Uint256:
    return _parse_hex_hash(key[1:], f"key {key!r}")


# --------------------------------------------------------------------------- envelope

def _checksum(data: bytes) -> int:
    """The C++ record checksum: the sum of all DATA bytes modulo 2^32 (``chain D18``)."""
    return sum(data) & 0xFFFFFFFF


def _wrap(data: bytes) -> bytes:
    return _ENVELOPE.pack(RECORD_VERSION, len(data)) + data + _CHECKSUM.pack(_checksum(data))


def _unwrap(value: bytes, key: bytes) -> bytes:
    """Check version, length and checksum; return DATA or raise naming the key."""
    if len(value) < _ENVELOPE.size + _CHECKSUM.size:
        raise StorageError(f"corrupt record {key!r}: {len(value)} bytes is too short")
    version, length = _ENVELOPE.unpack_from(value)
    if version != RECORD_VERSION:
        raise StorageError(f"corrupt record {key!r}: format version {version}, expected {RECORD_VERSION}")
    if len(value) != _ENVELOPE.size + length + _CHECKSUM.size:
        raise StorageError(f"corrupt record {key!r}: length field says {length} data bytes, "
                           f"record holds {len(value) - _ENVELOPE.size - _CHECKSUM.size}")
    data = value[_ENVELOPE.size:_ENVELOPE.size + length]
    (stored,) = _CHECKSUM.unpack_from(value, _ENVELOPE.size + length)
    if stored != _checksum(data):
        raise StorageError(f"corrupt record {key!r}: checksum {stored} != computed {_checksum(data)}")
    return data


# --------------------------------------------------------------------------- block record

def encode_block_record(block: Block) -> bytes:
    """``WriteBlock``'s value: header fields, ``u32le(len(vtx))``, ``vtx`` (verbatim, ``chain D3``)."""
    return _wrap(block.header.serialize() + struct.pack("<I", len(block.vtx)) + block.vtx)


def decode_block_record(value: bytes, key: bytes = b"?") -> Block:
    data = _unwrap(value, key)
    if len(data) < HEADER_SIZE + 4:
        raise StorageError(f"corrupt block record {key!r}: {len(data)} data bytes, need at least 84")
    header = BlockHeader.deserialize(data[:HEADER_SIZE])
    (vtx_len,) = struct.unpack_from("<I", data, HEADER_SIZE)
    if len(data) != HEADER_SIZE + 4 + vtx_len:
        raise StorageError(f"corrupt block record {key!r}: vtx length {vtx_len} does not match "
                           f"the {len(data) - HEADER_SIZE - 4} bytes present")
    return Block(header, data[HEADER_SIZE + 4:])


# --------------------------------------------------------------------------- index record

@dataclass(frozen=True)
class IndexRecord:
    """What one ``i`` record holds (``chain`` 4.4).

    It has no parent hash and no chain work (``chain D15``): the tree is rebuilt
    from the ``b`` records' ``hashPrevBlock`` by :meth:`ChainState.load`.
    """

    hash: Uint256
    height: int
    status: int
    time: int
    bits: int
    nonce: int
    version: int
    n_tx: int = 0


def encode_index_record(block_hash: Uint256, index) -> bytes:
    """``WriteBlockIndex``'s value from anything with height/status/time/bits/nonce/version."""
    data = _INDEX_FIELDS.pack(index.height, index.status, index.time, index.bits, index.nonce,
                              index.version, getattr(index, "n_tx", 0))
    return _wrap(data + block_hash.get_hex().encode("ascii"))


def decode_index_record(value: bytes, key: bytes = b"?") -> IndexRecord:
    data = _unwrap(value, key)
    if len(data) != _INDEX_FIELDS.size + 64:
        raise StorageError(f"corrupt index record {key!r}: {len(data)} data bytes, expected 92")
    fields = _INDEX_FIELDS.unpack_from(data)
    block_hash = _parse_hex_hash(data[_INDEX_FIELDS.size:], f"index record {key!r} hash")
    return IndexRecord(block_hash, *fields)


# --------------------------------------------------------------------------- database

def _error_text(error: Exception) -> str:
    """plyvel puts the LevelDB status text in ``args[0]`` as bytes."""
    arg = error.args[0] if error.args else None
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(error)


def _describe(error: Exception) -> str:
    text = _error_text(error)
    if "No space left" in text or "ENOSPC" in text:
        return f"disk full ({text})"
    return text


class BlockBatch:
    """Records collected for one atomic LevelDB write (see :meth:`BlockchainDB.batch`)."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes]] = []

    def write_block(self, block_hash: Uint256, block: Block) -> None:
        self.puts.append((block_key(block_hash), encode_block_record(block)))

    def write_block_index(self, block_hash: Uint256, index) -> None:
        self.puts.append((index_key(block_hash), encode_index_record(block_hash, index)))

    def write_best_block(self, block_hash: Uint256) -> None:
        self.puts.append((BEST_BLOCK_KEY, block_hash.get_hex().encode("ascii")))


class BlockchainDB:
    """``CBlockchainDB``: the LevelDB at ``<datadir>/blocks`` (``path`` is that directory).

    Ownership: shared by every thread of one node.  LevelDB itself is
    thread-safe; the only Python state, the "failed" flag set after a write
    error, is guarded by ``self._lock``.  After a failed write the database
    refuses further writes (LevelDB's log may hold a torn record), so the
    node must restart; what was committed before stays readable.
    """

    def __init__(self, path: str | Path, create_if_missing: bool = True) -> None:
        """Open the database at ``path``; raises ``StorageError`` (C++ ``Open``)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._failed: str | None = None
        if create_if_missing:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create block database directory {self.path}: "
                                   f"{_describe(e)}") from e
        try:
            self._db = plyvel.DB(str(self.path), create_if_missing=create_if_missing,
                                 compression="snappy")
        except plyvel.IOError as e:
            if "LOCK:" in _error_text(e):     # "IO error: lock <dir>/LOCK: ..." (held elsewhere)
                raise StorageError(f"block database {self.path} is locked by another process "
                                   f"(is another node running on this datadir?): {_error_text(e)}") from e
            raise StorageError(f"cannot open block database {self.path}: {_describe(e)}") from e
        except plyvel.Error as e:
            raise StorageError(f"cannot open block database {self.path}: {_describe(e)}") from e
        logger.debug("Opened block database {}", self.path)

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    @property
    def closed(self) -> bool:
        """True once closed (the inverse of C++ ``IsOpen``)."""
        return self._db.closed

    def __enter__(self) -> "BlockchainDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ raw access
    def _get(self, key: bytes) -> bytes | None:
        try:
            return self._db.get(key)
        except (plyvel.Error, RuntimeError) as e:
            raise StorageError(f"cannot read {key!r} from block database {self.path}: "
                               f"{_describe(e)}") from e

    def _commit(self, batch: BlockBatch, sync: bool) -> None:
        with self._lock:
            if self._failed:
                raise StorageError(f"block database {self.path} refuses writes after an earlier "
                                   f"write error ({self._failed}); restart the node")
            try:
                with self._db.write_batch(sync=sync, transaction=True) as wb:
                    for key, value in batch.puts:
                        wb.put(key, value)
            except (plyvel.Error, RuntimeError) as e:
                self._failed = _describe(e)
                keys = ", ".join(repr(k) for k, _ in batch.puts[:3])
                raise StorageError(f"cannot write to block database {self.path} "
                                   f"({keys}): {self._failed}") from e

    @contextmanager
    def batch(self, sync: bool = False) -> Iterator[BlockBatch]:
        """Collect writes and commit them atomically when the block ends without error.

        ``sync=True`` makes LevelDB fsync its log before returning: used for the
        batch that moves the tip, so an acknowledged tip survives a power cut.
        """
        batch = BlockBatch()
        yield batch
        if batch.puts:
            self._commit(batch, sync)

    # ------------------------------------------------------------------ block records
    def write_block(self, block_hash: Uint256, block: Block) -> None:
        with self.batch() as b:
            b.write_block(block_hash, block)

    def read_block(self, block_hash: Uint256) -> Block | None:
        key = block_key(block_hash)
        value = self._get(key)
        return None if value is None else decode_block_record(value, key)

    def block_exists(self, block_hash: Uint256) -> bool:
        return self._get(block_key(block_hash)) is not None

    def erase_block(self, block_hash: Uint256) -> None:
        with self._lock:
            try:
                self._db.delete(block_key(block_hash))
            except plyvel.Error as e:
                raise StorageError(f"cannot erase block {block_hash}: {_describe(e)}") from e

    # ------------------------------------------------------------------ index records
    def write_block_index(self, block_hash: Uint256, index) -> None:
        with self.batch() as b:
            b.write_block_index(block_hash, index)

    def read_block_index(self, block_hash: Uint256) -> IndexRecord | None:
        key = index_key(block_hash)
        value = self._get(key)
        if value is None:
            return None
        record = decode_index_record(value, key)
        if record.hash != block_hash:
            raise StorageError(f"corrupt index record {key!r}: it holds hash {record.hash}")
        return record

    # ------------------------------------------------------------------ best block
    def write_best_block(self, block_hash: Uint256, sync: bool = True) -> None:
        with self.batch(sync=sync) as b:
            b.write_best_block(block_hash)

    def read_best_block(self) -> Uint256 | None:
        """The ``bestblock`` hash, or ``None`` if absent or empty (as ``ReadBestBlock``)."""
        value = self._get(BEST_BLOCK_KEY)
        if not value:
            return None
        return _parse_hex_hash(value, "record 'bestblock'")

    # ------------------------------------------------------------------ scans (start-up)
    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        try:
            for key, value in self._db.iterator(prefix=prefix):
                if key == BEST_BLOCK_KEY:           # sorts among the 'be..' block keys (4.2)
                    continue
                if len(key) != _KEY_LENGTH:
                    raise StorageError(f"unexpected key {key!r} in block database {self.path}")
                yield key, value
        except plyvel.Error as e:
            raise StorageError(f"cannot scan block database {self.path}: {_describe(e)}") from e

    def iter_blocks(self, corrupt: list | None = None) -> Iterator[tuple[Uint256, Block]]:
        """Every stored block record as ``(hash from the key, Block)``, checksums verified.

        With a ``corrupt`` list, an undecodable record is appended to it as
        ``(hash, error)`` and skipped instead of raising."""
        for key, value in self._scan(BLOCK_PREFIX):
            try:
                block = decode_block_record(value, key)
            except StorageError as e:
                if corrupt is None:
                    raise
                corrupt.append((_hash_from_key(key), e))
                continue
            yield _hash_from_key(key), block

    def iter_block_indexes(self, corrupt: list | None = None) -> Iterator[IndexRecord]:
        """Every index record; raises if the hash inside differs from the key (or, with
        a ``corrupt`` list, records ``(hash, error)`` there and skips the record)."""
        for key, value in self._scan(INDEX_PREFIX):
            try:
                record = decode_index_record(value, key)
                if record.hash != _hash_from_key(key):
                    raise StorageError(f"corrupt index record {key!r}: it holds hash {record.hash}")
            except StorageError as e:
                if corrupt is None:
                    raise
                corrupt.append((_hash_from_key(key), e))
                continue
            yield record

    def erase_records(self, block_hash: Uint256) -> None:
        """Delete a block's ``b`` and ``i`` records (start-up repair of a corrupt side block)."""
        with self._lock:
            try:
                self._db.delete(block_key(block_hash))
                self._db.delete(index_key(block_hash), sync=True)
            except plyvel.Error as e:
                raise StorageError(f"cannot erase block {block_hash}: {_describe(e)}") from e
