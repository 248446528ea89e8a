"""SHA3, RandomX, ML-DSA-65, key hashes, addresses and scripts (``chain`` 6.9, ``cli`` 4.1-4.3)."""
from __future__ import annotations

import hashlib
import threading

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey

from dilithion.crypto.mldsa import (ADDRESS_VERSION, PUBLIC_KEY_SIZE, SEED_SIZE, SIGNATURE_SIZE,
                                    KeyPair, address_to_pub_key_hash, create_script_pub_key,
                                    create_script_sig, decode_base58_check, encode_base58_check,
                                    extract_pub_key_hash, hash_pub_key, pub_key_hash_to_address,
                                    verify)
from dilithion.crypto.randomx_hash import RANDOMX_KEY, RandomXHasher
from dilithion.crypto.sha3 import sha3_256, sha3_256_uint256, sha3_256d, sha3_512

REFERENCE_PUBKEY = bytes(i & 0xFF for i in range(1952))


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return KeyPair.from_seed(bytes(range(32)))


# -- SHA3 -----------------------------------------------------------------------------
def test_sha3_is_fips202_not_keccak():
    assert sha3_256(b"").hex() == "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    assert sha3_512(b"abc") == hashlib.sha3_512(b"abc").digest()
    assert sha3_256d(b"") == sha3_256(sha3_256(b""))
    assert sha3_256d(b"")[:4].hex() == "a1292c11"       # the empty-payload message checksum
    assert sha3_256_uint256(bytes(32)) == sha3_256(bytes(32))
    with pytest.raises(ValueError):
        sha3_256_uint256(bytes(31))


# -- RandomX --------------------------------------------------------------------------
def test_randomx_hasher_is_shared_per_key_and_deterministic(hasher):
    assert RandomXHasher.for_key() is hasher and hasher.key == RANDOMX_KEY == b"Dilithion"
    data = b"\x00" * 80
    assert hasher.hash(data) == hasher.hash(bytearray(data)) and len(hasher.hash(data)) == 32
    assert hasher.hash(data) != hasher.hash(b"\x01" + data[1:])


def test_randomx_threads_get_their_own_vm_and_the_same_hashes(hasher):
    header = bytes(range(80))
    expected = hasher.hash(header)
    results, vms = [], []

    def work():
        results.append(hasher.hash(header))
        vms.append(id(hasher._vm()))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected, expected]
    assert len(set(vms)) == 2 and id(hasher._vm()) not in vms


# -- addresses (chain 6.9, cli 4.2) --------------------------------------------------------
def test_address_of_hash_00_to_13():
    pkh = bytes(range(20))
    address = pub_key_hash_to_address(pkh)
    assert address == "D597kHXGdkwkryF9oGhz9Bp1ypTpFAn2iA"
    assert address_to_pub_key_hash(address) == pkh


def test_address_of_the_reference_public_key():
    pkh = hash_pub_key(REFERENCE_PUBKEY)
    assert (bytes((ADDRESS_VERSION,)) + pkh).hex() == "1e487347e98f68e8d6ba8c1f7dbfd9e24882e84b54"
    assert pub_key_hash_to_address(pkh) == "DBkBHvnRPGW1TtDZCD2ijA9RAwJtLpPu9e"
    assert pkh == sha3_256(sha3_256(REFERENCE_PUBKEY))[:20]


def test_base58_leading_zero_bytes_become_ones():
    text = encode_base58_check(b"\x00\x00\x05")
    assert text.startswith("11") and decode_base58_check(text) == b"\x00\x00\x05"
    assert decode_base58_check(encode_base58_check(b"")) == b""


@pytest.mark.parametrize("text, reason", [
    ("D597kHXGdkwkryF9oGhz9Bp1ypTpFAn2iB", "checksum"),      # last character changed
    ("D597kHXGdkwkryF9oGhz9Bp1ypTpFAn2i0", "invalid Base58 character '0'"),
    ("DO97kHXGdkwkryF9oGhz9Bp1ypTpFAn2iA", "invalid Base58 character 'O'"),
    ("1" * 1025, "longer than 1024"),
    ("", "shorter than its checksum"),
])
def test_base58_decode_failures(text, reason):
    with pytest.raises(ValueError, match=reason):
        address_to_pub_key_hash(text)


