"""Proof of work (``src/consensus/pow.{h,cpp}`` and ``CBlockIndex::GetBlockProof``).

Every function is bug-compatible with the C++, because these numbers decide
which blocks are valid and which chain wins: the sign bit of a compact value is
ignored on decode and never normalised on encode (``chain D7``/``D8``), retarget
clamps compare compact integers (``D9``), and block work is the C++
approximation, not Bitcoin's (``D11``).  All 256-bit values are little-endian
integers (``chain`` 1.1).
"""
from __future__ import annotations

import threading

from dilithion.core.chainparams import MAX_DIFFICULTY_BITS, MIN_DIFFICULTY_BITS, ChainParams
from dilithion.core.lru import LRUDict
from dilithion.primitives.block import Uint256

__all__ = [
    "MAX_UINT256", "compact_to_big", "big_to_compact", "hash_less_than", "check_proof_of_work",
    "get_block_proof", "add_chain_work", "retarget", "calculate_next_work_required",
    "get_next_work_required", "get_median_time_past", "check_block_timestamp",
    "calculate_block_subsidy", "MAX_FUTURE_BLOCK_TIME", "MEDIAN_TIME_SPAN", "BLOCK_TARGET_SPACING",
    "chain_work_greater_than", "HeaderHashCache",
]

MAX_UINT256 = (1 << 256) - 1
#: ``pow.h`` constant; unused by the C++ (chain params' ``blockTime`` is what retargets use).
BLOCK_TARGET_SPACING = 240
MAX_FUTURE_BLOCK_TIME = 7200
MEDIAN_TIME_SPAN = 11


def _as_int(value: bytes | int) -> int:
    return value if isinstance(value, int) else int.from_bytes(value, "little")


def compact_to_big(bits: int) -> int:
    """``CompactToBig``: size 0 or > 32 gives 0; bit 23 is silently discarded."""
    size = bits >> 24
    word = bits & 0x007FFFFF
    if size < 1 or size > 32:
        return 0
    if size <= 3:
        return word >> (8 * (3 - size))
    return (word << (8 * (size - 3))) & MAX_UINT256


def big_to_compact(target: int) -> int:
    """``BigToCompact``: no sign-bit normalisation (``chain D8``)."""
    if target == 0:
        return 0
    size = (target.bit_length() + 7) // 8
    if size <= 3:
        compact = target << (8 * (3 - size))
    else:
        compact = target >> (8 * (size - 3))
    return compact | (size << 24)


def hash_less_than(block_hash: bytes | int, target: int) -> bool:
    """Numeric ``hash < target`` over the little-endian value (equal is not less).

    Also the miner's private ``CMiningController::CheckProofOfWork``.
    """
    return _as_int(block_hash) < target


def chain_work_greater_than(a: bytes | int, b: bytes | int) -> bool:
    """``ChainWorkGreaterThan``: numeric ``a > b``; ties keep the current tip."""
    return _as_int(a) > _as_int(b)


def check_proof_of_work(block_hash: bytes | int, bits: int,
                        params: ChainParams | None = None) -> bool:
    """``CheckProofOfWork``: ``nBits`` inside the allowed range and hash < target.

    The range is the C++ ``[0x1d00ffff, 0x1f0fffff]`` on mainnet and testnet;
    regtest widens the easy end (see :mod:`dilithion.core.chainparams`).
    Also ``CBlockValidator::CheckBlockHeader``.
    """
    lo = params.pow_min_bits if params else MIN_DIFFICULTY_BITS
    hi = params.pow_max_bits if params else MAX_DIFFICULTY_BITS
    if bits < lo or bits > hi:
        return False
    return hash_less_than(block_hash, compact_to_big(bits))


def get_block_proof(bits: int) -> int:
    """``GetBlockProof``: ``floor((2^64-1)/m) * 256^(32-size)``, truncated to 256 bits."""
    if compact_to_big(bits) == 0:
        return MAX_UINT256
    size = bits >> 24
    mantissa = bits & 0x00FFFFFF            # the sign bit IS included here
    if mantissa == 0:
        return MAX_UINT256
    work_mantissa = 0xFFFFFFFFFFFFFFFF // mantissa
    pos = 32 - size
    # The C++ writes the 8 bytes of work_mantissa at data[pos..pos+7]; bytes past 31 are lost.
    return (work_mantissa % (1 << (8 * size))) << (8 * pos)


def add_chain_work(parent_work: int, bits: int) -> int:
    """``BuildChainWork``: parent work plus block proof, saturating at 2^256-1."""
    return min(parent_work + get_block_proof(bits), MAX_UINT256)


