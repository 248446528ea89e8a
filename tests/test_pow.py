"""Proof of work, chain work, retargeting, time rules and subsidy (``chain`` 3)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from dilithion.consensus.pow import (BLOCK_TARGET_SPACING, MAX_UINT256, add_chain_work,
                                     big_to_compact, chain_work_greater_than,
                                     calculate_block_subsidy, calculate_next_work_required,
                                     check_block_timestamp, check_proof_of_work, compact_to_big,
                                     get_block_proof, get_median_time_past, get_next_work_required,
                                     hash_less_than, retarget)
from dilithion.core.chainparams import ChainParams
from dilithion.mining.template import mine_block
from dilithion.node.genesis import create_genesis_block
from dilithion.primitives.block import Uint256

SPAN = 2016 * 240


# -- compact <-> target --------------------------------------------------------------
def test_testnet_target():
    target = compact_to_big(0x1F060000)
    assert Uint256.from_int(target).get_hex() == "0006" + "0" * 60


@pytest.mark.parametrize("bits, target", [
    (0x1D00FFFF, 0xFFFF << 208), (0x1E00FFFF, 0xFFFF << 216), (0x1F0FFFFF, 0x0FFFFF << 224),
    (0x03123456, 0x123456), (0x02123456, 0x1234), (0x01123456, 0x12),
    (0x20123456, 0x123456 << 232), (0x21010000, 0), (0x00123456, 0), (0xFF123456, 0),
    (0x1E800000, 0), (0x1E80FFFF, 0xFFFF << 216),     # sign bit silently dropped (D7)
])
def test_compact_to_big(bits, target):
    assert compact_to_big(bits) == target


@pytest.mark.parametrize("target, bits", [
    (0, 0), (0x12, 0x01120000), (0x1234, 0x02123400), (0x123456, 0x03123456),
    (0xFFFF << 208, 0x1CFFFF00), (0x0FFFFF << 224, 0x1F0FFFFF), (0x80, 0x01800000),
])
def test_big_to_compact(target, bits):
    assert big_to_compact(target) == bits


def test_big_to_compact_sign_bit_quirk_halves_the_target():
    """``chain D8``: no normalisation, so the round trip of 0x1e00ffff loses bit 23."""
    assert big_to_compact(compact_to_big(0x1E00FFFF)) == 0x1DFFFF00
    assert compact_to_big(0x1DFFFF00) == 0x7FFF00 << 208
    assert compact_to_big(0x1DFFFF00) < compact_to_big(0x1E00FFFF) // 2 + 1


# -- hash comparison and the PoW check -------------------------------------------------
def test_hash_less_than_is_numeric_little_endian_and_strict():
    target = compact_to_big(0x1F060000)
    just_below = Uint256.from_int(target - 1)
    assert hash_less_than(just_below, target) and hash_less_than(bytes(just_below), target)
    assert not hash_less_than(Uint256.from_int(target), target)
    assert hash_less_than(target - 1, target)


def test_check_proof_of_work_range_is_the_cpp_one(testnet):
    easiest_hash = Uint256.ZERO
    assert check_proof_of_work(easiest_hash, 0x1D00FFFF, testnet)
    assert check_proof_of_work(easiest_hash, 0x1F0FFFFF, testnet)
    assert not check_proof_of_work(easiest_hash, 0x1D00FFFE, testnet)
    assert not check_proof_of_work(easiest_hash, 0x1F100000, testnet)
    assert not check_proof_of_work(easiest_hash, 0x207FFFFF, testnet)
    assert not check_proof_of_work(easiest_hash, 0x207FFFFF, ChainParams.mainnet())
    assert not check_proof_of_work(easiest_hash, 0x207FFFFF)               # no params: C++ range
    assert not check_proof_of_work(easiest_hash, 0x1E800000, testnet)     # in range, zero target
    assert check_proof_of_work(easiest_hash, 0x207FFFFF, ChainParams.regtest())


def test_regtest_blocks_pass_regtest_but_not_testnet(hasher, regtest, testnet):
    genesis = create_genesis_block(regtest)
    block, block_hash = mine_block(hasher, genesis.get_hash(hasher), 1, bytes(20), regtest,
                                   now=regtest.genesis_time + 1)
    assert block.get_hash(hasher) == block_hash
    assert check_proof_of_work(block_hash, block.header.bits, regtest)
    assert not check_proof_of_work(block_hash, block.header.bits, testnet)


# -- work ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, work_hex", [
    (0x1F060000, "2aaaaaaaaaaa00"), (0x1E00FFFF, "10001000100010000"),
    (0x1D00FFFF, "1000100010001000000"), (0x1F0FFFFF, "10000100001000"),
])
def test_block_proof_examples(bits, work_hex):
    assert get_block_proof(bits) == int(work_hex, 16)


def test_block_proof_edge_cases():
    assert get_block_proof(0x00000000) == MAX_UINT256          # zero target = max work
    assert get_block_proof(0x21010000) == MAX_UINT256
    assert get_block_proof(0x1E800000) == MAX_UINT256          # mantissa only the sign bit
    # Sign bit set: the target ignores it but the work does not (D11).
    assert get_block_proof(0x1E80FFFF) < get_block_proof(0x1E00FFFF)
    # Size <= 3: bytes past data[31] are dropped, keeping only `size` bytes.
    assert get_block_proof(0x03000001) == ((2**64 - 1) % 2**24) << (8 * 29)
    assert get_block_proof(0x02000100) == ((2**64 - 1) // 0x100 % 2**16) << (8 * 30)
    assert get_block_proof(0x01000001) == MAX_UINT256          # the word shifts to zero


def test_chain_work_greater_than_is_strict_and_numeric():
    low = Uint256.from_int(5)
    high = Uint256(bytes(31) + b"\x01")          # memcmp-smaller, numerically larger
    assert chain_work_greater_than(high, low) and not chain_work_greater_than(low, high)
    assert not chain_work_greater_than(low, 5) and chain_work_greater_than(6, low)
    assert BLOCK_TARGET_SPACING == 240


def test_chain_work_accumulates_and_saturates():
    per_block = get_block_proof(0x1F060000)
    work = 0
    for height in range(7):
        work = add_chain_work(work, 0x1F060000)
        assert work == (height + 1) * per_block
    assert add_chain_work(MAX_UINT256 - 1, 0x1F060000) == MAX_UINT256


# -- retargeting -------------------------------------------------------------------------
RETARGET_TABLE = [
    (0x1E00FFFF, 483840, 0x1DFFFF00), (0x1E00FFFF, 241920, 0x1D7FFF80),
    (0x1E00FFFF, 967680, 0x1E01FFFE), (0x1E00FFFF, 60480, 0x1D3FFFC0),
    (0x1E00FFFF, 3870720, 0x1E03FFFC), (0x1F060000, 483840, 0x1F060000),
    (0x1F060000, 241920, 0x1F030000), (0x1F060000, 60480, 0x1F018000),
    (0x1F060000, 3870720, 0x1F0FFFFF), (0x1D00FFFF, 483840, 0x1D00FFFF),
    (0x1D00FFFF, 967680, 0x1D01FFFE),
]


@pytest.mark.parametrize("old, actual, expected", RETARGET_TABLE)
def test_retarget_table(old, actual, expected, testnet):
    assert retarget(old, actual, SPAN) == expected
    assert calculate_next_work_required(old, actual, testnet) == expected


def test_retarget_clamps_compare_compact_integers():
    """``chain D9``: 0x1f180000 is clamped to 0x1f0fffff (a *smaller* target)."""
    assert big_to_compact(compact_to_big(0x1F060000) * 4) == 0x1F180000
    assert retarget(0x1F060000, SPAN * 4, SPAN) == 0x1F0FFFFF


def test_regtest_retarget_uses_its_own_easy_end(regtest):
    assert calculate_next_work_required(0x207FFFFF, SPAN, regtest) == 0x207FFFFF
    assert retarget(0x207FFFFF, SPAN, SPAN) == 0x1F0FFFFF          # C++ range without params


@dataclass
class FakeIndex:
    height: int
    bits: int
    time: int
    prev: "FakeIndex | None" = None


def _chain(length: int, bits: int, spacing: int, start_time: int = 1_000_000) -> FakeIndex:
    tip = None
    for h in range(length):
        tip = FakeIndex(h, bits, start_time + h * spacing, tip)
    return tip


def test_get_next_work_required(testnet):
    assert get_next_work_required(None, testnet) == testnet.genesis_bits
    mid = _chain(10, 0x1F050000, 240)
    assert get_next_work_required(mid, testnet) == 0x1F050000
    assert get_next_work_required(FakeIndex(5, 0, 0), testnet) == testnet.genesis_bits
    # First retarget at height 2015 -> 2016: 2015 spacings of 120 s = faster than planned.
    fast = _chain(2016, 0x1F060000, 120)
    expected = retarget(0x1F060000, 2015 * 120, SPAN)
    assert get_next_work_required(fast, testnet) == expected
    assert compact_to_big(expected) < compact_to_big(0x1F060000)
    # A walk that runs out of parents returns the tip's own bits.
    orphan_tip = FakeIndex(2015, 0x1F040000, 5)
    assert get_next_work_required(orphan_tip, testnet) == 0x1F040000


def test_next_work_time_difference_is_unsigned_32_bit(testnet):
    tip = _chain(2016, 0x1F060000, 0)
    tip.time = 0                       # earlier than the first block: wraps, then clamps to 4x
    first = tip
    for _ in range(2015):
        first = first.prev
    first.time = 10
    assert get_next_work_required(tip, testnet) == retarget(0x1F060000, SPAN * 4, SPAN)


# -- time rules -----------------------------------------------------------------------------
def test_median_time_past_uses_at_most_eleven_blocks():
    tip = _chain(20, 1, 10, start_time=0)        # times 0, 10, ..., 190
    assert get_median_time_past(tip) == 140      # median of 90..190
    assert get_median_time_past(FakeIndex(0, 1, 77)) == 77
    short = _chain(4, 1, 10, start_time=0)       # 0,10,20,30 -> element 2
    assert get_median_time_past(short) == 20


def test_check_block_timestamp():
    prev = _chain(11, 1, 10, start_time=0)       # MTP = 50
    now = 1000
    assert check_block_timestamp(51, prev, now)
    assert not check_block_timestamp(50, prev, now)
    assert check_block_timestamp(now + 7200, None, now)
    assert not check_block_timestamp(now + 7201, None, now)


# -- subsidy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("height, subsidy", [
    (0, 5_000_000_000), (1, 5_000_000_000), (209_999, 5_000_000_000), (210_000, 2_500_000_000),
    (419_999, 2_500_000_000), (420_000, 1_250_000_000), (32 * 210_000, 1),
    (33 * 210_000 - 1, 1), (33 * 210_000, 0), (64 * 210_000, 0), (10**9, 0),
])
def test_subsidy_and_halving(height, subsidy):
    assert calculate_block_subsidy(height) == subsidy


def test_total_issuance_is_about_21_million():
    total = sum(calculate_block_subsidy(h * 210_000) * 210_000 for h in range(40))
    assert 20_999_999 * 100_000_000 < total <= 21_000_000 * 100_000_000


def test_negative_height_is_a_programming_error():
    with pytest.raises(ValueError):
        calculate_block_subsidy(-1)
