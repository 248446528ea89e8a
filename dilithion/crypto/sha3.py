"""SHA3 helpers (``src/crypto/sha3.{h,cpp}``): FIPS 202 via :mod:`hashlib`."""
from __future__ import annotations

import hashlib

__all__ = ["sha3_256", "sha3_512", "sha3_256d", "sha3_256_uint256"]


def sha3_256(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


def sha3_512(data: bytes) -> bytes:
    return hashlib.sha3_512(data).digest()


def sha3_256_uint256(value: bytes) -> bytes:
    """``SHA3_256_uint256``: SHA3-256 of exactly one 32-byte value."""
    if len(value) != 32:
        raise ValueError(f"a uint256 is 32 bytes, got {len(value)}")
    return sha3_256(value)


def sha3_256d(data: bytes) -> bytes:
    """SHA3-256 applied twice: message checksums, key hashes, address checksums."""
    return hashlib.sha3_256(hashlib.sha3_256(data).digest()).digest()
