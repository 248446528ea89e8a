"""Defective subjects for the in-process fuzz targets (tests only).

A target that cannot fail proves nothing: each entry of :data:`DEFECTS` is one
plausible bug in one target's subject and the property its target must report.
``tests/test_fuzz_targets.py`` runs the target on it; ``tests/defective_fuzz.py``
runs the real command line with the defect patched in, for the finding path.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Callable

from dilithion.consensus import params as consensus
from dilithion.consensus.pow import calculate_block_subsidy, compact_to_big, big_to_compact, MAX_UINT256
from dilithion.consensus.tx_validation import Coin, check_transaction_inputs
from dilithion.consensus.validation import compute_merkle_root
from dilithion.crypto.sha3 import sha3_256
from dilithion.mining.template import create_block_template
from dilithion.net.serialize import DataStream, ser_compact_size
from dilithion.node.utxo_set import UTXOSet
from dilithion.primitives.block import Block
from dilithion.primitives.transaction import Transaction
from dilithion.tools.fuzz import targets_codec as codec
from dilithion.tools.fuzz import targets_consensus as consensus_targets
from dilithion.tools.fuzz import targets_hash as hashing
from dilithion.tools.fuzz import targets_state as state
from dilithion.tools.fuzz.checks import ONLY_DOCUMENTED_ERRORS
from dilithion.tools.fuzz.targets_hash import BASE58_ALPHABET


@dataclass(frozen=True)
class Defect:
    target: str
    what: str
    run: Callable[[bytes], None]
    prop: str


def _unchecked_base58_decode(text: str) -> bytes:
    """Base58 decoding that drops the checksum without comparing it."""
    n = 0
    for c in text:
        n = n * 58 + BASE58_ALPHABET.index(c)          # ValueError for a bad character
    data = b"\0" * (len(text) - len(text.lstrip("1"))) + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")
    if len(data) < 4:
        raise ValueError("too short")
    return data[:-4]


def _long_block_encoding(block: Block) -> bytes:
    """The vtx length always written as 0xFD + 2 bytes, minimal or not."""
    return block.header.serialize() + b"\xfd" + len(block.vtx).to_bytes(2, "little") + block.vtx


def _compact_size_off_by_one(n: int) -> bytes:
    return bytes((n,)) if n <= 253 else ser_compact_size(n)


def _indexing_compact_size_decode(data: bytes) -> tuple[int, int]:
    """Reads the prefix by indexing, so an empty input raises IndexError."""
    if data[0] < 253:
        return data[0], 1
    s = DataStream(data)
    return s.read_compact_size(), s.tell()


def _retarget_without_clamp(bits: int, actual: int, span: int, low: int, high: int) -> int:
    target = (compact_to_big(bits) * max(actual, 1) // span) & MAX_UINT256
    return min(max(big_to_compact(target), low), high)


def _merkle_without_mutation_flag(txids: list[bytes]) -> tuple[bytes, bool]:
    return compute_merkle_root(txids)[0], False


def _merkle_pairing_odd_leaf_with_zero(txids: list[bytes]) -> tuple[bytes, bool]:
    if not txids:
        return bytes(32), False
    level, mutated = list(txids), False
    while len(level) > 1:
        mutated |= any(level[i] == level[i + 1] for i in range(0, len(level) - 1, 2))
        if len(level) % 2:
            level.append(bytes(32))
        level = [sha3_256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0], mutated


class _CoinsAsNonCoinbase:
    """A view that hides the coinbase flag, so maturity is never checked."""

    def __init__(self, view) -> None:
        self.view = view

    def get(self, outpoint):
        coin = self.view.get(outpoint)
        return Coin(coin.value, coin.script_pubkey, coin.height, False) if coin else None


class _UTXOSetKeepingSpentCoins(UTXOSet):
    """Never deletes a coin record: spent outputs stay, undone outputs stay."""

    @staticmethod
    def _put_coin(batch, outpoint, coin) -> None:
        if coin is not None:
            UTXOSet._put_coin(batch, outpoint, coin)


def _template_ignoring_fees(tip_hash, height, bits, pkh, params, transactions=(), now=None):
    return create_block_template(tip_hash, height, bits, pkh, params,
                                 [(tx, 0) for tx, _ in transactions], now=now)


def _sha3_224_padded(data: bytes) -> bytes:
    return hashlib.sha3_224(data).digest() + bytes(4)


DEFECTS: dict[str, Defect] = {d.what: d for d in (
    Defect("address", "base58-decode-skips-checksum",
           functools.partial(hashing.fuzz_address, subject=hashing.AddressSubject(decode=_unchecked_base58_decode)),
           "a one-character change is refused by the checksum"),
    Defect("block", "block-vtx-length-never-minimal",
           functools.partial(codec.fuzz_block, subject=codec.BlockSubject(encode=_long_block_encoding)),
           "block re-encoding is never longer than its source"),
    Defect("compactsize", "compactsize-253-in-one-byte",
           functools.partial(codec.fuzz_compactsize,
                             subject=codec.CompactSizeSubject(encode=_compact_size_off_by_one)),
           "encoded size follows the value's range"),
    Defect("compactsize", "compactsize-decode-indexes-empty-input",
           functools.partial(codec.fuzz_compactsize,
                             subject=codec.CompactSizeSubject(decode=_indexing_compact_size_decode)),
           ONLY_DOCUMENTED_ERRORS),
    Defect("difficulty", "retarget-without-timespan-clamp",
           functools.partial(consensus_targets.fuzz_difficulty, adjust=_retarget_without_clamp),
           "timespan is clamped to [span/4, 4*span]"),
    Defect("merkle", "merkle-without-duplicate-check",
           functools.partial(hashing.fuzz_merkle, root_of=_merkle_without_mutation_flag),
           "CVE-2012-2459: a repeated last leaf is flagged mutated"),
    Defect("merkle", "merkle-odd-leaf-paired-with-zero",
           functools.partial(hashing.fuzz_merkle, root_of=_merkle_pairing_odd_leaf_with_zero),
           "CVE-2012-2459: repeating an odd last leaf keeps the root"),
    Defect("network_message", "checksum-single-sha3",
           functools.partial(codec.fuzz_network_message,
                             subject=codec.FrameSubject(checksum=lambda payload: sha3_256(payload)[:4])),
           "checksum is the first 4 bytes of SHA3d"),
    Defect("sha3", "sha3-224-padded",
           functools.partial(hashing.fuzz_sha3, subject=hashing.Sha3Subject(sha3_256=_sha3_224_padded)),
           "SHA3-256 matches hashlib.sha3_256"),
    Defect("subsidy", "subsidy-one-halving-early",
           functools.partial(consensus_targets.fuzz_subsidy,
                             subsidy=lambda h: calculate_block_subsidy(h + consensus.SUBSIDY_HALVING_INTERVAL)),
           "the first era pays the initial subsidy"),
    Defect("template", "template-coinbase-ignores-fees",
           functools.partial(state.fuzz_template, build=_template_ignoring_fees),
           "coinbase pays subsidy plus fees"),
    Defect("transaction", "transaction-encoder-drops-last-byte",
           functools.partial(codec.fuzz_transaction,
                             subject=codec.TransactionSubject(encode=lambda tx: Transaction.serialize(tx)[:-1])),
           "re-encoding decodes to the same transaction"),
    Defect("tx_validation", "inputs-check-skips-coinbase-maturity",
           functools.partial(consensus_targets.fuzz_tx_validation, subject=consensus_targets.TxValidationSubject(
               check_inputs=lambda tx, view, height: check_transaction_inputs(tx, _CoinsAsNonCoinbase(view), height))),
           "accepted inputs spend only mature coinbase outputs"),
    Defect("utxo", "utxo-set-never-deletes-coins",
           functools.partial(state.fuzz_utxo, open_set=_UTXOSetKeepingSpentCoins),
           "disconnect restores the set byte for byte"),
)}
