"""Transaction validation against a real UTXO set (tmp LevelDB) with real ML-DSA-65 keys."""
from __future__ import annotations

import pytest

from coins_helpers import FEE, RegtestChain, p2pkh, spend
from dilithion.consensus import fees, params
from dilithion.consensus.tx_validation import (TxValidationError, check_transaction,
                                               check_transaction_basic, check_transaction_inputs,
                                               get_minimum_fee, is_standard_transaction,
                                               parse_transaction, sign_input, signature_hash,
                                               signature_message, standard_rejection_reason,
                                               verify_script)
from dilithion.crypto.mldsa import KeyPair, create_script_pub_key
from dilithion.crypto.sha3 import sha3_256, sha3_256d
from dilithion.node.utxo_set import UTXOSet
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut


@pytest.fixture(scope="module")
def miner() -> KeyPair:
    return KeyPair.from_seed(bytes(range(32)))


@pytest.fixture(scope="module")
def other() -> KeyPair:
    return KeyPair.from_seed(bytes(range(1, 33)))


@pytest.fixture
def chain(tmp_path, miner):
    """A regtest chain of height 101: the coinbase of height 1 is mature for block 101+."""
    with UTXOSet(tmp_path / "chainstate") as utxo:
        c = RegtestChain(utxo, miner)
        c.grow(101)
        yield c


def pay(chain, keypair, value_out=None, to=None, fee=FEE, height=1):
    outpoint, coin = chain.coinbase_coin(height)
    value = coin.value - fee if value_out is None else value_out
    return spend(keypair, [(outpoint, coin)], [(value, to or p2pkh(keypair))])


def reason_of(excinfo) -> str:
    return excinfo.value.reason


# -- the signing message ---------------------------------------------------------

def test_signature_message_is_the_cpp_formula_over_the_txid_without_script_sigs(chain, miner):
    tx = pay(chain, miner)
    stripped = Transaction(tx.version, [TxIn(i.prevout, b"", i.sequence) for i in tx.vin],
                           tx.vout, tx.lock_time)
    assert signature_hash(tx) == sha3_256(stripped.serialize()) == stripped.get_hash()
    assert signature_message(tx, 0) == sha3_256(stripped.get_hash() + (0).to_bytes(4, "little")
                                                + (1).to_bytes(4, "little"))
    before = signature_message(tx, 0)
    tx.vin[0].script_sig = b"anything"
    assert signature_message(tx, 0) == before          # independent of every scriptSig
    assert signature_message(tx, 1) != before          # bound to the input index
    tx.version = 2
    assert signature_message(tx, 0) != before          # and to nVersion
    tx.vout[0].value -= 1
    assert signature_message(tx, 0) != before


def test_valid_spend_returns_fee(chain, miner):
    tx = pay(chain, miner)
    assert len(tx.vin[0].script_sig) == params.SPEND_SCRIPT_SIG_SIZE == 5265
    assert check_transaction(tx, chain.utxo, chain.height + 1) == FEE


def test_two_inputs_signed_in_any_order(chain, miner):
    (op1, c1), (op2, c2) = chain.coinbase_coin(1), chain.coinbase_coin(2)
    chain.add_block()  # height 102: coinbase 2 matures
    tx = Transaction(1, [TxIn(op1), TxIn(op2)], [TxOut(c1.value + c2.value - FEE, p2pkh(miner))])
    sign_input(tx, 1, miner)
    sign_input(tx, 0, miner)
    assert check_transaction(tx, chain.utxo, chain.height + 1) == FEE
    tx.vin[0].script_sig, tx.vin[1].script_sig = tx.vin[1].script_sig, tx.vin[0].script_sig
    with pytest.raises(TxValidationError, match="input 0: Dilithium signature verification failed"):
        check_transaction(tx, chain.utxo, chain.height + 1)


def test_bad_signature_rejected(chain, miner):
    tx = pay(chain, miner)
    sig = bytearray(tx.vin[0].script_sig)
    sig[100] ^= 1
    tx.vin[0].script_sig = bytes(sig)
    with pytest.raises(TxValidationError, match="Dilithium signature verification failed"):
        check_transaction(tx, chain.utxo, chain.height + 1)


def test_signature_over_changed_transaction_rejected(chain, miner):
    tx = pay(chain, miner)
    tx.vout[0].value -= 1  # fee grows by one ion after signing
    with pytest.raises(TxValidationError, match="signature verification failed"):
        check_transaction(tx, chain.utxo, chain.height + 1)


def test_wrong_key_rejected(chain, miner, other):
    tx = pay(chain, other)  # the coin is locked to the miner's key hash
    with pytest.raises(TxValidationError, match="Public key hash does not match scriptPubKey"):
        check_transaction(tx, chain.utxo, chain.height + 1)