def retarget(old_bits: int, actual_timespan: int, target_timespan: int,
             min_bits: int = MIN_DIFFICULTY_BITS, max_bits: int = MAX_DIFFICULTY_BITS) -> int:
    """The arithmetic shared by ``CalculateNextWorkRequired`` and ``GetNextWorkRequired``.

    The timespan is clamped to [span/4, 4*span]; the new target is the exact
    ``target * actual // span`` truncated to 256 bits (what the C++ 320-bit long
    multiplication and division, ``Multiply256x64`` and ``Divide320x64``, give);
    the result is clamped by comparing the *compact integers*, not the targets
    (``chain D9``).  ``min_bits``/``max_bits`` default to the C++ range; regtest
    passes its own wider easy end.
    """
    actual = max(target_timespan // 4, min(actual_timespan, target_timespan * 4))
    new_target = (compact_to_big(old_bits) * actual // target_timespan) & MAX_UINT256
    compact = big_to_compact(new_target)
    return min(max(compact, min_bits), max_bits)


def calculate_next_work_required(old_bits: int, actual_timespan: int,
                                 params: ChainParams) -> int:
    """``CalculateNextWorkRequired`` with the span and ``nBits`` range of ``params``."""
    return retarget(old_bits, actual_timespan, params.difficulty_adjustment * params.block_time,
                    params.pow_min_bits, params.pow_max_bits)


def get_next_work_required(last, params: ChainParams) -> int:
    """``GetNextWorkRequired`` over a block index with ``height``, ``bits``, ``time``, ``prev``.

    This is the *intended* rule (walking real parents).  The C++ node never
    reaches it with a linked index and so always mines the genesis bits
    (``chain D12``); callers choose which behaviour they want.
    """
    if last is None:
        return params.genesis_bits
    interval = params.difficulty_adjustment
    if (last.height + 1) % interval != 0:
        return last.bits or params.genesis_bits
    first = last
    for _ in range(interval - 1):
        first = first.prev
        if first is None:
            return last.bits
    actual = (last.time - first.time) & 0xFFFFFFFF      # unsigned 32-bit, as the C++
    return calculate_next_work_required(last.bits, actual, params)


def get_median_time_past(index) -> int:
    """``GetMedianTimePast``: median of the last (at most) 11 ``nTime`` values."""
    times = []
    while index is not None and len(times) < MEDIAN_TIME_SPAN:
        times.append(index.time)
        index = index.prev
    times.sort()
    return times[len(times) // 2]


def check_block_timestamp(time: int, prev, now: int) -> bool:
    """``CheckBlockTimestamp``: not more than 2 h ahead, and after the median time past."""
    if time > now + MAX_FUTURE_BLOCK_TIME:
        return False
    return prev is None or time > get_median_time_past(prev)


def calculate_block_subsidy(height: int, initial: int = 50 * 100_000_000,
                            halving_interval: int = 210_000) -> int:
    """``CalculateBlockSubsidy``: 50 DIL halved every 210,000 blocks (``chain`` 3.7, D13).

    The C++ computes the halving count in unsigned 32-bit arithmetic; from 33
    halvings on the shift already yields 0, so the ``>= 64`` cut-off never
    changes a result but is kept for fidelity.
    """
    if height < 0:
        raise ValueError(f"block height cannot be negative: {height}")
    halvings = (height // halving_interval) & 0xFFFFFFFF
    return 0 if halvings >= 64 else initial >> halvings


class HeaderHashCache:
    """RandomX hashes by exact header bytes, so a block seen twice is hashed once.

    Also when two threads ask at once (the proof-of-work prefetch and the
    message handler): the second waits for the first's result instead of
    hashing again.

    Ownership: any thread; its own small lock guards the map and the set of
    headers being hashed (hashing runs outside every lock because it takes
    milliseconds).
    """

    SIZE = 20_000     # 80-byte key + 32-byte value each

    def __init__(self, hasher, size: int = SIZE) -> None:
        self._hasher = hasher
        self._map: LRUDict[bytes, Uint256] = LRUDict(size)
        self._hashing: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        #: RandomX hashes computed here, not found in the map (diagnostics; under ``_lock``).
        self.computed = 0

    def get(self, header80: bytes) -> Uint256:
        while True:
            with self._lock:
                known = self._map.get(header80)
                if known is not None:
                    self._map.touch(header80)
                    return known
                busy = self._hashing.get(header80)
                if busy is None:
                    done = self._hashing[header80] = threading.Event()
                    break
            busy.wait()          # then read the result (or hash it ourselves if that failed)
        try:
            digest = Uint256(self._hasher.hash(header80))
            with self._lock:
                self._map.put(header80, digest)
                self.computed += 1
            return digest
        finally:
            with self._lock:
                del self._hashing[header80]
            done.set()
