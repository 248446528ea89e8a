"""ML-DSA-65 keys, signatures, key hashes and addresses.

The C++ keeps these in the wallet's ``WalletCrypto`` namespace
(``src/wallet/wallet.cpp``); the node needs them without a wallet (the mining
key, transaction validation), so they live here.  Signatures are FIPS 204
ML-DSA-65 with an empty context, which is what the C++ verifies (``chain`` 6.6).
"""
from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey

from dilithion.crypto.sha3 import sha3_256d

__all__ = [
    "PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "SEED_SIZE", "ADDRESS_VERSION",
    "KeyPair", "verify", "hash_pub_key", "encode_base58_check", "decode_base58_check",
    "pub_key_hash_to_address", "address_to_pub_key_hash", "create_script_pub_key",
    "create_script_sig", "extract_pub_key_hash",
]

PUBLIC_KEY_SIZE = 1952
SIGNATURE_SIZE = 3309
#: The private key is persisted in its 32-byte FIPS 204 seed form.
SEED_SIZE = 32
ADDRESS_VERSION = 0x1E
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_MAX_ADDRESS_TEXT = 1024


class KeyPair:
    """An ML-DSA-65 signing key with its public key."""

    def __init__(self, private_key: MLDSA65PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls(MLDSA65PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "KeyPair":
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an ML-DSA-65 seed is {SEED_SIZE} bytes, got {len(seed)}")
        return cls(MLDSA65PrivateKey.from_seed_bytes(seed))

    def seed(self) -> bytes:
        return self._private.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        """Hedged (randomised) ML-DSA-65 signature with an empty context."""
        return self._private.sign(message)

    def pub_key_hash(self) -> bytes:
        return hash_pub_key(self.public_key)

    def address(self) -> str:
        return pub_key_hash_to_address(self.pub_key_hash())


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """FIPS 204 ``ML-DSA-65.Verify(pk, m, sig, ctx=b"")``; malformed inputs verify false."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        MLDSA65PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def hash_pub_key(public_key: bytes) -> bytes:
    """``HashPubKey``: ``SHA3(SHA3(pk))[:20]``, the hash the wallet pays to."""
    return sha3_256d(public_key)[:20]


def encode_base58_check(payload: bytes) -> str:
    data = payload + sha3_256d(payload)[:4]
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    leading = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading + "".join(reversed(out))


def decode_base58_check(text: str) -> bytes:
    """Inverse of :func:`encode_base58_check`; raises ``ValueError`` with the reason.

    Text over 1024 characters is refused: the limit C++ ``MAX_BASE58_LENGTH`` sets.
    """
    if len(text) > _MAX_ADDRESS_TEXT:
        raise ValueError("address text longer than 1024 characters")
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise ValueError(f"invalid Base58 character {c!r}")
        n = n * 58 + _B58_INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    data = b"\0" * (len(text) - len(text.lstrip("1"))) + body
    if len(data) < 4:
        raise ValueError("Base58Check data shorter than its checksum")
    payload, checksum = data[:-4], data[-4:]
    if sha3_256d(payload)[:4] != checksum:
        raise ValueError("Base58Check checksum mismatch")
    return payload


def pub_key_hash_to_address(pkh: bytes) -> str:
    return encode_base58_check(bytes((ADDRESS_VERSION,)) + pkh)


def address_to_pub_key_hash(address: str) -> bytes:
    """The 20-byte key hash of an address; raises ``ValueError`` (C++ RPC ``ValidateAddress``)."""
    payload = decode_base58_check(address)
    if len(payload) != 21 or payload[0] != ADDRESS_VERSION:
        raise ValueError(f"not a Dilithion address: {address!r}")
    return payload[1:]


def create_script_pub_key(pkh: bytes) -> bytes:
    """``76 A9 <len> <hash> 88 AC`` (25 bytes for the wallet's 20-byte hash)."""
    return b"\x76\xa9" + bytes((len(pkh),)) + pkh + b"\x88\xac"


def create_script_sig(signature: bytes, public_key: bytes) -> bytes:
    """``u16le(len sig) | sig | u16le(len pk) | pk`` (5,265 bytes for ML-DSA-65)."""
    return (len(signature).to_bytes(2, "little") + signature
            + len(public_key).to_bytes(2, "little") + public_key)


def extract_pub_key_hash(script_pubkey: bytes) -> bytes | None:
    """The 20- or 32-byte hash of a pay-to-key-hash script, else ``None``."""
    if len(script_pubkey) in (25, 37) and script_pubkey[:2] == b"\x76\xa9" \
            and script_pubkey[2] == len(script_pubkey) - 5 and script_pubkey[-2:] == b"\x88\xac":
        return script_pubkey[3:-2]
    return None
