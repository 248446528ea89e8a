"""Targets for the consensus arithmetic: subsidy, difficulty retarget, transaction checks.

Counterparts of the C++ ``fuzz_subsidy``, ``fuzz_difficulty`` and
``fuzz_tx_validation``.  The C++ subsidy and difficulty targets exercise
copies of the formulas inside the fuzz files; these exercise the node's own
functions, with the monetary bounds (never above the initial subsidy,
non-increasing, halving on schedule, total under 21 million DIL) and the
retarget bounds (inside the ``nBits`` range, timespan clamped to
``[span/4, 4*span]``, a longer timespan never harder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dilithion.consensus import params as consensus
from dilithion.consensus.pow import MAX_UINT256, calculate_block_subsidy, compact_to_big, retarget
from dilithion.consensus.tx_validation import (Coin, TxValidationError, check_transaction_basic,
                                               check_transaction_inputs, money_range)
from dilithion.consensus.validation import CoinsViewCache
from dilithion.core.chainparams import ChainParams
from dilithion.net.serialize import SerializationError
from dilithion.primitives.transaction import OutPoint, Transaction
from dilithion.tools.fuzz.checks import attempt
from dilithion.tools.fuzz.provider import DataProvider, PropertyViolation, require

__all__ = ["NETWORKS", "TxValidationSubject", "fuzz_subsidy", "fuzz_difficulty", "fuzz_tx_validation"]

INITIAL_SUBSIDY = consensus.INITIAL_BLOCK_SUBSIDY
HALVING_INTERVAL = consensus.SUBSIDY_HALVING_INTERVAL
_MAX_HEIGHT = 2**31 - 1
#: The networks a difficulty input picks from (one byte).
NETWORKS = (ChainParams.mainnet(), ChainParams.testnet(), ChainParams.regtest())


def fuzz_subsidy(data: bytes, subsidy: Callable[[int], int] = calculate_block_subsidy) -> None:
    """A fuzz height (a C++ ``int``) and a second height above it."""
    p = DataProvider(data)
    height, step = p.int_signed(4), p.uint(4)
    if height < 0:
        refused = attempt(lambda: subsidy(height), (ValueError,), "subsidy of a negative height")
        require(refused is None, "a negative height is refused with ValueError", str(height))
        return
    value = subsidy(height)
    require(value >= 0, "subsidy is never negative", f"{value} at {height}")
    require(value <= INITIAL_SUBSIDY, "subsidy never exceeds the initial subsidy", f"{value} at {height}")
    require(value == 0 or any(value == INITIAL_SUBSIDY >> k for k in range(64)),
            "subsidy is the initial subsidy halved a whole number of times", f"{value} at {height}")
    era = height // HALVING_INTERVAL
    if era == 0:
        require(value == INITIAL_SUBSIDY, "the first era pays the initial subsidy", f"{value} at {height}")
    else:
        boundary = era * HALVING_INTERVAL
        require(subsidy(boundary) == value, "subsidy is constant within an era", f"era {era}")
        require(value == subsidy(boundary - 1) // 2, "subsidy halves at each era boundary", f"era {era}")
    if era >= 64:
        require(value == 0, "no subsidy after 64 halvings", f"{value} at {height}")
    later = min(height + step, _MAX_HEIGHT)
    require(subsidy(later) <= value, "subsidy is non-increasing by height", f"{height} -> {later}")
    total = sum(HALVING_INTERVAL * subsidy(e * HALVING_INTERVAL) for e in range(65))
    require(total <= consensus.MAX_MONEY, "total supply stays under 21 million DIL", str(total))


RetargetFn = Callable[[int, int, int, int, int], int]


def fuzz_difficulty(data: bytes, adjust: RetargetFn = retarget) -> None:
    """Old ``nBits``, an actual timespan (a C++ ``int64_t``) and a second, longer one."""
    p = DataProvider(data)
    params = p.pick(NETWORKS)
    bits, actual, extra = p.uint(4), p.int_signed(8), p.uint(4)
    span = params.difficulty_adjustment * params.block_time
    low, high = params.pow_min_bits, params.pow_max_bits

    def new_bits(timespan: int) -> int:
        return adjust(bits, timespan, span, low, high)

    result = new_bits(actual)
    require(low <= result <= high, "new nBits stays inside the network's range",
            f"0x{result:08x} from 0x{bits:08x}, {params.get_network_name()}")
    require(new_bits(actual) == result, "retarget is deterministic")
    clamped = max(span // 4, min(actual, span * 4))
    require(new_bits(clamped) == result, "timespan is clamped to [span/4, 4*span]",
            f"{actual} s gives 0x{result:08x}, {clamped} s gives 0x{new_bits(clamped):08x}")
    if compact_to_big(bits) * 4 <= MAX_UINT256:
        # Past that the new target wraps at 256 bits, as the C++ 320-bit arithmetic
        # truncates; no in-range nBits gets there (the easiest target is under 2^254).
        require(new_bits(actual + extra) >= result, "a longer timespan never gives harder nBits",
                f"{actual} s -> 0x{result:08x}, {actual + extra} s -> 0x{new_bits(actual + extra):08x}")


class _NoCoins:
    """The empty coin view under each input's overlay (every coin comes from the input)."""

    def get(self, outpoint: OutPoint) -> Coin | None:
        return None


