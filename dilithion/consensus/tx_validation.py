"""Transaction validation: the port of ``CTransactionValidator`` (``chain`` 6.4-6.7).

The structure, limits, fee and maturity checks follow the C++ library in order
and wording.  The signature scheme does not, because the C++ one can never
accept a spend (``chain D36``): its message hashes the txid *including the
scriptSigs being verified*, and its key-hash check uses one SHA3 where every
wallet output is locked to two.  This module defines the intended scheme
(documented in ``docs/TRANSACTIONS.md``):

* signing message of input ``i``:
  ``SHA3-256( SHA3-256(serialize(tx with every scriptSig emptied)) || u32le(i) || u32le(nVersion) )``
  -- the C++ formula applied to the txid of the transaction without its
  signatures, which is exactly what the C++ wallet signs;
* key hash: a 25-byte ``76 A9 14 <h20> 88 AC`` script requires
  ``h20 == SHA3(SHA3(pk))[:20]`` (``hash_pub_key``, what the wallet pays to);
  the 37-byte ``76 A9 20 <h32> 88 AC`` form requires ``h32 == SHA3(SHA3(pk))``.

Every function is stateless; the UTXO view is passed in (anything with
``get(outpoint) -> Coin | None``), so the same checks serve the mempool
(view = the UTXO set) and block validation (view = the set plus the earlier
transactions of the block).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from dilithion.consensus import params
from dilithion.consensus.fees import calculate_min_fee, fee_rejection_reason
from dilithion.crypto import mldsa
from dilithion.crypto.sha3 import sha3_256, sha3_256d
from dilithion.net.serialize import SerializationError
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn

__all__ = [
    "TxValidationError", "Coin", "CoinsView", "parse_transaction", "check_transaction_basic", "check_transaction_inputs",
    "signature_hash", "signature_message", "sign_input", "verify_script", "check_transaction",
    "standard_rejection_reason", "is_standard_transaction", "get_transaction_weight",
    "get_minimum_fee", "money_range",
]


class TxValidationError(ValueError):
    """A transaction breaks a consensus or policy rule; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Coin:
    """An unspent output as validation sees it (``CUTXOEntry``)."""

    value: int
    script_pubkey: bytes
    height: int
    is_coinbase: bool


class CoinsView(Protocol):
    """Where inputs are looked up: the UTXO set, or a block-local overlay of it."""

    def get(self, outpoint: OutPoint) -> Coin | None: ...


def money_range(value: int) -> bool:
    """``MoneyRange``: ``0 <= value <= MAX_MONEY``."""
    return 0 <= value <= params.MAX_MONEY


def parse_transaction(raw: bytes) -> Transaction:
    """Decode one transaction exactly (no trailing bytes) for ``tx`` messages and RPC.

    Decoding failures become :class:`TxValidationError` so callers handle one
    error type for "cannot accept this transaction".
    """
    try:
        return Transaction.deserialize(raw)[0]
    except SerializationError as exc:
        raise TxValidationError(f"TX decode failed: {exc}") from None


# -- context-free checks (CheckTransactionBasic) --------------------------------

def check_transaction_basic(tx: Transaction) -> None:
    """Structure, value ranges, size and duplicate inputs (``chain`` 6.4, in order).

    C++: also ``CheckDuplicateInputs``, folded in.
    """
    if tx.is_null():
        raise TxValidationError("Transaction is null")
    if tx.is_coinbase():
        size = len(tx.vin[0].script_sig)
        if not params.COINBASE_SCRIPT_SIG_MIN <= size <= params.COINBASE_SCRIPT_SIG_MAX:
            raise TxValidationError("Coinbase scriptSig size must be between 2 and 100 bytes")
    else:
        if not tx.vin:
            raise TxValidationError("Transaction has no inputs")
        if any(txin.prevout.is_null() for txin in tx.vin):
            raise TxValidationError("Transaction input has null prevout (only coinbase allowed)")
    if not tx.vout:
        raise TxValidationError("Transaction has no outputs")
    total = 0
    for out in tx.vout:
        if out.value == 0:
            # chain D32: zero-value outputs are invalid, coinbase included.
            raise TxValidationError("Transaction output value must be positive")
        if not money_range(out.value):
            raise TxValidationError("Transaction output value out of range")
        total += out.value
        if not money_range(total):
            raise TxValidationError("Transaction output total out of range")
    size = tx.get_serialized_size()
    if size > params.MAX_TRANSACTION_SIZE:
        raise TxValidationError(f"Transaction size ({size} bytes) exceeds maximum "
                                f"({params.MAX_TRANSACTION_SIZE} bytes)")
    if len({txin.prevout for txin in tx.vin}) != len(tx.vin):
        raise TxValidationError("Transaction contains duplicate inputs")