def test_address_with_wrong_version_or_length():
    with pytest.raises(ValueError, match="not a Dilithion address"):
        address_to_pub_key_hash(encode_base58_check(b"\x00" + bytes(20)))
    with pytest.raises(ValueError, match="not a Dilithion address"):
        address_to_pub_key_hash(encode_base58_check(b"\x1e" + bytes(19)))


# -- scripts (cli 4.3/4.4) -----------------------------------------------------------------
def test_script_pub_key_and_extraction():
    pkh = bytes(range(20))
    spk = create_script_pub_key(pkh)
    assert spk.hex() == "76a914000102030405060708090a0b0c0d0e0f1011121388ac"
    assert extract_pub_key_hash(spk) == pkh
    long_hash = bytes(32)
    assert extract_pub_key_hash(create_script_pub_key(long_hash)) == long_hash
    for bad in (spk[:-1], spk + b"\x00", b"\x76\xa9\x15" + bytes(20) + b"\x88\xac",
                b"\x76\xa9\x13" + bytes(19) + b"\x88\xac", b"\x76\xa8" + spk[2:], spk[:-1] + b"\xad", b""):
        assert extract_pub_key_hash(bad) is None, bad.hex()


def test_script_sig_layout():
    sig, pk = b"s" * SIGNATURE_SIZE, b"p" * PUBLIC_KEY_SIZE
    script = create_script_sig(sig, pk)
    assert len(script) == 5265
    assert script[:2] == SIGNATURE_SIZE.to_bytes(2, "little") and script[2:3311] == sig
    assert script[3311:3313] == PUBLIC_KEY_SIZE.to_bytes(2, "little") and script[3313:] == pk


# -- ML-DSA-65 (cli 4.1) ---------------------------------------------------------------------
def test_key_and_signature_sizes(keypair):
    assert len(keypair.public_key) == PUBLIC_KEY_SIZE == 1952
    assert len(keypair.seed()) == SEED_SIZE == 32
    assert len(keypair.sign(b"m")) == SIGNATURE_SIZE == 3309


def test_sign_verify_round_trip_and_tamper(keypair):
    msg = b"transaction message"
    sig = keypair.sign(msg)
    assert verify(keypair.public_key, msg, sig)
    assert not verify(keypair.public_key, msg + b"!", sig)
    tampered = bytearray(sig)
    tampered[100] ^= 0x01
    assert not verify(keypair.public_key, msg, bytes(tampered))
    other = KeyPair.from_seed(bytes(32))
    assert not verify(other.public_key, msg, sig)
    assert not verify(keypair.public_key[:-1], msg, sig)           # malformed sizes verify false
    assert not verify(keypair.public_key, msg, sig[:-1])
    assert not verify(b"\xff" * PUBLIC_KEY_SIZE, msg, sig)


def test_signatures_are_hedged(keypair):
    assert keypair.sign(b"same") != keypair.sign(b"same")


def test_empty_context_is_what_we_sign_and_verify(keypair):
    """The C++ signs pure ML-DSA with ctx = b"" (``cli`` 4.1); check with the library directly."""
    msg = b"context check"
    sig = keypair.sign(msg)
    public = MLDSA65PublicKey.from_public_bytes(keypair.public_key)
    public.verify(sig, msg, context=b"")                 # raises if the context differed
    with pytest.raises(InvalidSignature):
        public.verify(sig, msg, context=b"x")
    private = MLDSA65PrivateKey.from_seed_bytes(keypair.seed())
    foreign = private.sign(msg, context=b"")
    assert verify(keypair.public_key, msg, foreign)
    with_ctx = private.sign(msg, context=b"dilithion")
    assert not verify(keypair.public_key, msg, with_ctx)


def test_seed_round_trip_is_deterministic(keypair):
    again = KeyPair.from_seed(keypair.seed())
    assert again.public_key == keypair.public_key
    assert again.address() == pub_key_hash_to_address(keypair.pub_key_hash())
    assert keypair.address().startswith("D") and len(keypair.address()) == 34
    fresh = KeyPair.generate()
    assert fresh.public_key != keypair.public_key
    with pytest.raises(ValueError):
        KeyPair.from_seed(bytes(31))