def test_key_hash_is_double_sha3_not_the_cpp_single_sha3(miner):
    """chain D36: the C++ verifier compares SHA3(pk)[:20]; the wallet pays SHA3(SHA3(pk))[:20]."""
    tx = Transaction(1, [TxIn(OutPoint(b"\1" * 32, 0))], [TxOut(1000, p2pkh(miner))])
    sign_input(tx, 0, miner)
    verify_script(tx, 0, tx.vin[0].script_sig, p2pkh(miner))
    verify_script(tx, 0, tx.vin[0].script_sig,
                  create_script_pub_key(sha3_256d(miner.public_key)))  # 37-byte form
    for script in (create_script_pub_key(sha3_256(miner.public_key)[:20]),
                   create_script_pub_key(sha3_256(miner.public_key))):
        with pytest.raises(TxValidationError, match="Public key hash does not match"):
            verify_script(tx, 0, tx.vin[0].script_sig, script)


@pytest.mark.parametrize("script_sig, message", [
    (b"", "scriptSig must be exactly 5265 bytes, got 0"),
    (b"\0" * 5266, "scriptSig must be exactly 5265 bytes, got 5266"),
    ((3308).to_bytes(2, "little") + b"\0" * 5263, "Invalid Dilithium3 signature size: 3308"),
    ((3309).to_bytes(2, "little") + b"\0" * 3309 + (1951).to_bytes(2, "little") + b"\0" * 1952,
     "Invalid Dilithium3 public key size: 1951"),
])
def test_malformed_script_sig_rejected(miner, script_sig, message):
    tx = Transaction(1, [TxIn(OutPoint(b"\1" * 32, 0), script_sig)], [TxOut(1000, p2pkh(miner))])
    with pytest.raises(TxValidationError, match=message):
        verify_script(tx, 0, script_sig, p2pkh(miner))


@pytest.mark.parametrize("script_pubkey", [
    b"", b"\x51", b"\x76\xa9\x14" + b"\0" * 20 + b"\x88",          # truncated
    b"\x76\xa9\x15" + b"\0" * 21 + b"\x88\xac",                     # 21-byte hash
    b"\x76\xa8\x14" + b"\0" * 20 + b"\x88\xac",                     # wrong opcode
])
def test_spending_non_p2pkh_script_rejected(miner, script_pubkey):
    tx = Transaction(1, [TxIn(OutPoint(b"\1" * 32, 0))], [TxOut(1000, p2pkh(miner))])
    sign_input(tx, 0, miner)
    with pytest.raises(TxValidationError, match="scriptPubKey is not valid P2PKH format"):
        verify_script(tx, 0, tx.vin[0].script_sig, script_pubkey)


# -- inputs, maturity, amounts, fees ----------------------------------------------

def test_missing_input_rejected(chain, miner):
    tx = Transaction(1, [TxIn(OutPoint(b"\7" * 32, 3))], [TxOut(1000, p2pkh(miner))])
    sign_input(tx, 0, miner)
    with pytest.raises(TxValidationError, match="non-existent UTXO .*n: 3"):
        check_transaction(tx, chain.utxo, chain.height + 1)


def test_coinbase_maturity_boundary(chain, miner):
    """A coinbase from height h is spendable in the block at h + 100, not h + 99."""
    tx = pay(chain, miner, height=2)
    with pytest.raises(TxValidationError, match=r"not mature \(height: 2, current: 101, confirmations: 99"):
        check_transaction(tx, chain.utxo, 101)
    assert check_transaction(tx, chain.utxo, 102) == FEE


@pytest.mark.parametrize("fee, message", [
    (0, "Fee too low"),
    (get_minimum_fee(Transaction(1, [TxIn(OutPoint(b"\1" * 32, 0), b"\0" * 5265)],
                                 [TxOut(1, b"\0" * 25)])) - 1, "Fee too low"),
    (fees.MAX_REASONABLE_FEE + 1, "Fee too high: 10000001"),
])
def test_fee_rules_are_validity_rules(chain, miner, fee, message):
    tx = pay(chain, miner, fee=fee)
    with pytest.raises(TxValidationError, match="Fee requirement check failed: " + message):
        check_transaction_inputs(tx, chain.utxo, chain.height + 1)


def test_fee_bounds_inclusive(chain, miner):
    for fee in (get_minimum_fee(pay(chain, miner)), fees.MAX_REASONABLE_FEE):
        assert check_transaction(pay(chain, miner, fee=fee), chain.utxo, chain.height + 1) == fee


def test_outputs_above_inputs_rejected(chain, miner):
    outpoint, coin = chain.coinbase_coin(1)
    tx = spend(miner, [(outpoint, coin)], [(coin.value + 1, p2pkh(miner))])
    with pytest.raises(TxValidationError, match="negative fee"):
        check_transaction(tx, chain.utxo, chain.height + 1)


