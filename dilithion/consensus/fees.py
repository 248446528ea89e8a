"""Fee rules (``src/consensus/fees.{h,cpp}``, ``chain`` 6.5).

The C++ applies these inside ``CheckTransactionInputs``, so they are validity
rules for blocks as well as for the mempool, including the *maximum* fee
(``chain D34``).  The port keeps that: a transaction paying more than
``MAX_REASONABLE_FEE`` is invalid everywhere, as in the C++ library.
"""
from __future__ import annotations

__all__ = ["MIN_TX_FEE", "FEE_PER_BYTE", "MIN_RELAY_TX_FEE", "MAX_REASONABLE_FEE",
           "calculate_min_fee", "fee_rejection_reason", "check_fee", "calculate_fee_rate",
           "estimate_dilithium_tx_size"]

MIN_TX_FEE = 50_000
FEE_PER_BYTE = 25
MIN_RELAY_TX_FEE = 100_000
MAX_REASONABLE_FEE = 10_000_000


def calculate_min_fee(tx_size: int) -> int:
    """``CalculateMinFee``: 50,000 ions plus 25 per serialized byte."""
    return MIN_TX_FEE + tx_size * FEE_PER_BYTE


def fee_rejection_reason(tx_size: int, fee: int, check_relay: bool = True) -> str | None:
    """Why ``fee`` is unacceptable for a ``tx_size``-byte transaction, or ``None``.

    Same checks, order and wording as ``Consensus::CheckFee``.
    """
    min_fee = calculate_min_fee(tx_size)
    if fee < min_fee:
        return f"Fee too low: {fee} < {min_fee}"
    if check_relay and fee < MIN_RELAY_TX_FEE:
        return f"Below relay min: {fee}"
    if fee > MAX_REASONABLE_FEE:
        return f"Fee too high: {fee}"
    return None


def check_fee(tx, fee: int, check_relay: bool = True) -> bool:
    """``CheckFee(tx, fee, check_relay)``; use :func:`fee_rejection_reason` for the reason."""
    return fee_rejection_reason(tx.get_serialized_size(), fee, check_relay) is None


def calculate_fee_rate(fee: int, tx_size: int) -> float:
    """Ions per byte as a float (0 for an empty transaction), like ``CalculateFeeRate``."""
    return 0.0 if tx_size == 0 else fee / tx_size


def estimate_dilithium_tx_size(num_inputs: int, num_outputs: int, extra: int = 0) -> int:
    """The wallet's estimate (``chain D42``: assumes 3,782-byte inputs, real ones are 5,308)."""
    return 42 + num_inputs * 3782 + num_outputs * 40 + extra