# -- UTXO-dependent checks (CheckTransactionInputs) -----------------------------

def _input_coins(tx: Transaction, view: CoinsView) -> list[Coin]:
    coins = []
    for txin in tx.vin:
        coin = view.get(txin.prevout)
        if coin is None:
            raise TxValidationError(
                f"Input references non-existent UTXO (tx: {txin.prevout.hash[::-1].hex()}, "
                f"n: {txin.prevout.n})")
        coins.append(coin)
    return coins


def check_transaction_inputs(tx: Transaction, view: CoinsView, height: int) -> int:
    """Inputs exist, coinbase inputs are mature, amounts balance, the fee is acceptable.

    ``height`` is the height of the block the transaction would be in (the
    next block for the mempool).  Returns the fee (0 for a coinbase).  The fee
    rule includes the C++ maximum fee (``chain D34``).

    C++: also ``CalculateTotalInputValue``, ``CheckCoinbaseMaturity`` and
    ``CUTXOSet::IsCoinBaseMature``, folded in.
    """
    if tx.is_coinbase():
        return 0
    coins = _input_coins(tx, view)
    for coin in coins:
        # Signed arithmetic: the C++ wraps a coin height above ``height`` to a
        # huge confirmation count (chain D33); a consistent set never has one.
        confirmations = height - coin.height
        if coin.is_coinbase and confirmations < params.COINBASE_MATURITY:
            raise TxValidationError(
                f"Coinbase output not mature (height: {coin.height}, current: {height}, "
                f"confirmations: {confirmations}, required: {params.COINBASE_MATURITY})")
    total_in = 0
    for coin in coins:
        if not money_range(coin.value):
            raise TxValidationError("UTXO value out of range")
        total_in += coin.value
        if not money_range(total_in):
            raise TxValidationError("Total input value overflow")
    total_out = sum(out.value for out in tx.vout)
    if total_in < total_out:
        raise TxValidationError("Transaction inputs less than outputs (negative fee)")
    fee = total_in - total_out
    if not money_range(fee):
        raise TxValidationError("Transaction fee out of range")
    reason = fee_rejection_reason(tx.get_serialized_size(), fee, check_relay=True)
    if reason:
        raise TxValidationError("Fee requirement check failed: " + reason)
    return fee


# -- signatures ------------------------------------------------------------------

def signature_hash(tx: Transaction) -> bytes:
    """SHA3-256 of the transaction with every scriptSig emptied (the txid minus signatures)."""
    stripped = replace(tx, vin=[TxIn(txin.prevout, b"", txin.sequence) for txin in tx.vin])
    return stripped.get_hash()


def signature_message(tx: Transaction, input_index: int) -> bytes:
    """The 32-byte message input ``input_index`` signs (module docstring, ``chain D36``)."""
    return sha3_256(signature_hash(tx) + input_index.to_bytes(4, "little")
                    + (tx.version & 0xFFFFFFFF).to_bytes(4, "little"))


def sign_input(tx: Transaction, input_index: int, keypair: mldsa.KeyPair) -> bytes:
    """Sign input ``input_index`` in place (sets its scriptSig) and return the scriptSig.

    Inputs can be signed in any order: the message ignores every scriptSig.
    """
    signature = keypair.sign(signature_message(tx, input_index))
    script_sig = mldsa.create_script_sig(signature, keypair.public_key)
    tx.vin[input_index].script_sig = script_sig
    return script_sig


