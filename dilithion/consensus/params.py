"""Consensus constants (``src/consensus/params.h`` and ``TxValidation::*`` in
``src/consensus/tx_validation.h``), in one place so every validator reads the
same numbers (``chain`` 2.2, 6.8).

Only the constants that a rule in this package reads are ported; the P2P/RPC
limits that the C++ header also declares live with their own modules.
"""
from __future__ import annotations

__all__ = [
    "COIN", "MAX_MONEY", "INITIAL_BLOCK_SUBSIDY", "SUBSIDY_HALVING_INTERVAL", "SUBSIDY_HALVING_BITS",
    "COINBASE_MATURITY", "MAX_BLOCK_SIZE", "MAX_BLOCK_TRANSACTIONS", "MAX_TRANSACTION_SIZE",
    "MAX_STANDARD_TX_SIZE", "MIN_STANDARD_OUTPUT_VALUE", "STANDARD_TX_VERSION",
    "COINBASE_SCRIPT_SIG_MIN", "COINBASE_SCRIPT_SIG_MAX", "MAX_TX_SIGOPS", "MAX_REORG_DEPTH",
    "DILITHIUM3_PUBKEY_SIZE", "DILITHIUM3_SIGNATURE_SIZE", "SPEND_SCRIPT_SIG_SIZE",
]

COIN = 100_000_000
#: ``TxValidation::MAX_MONEY``: every output, every sum and every fee lies in [0, MAX_MONEY].
MAX_MONEY = 21_000_000 * COIN

INITIAL_BLOCK_SUBSIDY = 50 * COIN
SUBSIDY_HALVING_INTERVAL = 210_000
SUBSIDY_HALVING_BITS = 64
#: A coinbase output created at height h is first spendable in a block at h + 100.
COINBASE_MATURITY = 100

#: ``CheckBlock`` limit on ``len(vtx)`` (chain D29: chain params' 4 MiB is not used).
MAX_BLOCK_SIZE = 1_000_000
#: ``DeserializeBlockTransactions``: 1..100,000 transactions per block.
MAX_BLOCK_TRANSACTIONS = 100_000

MAX_TRANSACTION_SIZE = 1_000_000
#: ``IsStandardTransaction`` policy (mempool only, never consensus).
MAX_STANDARD_TX_SIZE = 100_000
MIN_STANDARD_OUTPUT_VALUE = 1_000
STANDARD_TX_VERSION = 1

COINBASE_SCRIPT_SIG_MIN = 2
COINBASE_SCRIPT_SIG_MAX = 100
#: Declared by the C++ and never enforced (kept for reference).
MAX_TX_SIGOPS = 20_000
MAX_REORG_DEPTH = 100

DILITHIUM3_PUBKEY_SIZE = 1952
DILITHIUM3_SIGNATURE_SIZE = 3309
#: ``u16 sig_len | sig | u16 pk_len | pk``: the only scriptSig a spend may carry.
SPEND_SCRIPT_SIG_SIZE = 2 + DILITHIUM3_SIGNATURE_SIZE + 2 + DILITHIUM3_PUBKEY_SIZE