def test_fee_helpers():
    assert fees.calculate_min_fee(1000) == 75_000
    assert fees.fee_rejection_reason(1000, 74_999) == "Fee too low: 74999 < 75000"
    assert fees.fee_rejection_reason(1000, 80_000) == "Below relay min: 80000"
    assert fees.fee_rejection_reason(1000, 80_000, check_relay=False) is None
    assert fees.fee_rejection_reason(1000, 100_000) is None
    assert fees.fee_rejection_reason(1000, 10_000_001) == "Fee too high: 10000001"
    # A transaction above 398,000 bytes can never pay an acceptable fee (chain 6.5).
    assert fees.fee_rejection_reason(398_001, fees.MAX_REASONABLE_FEE) is not None
    assert fees.fee_rejection_reason(398_000, fees.MAX_REASONABLE_FEE) is None
    assert fees.calculate_fee_rate(500, 0) == 0.0 and fees.calculate_fee_rate(500, 100) == 5.0
    assert fees.estimate_dilithium_tx_size(1, 2) == 42 + 3782 + 80


# -- structure (CheckTransactionBasic) --------------------------------------------

def _tx(vin=None, vout=None, version=1):
    return Transaction(version, [TxIn(OutPoint(b"\1" * 32, 0))] if vin is None else vin,
                       [TxOut(1000, b"\x76\xa9\x14" + b"\0" * 20 + b"\x88\xac")] if vout is None else vout)


@pytest.mark.parametrize("tx, message", [
    (Transaction(), "Transaction is null"),
    (_tx(vin=[]), "Transaction has no inputs"),
    (_tx(vout=[]), "Transaction has no outputs"),
    (_tx(vin=[TxIn(OutPoint(b"\1" * 32, 0)), TxIn(OutPoint())]), "null prevout"),
    (_tx(vin=[TxIn(OutPoint(b"\1" * 32, 0)), TxIn(OutPoint(b"\1" * 32, 0))]), "duplicate inputs"),
    (_tx(vout=[TxOut(0, b"")]), "output value must be positive"),
    (_tx(vout=[TxOut(params.MAX_MONEY + 1, b"")]), "output value out of range"),
    (_tx(vout=[TxOut(2**64 - 1, b"")]), "output value out of range"),
    (_tx(vout=[TxOut(params.MAX_MONEY, b""), TxOut(1, b"")]), "output total out of range"),
    (_tx(vin=[TxIn(OutPoint(), b"x")]), "Coinbase scriptSig size must be between 2 and 100"),
    (_tx(vin=[TxIn(OutPoint(), b"x" * 101)]), "Coinbase scriptSig size must be between 2 and 100"),
    (_tx(vin=[TxIn(OutPoint(bytes([i]) * 32, 0), b"s" * 9_999) for i in range(1, 102)]),
     r"Transaction size \(1014286 bytes\) exceeds maximum"),
])
def test_basic_structure_rejected(tx, message):
    with pytest.raises(TxValidationError, match=message):
        check_transaction_basic(tx)


def test_basic_structure_accepts_limits():
    check_transaction_basic(_tx(vout=[TxOut(params.MAX_MONEY, b"")]))
    check_transaction_basic(_tx(vin=[TxIn(OutPoint(), b"xy")]))
    check_transaction_basic(_tx(vin=[TxIn(OutPoint(), b"x" * 100)]))


def test_coinbase_outside_block_needs_no_inputs_and_pays_no_fee(chain):
    coinbase = parse_transaction(chain.blocks[5][0].vtx)
    assert check_transaction(coinbase, chain.utxo, chain.height + 1) == 0


@pytest.mark.parametrize("raw, message", [
    (b"", "TX decode failed"),
    (bytes.fromhex("01000000"), "TX decode failed"),
    (_tx().serialize()[:-1], "TX decode failed"),
    (_tx().serialize() + b"\0", "TX decode failed: 1 unexpected trailing bytes"),
    (bytes.fromhex("01000000" "fe40420f00"), "TX decode failed: input count 1000000 .* exceeds limit"),
])
def test_malformed_transaction_bytes(raw, message):
    with pytest.raises(TxValidationError, match=message):
        parse_transaction(raw)


# -- policy -----------------------------------------------------------------------

def test_standardness(miner):
    good = _tx(vout=[TxOut(1000, p2pkh(miner))])
    assert is_standard_transaction(good)
    assert "version 2" in standard_rejection_reason(_tx(version=2))
    assert "dust" in standard_rejection_reason(_tx(vout=[TxOut(999, p2pkh(miner))]))
    wide = create_script_pub_key(sha3_256d(miner.public_key))  # valid to spend, not standard
    assert "not 25-byte" in standard_rejection_reason(_tx(vout=[TxOut(1000, wide)]))
    assert "not 25-byte" in standard_rejection_reason(_tx(vout=[TxOut(1000, b"\x6a")]))
    big = _tx(vin=[TxIn(OutPoint(bytes([i]) * 32, 0), b"s" * 9_000) for i in range(1, 13)])
    assert "size" in standard_rejection_reason(big)