@dataclass(frozen=True)
class TxValidationSubject:
    """``CheckTransactionBasic`` and ``CheckTransactionInputs`` (which returns the fee)."""

    check_basic: Callable[[Transaction], None] = check_transaction_basic
    check_inputs: Callable[[Transaction, object, int], int] = check_transaction_inputs


def fuzz_tx_validation(data: bytes, subject: TxValidationSubject = TxValidationSubject()) -> None:
    """A transaction from ``data[1:]``, then coins for its inputs and a height from the rest.

    As the C++ target: the transaction is decoded first and the bytes after it
    describe the coins its inputs spend; the checks then run against a coin
    view holding exactly those coins.
    """
    if len(data) < 10:
        return
    decoded = attempt(lambda: Transaction.deserialize(data[1:], allow_trailing=True),
                      (SerializationError,), "Transaction.deserialize")
    if decoded is None:
        return
    tx, consumed = decoded
    attempt(lambda: subject.check_basic(tx), (TxValidationError,), "check_transaction_basic")
    p = DataProvider(data[1 + consumed:])
    view = CoinsViewCache(_NoCoins())
    for txin in tx.vin:
        if p.remaining() < 10:
            break
        value = p.uint(8) if data[0] & 1 else p.int_in_range(0, 100 * consensus.COIN, 8)
        view.add(txin.prevout, Coin(value, b"\x76\xa9\x14" + bytes(20) + b"\x88\xac",
                                    p.int_in_range(0, 1_000_000), p.boolean()))
    height = p.int_in_range(0, 1_000_000)
    fee = attempt(lambda: subject.check_inputs(tx, view, height), (TxValidationError,),
                  "check_transaction_inputs")
    if fee is None:
        return
    if tx.is_coinbase():
        require(fee == 0, "a coinbase pays no fee", str(fee))
        return
    coins = [view.get(txin.prevout) for txin in tx.vin]
    if any(coin is None for coin in coins):
        raise PropertyViolation("accepted inputs all exist", f"{coins.count(None)} missing")
    immature = [c for c in coins if c.is_coinbase and height - c.height < consensus.COINBASE_MATURITY]
    require(not immature, "accepted inputs spend only mature coinbase outputs",
            f"coin at height {immature[0].height if immature else 0}, spent at {height}")
    total_in = sum(c.value for c in coins)
    require(money_range(total_in), "accepted input total within the money range", str(total_in))
    require(fee == total_in - sum(out.value for out in tx.vout), "fee is inputs minus outputs", str(fee))
    require(money_range(fee), "fee within the money range", str(fee))