def _split_script_sig(script_sig: bytes) -> tuple[bytes, bytes]:
    """``u16 sig_len | sig | u16 pk_len | pk`` with the ML-DSA-65 sizes, exactly."""
    if len(script_sig) != params.SPEND_SCRIPT_SIG_SIZE:
        raise TxValidationError(f"scriptSig must be exactly {params.SPEND_SCRIPT_SIG_SIZE} bytes, "
                                f"got {len(script_sig)}")
    sig_len = int.from_bytes(script_sig[:2], "little")
    if sig_len != params.DILITHIUM3_SIGNATURE_SIZE:
        raise TxValidationError(f"Invalid Dilithium3 signature size: {sig_len} "
                                f"(expected {params.DILITHIUM3_SIGNATURE_SIZE})")
    signature = script_sig[2:2 + sig_len]
    pk_off = 2 + sig_len
    pk_len = int.from_bytes(script_sig[pk_off:pk_off + 2], "little")
    if pk_len != params.DILITHIUM3_PUBKEY_SIZE:
        raise TxValidationError(f"Invalid Dilithium3 public key size: {pk_len} "
                                f"(expected {params.DILITHIUM3_PUBKEY_SIZE})")
    return signature, script_sig[pk_off + 2:]


def verify_script(tx: Transaction, input_index: int, script_sig: bytes, script_pubkey: bytes) -> None:
    """``VerifyScript`` with the intended key hash and message (module docstring)."""
    key_hash = mldsa.extract_pub_key_hash(script_pubkey)
    if key_hash is None:
        raise TxValidationError("scriptPubKey is not valid P2PKH format")
    signature, public_key = _split_script_sig(script_sig)
    expected = sha3_256d(public_key)
    if key_hash != expected[:len(key_hash)]:
        raise TxValidationError("Public key hash does not match scriptPubKey")
    if not mldsa.verify(public_key, signature_message(tx, input_index), signature):
        raise TxValidationError("Dilithium signature verification failed")


def check_transaction(tx: Transaction, view: CoinsView, height: int,
                      verify_scripts: bool = True) -> int:
    """``CheckTransaction``: basic checks, inputs and fee, then every signature; returns the fee."""
    check_transaction_basic(tx)
    fee = check_transaction_inputs(tx, view, height)
    if verify_scripts and not tx.is_coinbase():
        for index, (txin, coin) in enumerate(zip(tx.vin, _input_coins(tx, view))):
            try:
                verify_script(tx, index, txin.script_sig, coin.script_pubkey)
            except TxValidationError as exc:
                raise TxValidationError(f"Script verification failed for input {index}: "
                                        f"{exc.reason}") from None
    return fee


# -- policy ----------------------------------------------------------------------

def standard_rejection_reason(tx: Transaction) -> str | None:
    """Why ``IsStandardTransaction`` refuses ``tx`` (mempool policy only), or ``None``.

    Only the 25-byte pay-to-key-hash output is standard (``chain D35``).
    """
    if tx.version != params.STANDARD_TX_VERSION:
        return f"non-standard: version {tx.version}"
    size = tx.get_serialized_size()
    if size > params.MAX_STANDARD_TX_SIZE:
        return f"non-standard: size {size} bytes exceeds {params.MAX_STANDARD_TX_SIZE}"
    for n, out in enumerate(tx.vout):
        if out.value < params.MIN_STANDARD_OUTPUT_VALUE:
            return f"non-standard: output {n} value {out.value} is dust (< {params.MIN_STANDARD_OUTPUT_VALUE})"
        key_hash = mldsa.extract_pub_key_hash(out.script_pubkey)
        if key_hash is None or len(key_hash) != 20:
            return f"non-standard: output {n} script is not 25-byte pay-to-key-hash"
    return None


def is_standard_transaction(tx: Transaction) -> bool:
    return standard_rejection_reason(tx) is None


def get_transaction_weight(tx: Transaction) -> int:
    """``GetTransactionWeight``: the serialized size."""
    return tx.get_serialized_size()


def get_minimum_fee(tx: Transaction) -> int:
    return calculate_min_fee(tx.get_serialized_size())
