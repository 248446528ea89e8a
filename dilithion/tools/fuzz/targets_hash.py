"""Targets for hashing: SHA3-256, the merkle root, Base58Check addresses.

Counterparts of the C++ ``fuzz_sha3``, ``fuzz_merkle`` and ``fuzz_address``.
Where the C++ target only checks determinism, these compare with an
independent reference (``hashlib``) or with a property the subject must keep
(the CVE-2012-2459 duplicate-last-leaf equality and its ``mutated`` flag, the
Base58Check checksum catching a changed character).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from dilithion.consensus.validation import compute_merkle_root
from dilithion.crypto import mldsa
from dilithion.crypto.sha3 import sha3_256, sha3_256d
from dilithion.net.serialize import calculate_checksum
from dilithion.tools.fuzz.checks import attempt
from dilithion.tools.fuzz.provider import DataProvider, require

__all__ = ["Sha3Subject", "AddressSubject", "BASE58_ALPHABET", "fuzz_sha3", "fuzz_merkle",
           "fuzz_address", "address_text"]

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(frozen=True)
class Sha3Subject:
    """Our SHA3-256, its double form, and the message checksum built on it."""

    sha3_256: Callable[[bytes], bytes] = sha3_256
    sha3_256d: Callable[[bytes], bytes] = sha3_256d
    checksum: Callable[[bytes], bytes] = calculate_checksum


def fuzz_sha3(data: bytes, subject: Sha3Subject = Sha3Subject()) -> None:
    """Hash fuzz-chosen slices and compare with ``hashlib.sha3_256`` (FIPS 202)."""
    p = DataProvider(data)
    first = p.random_length_bytes(10000)
    part_a, part_b = p.random_length_bytes(1000), p.random_length_bytes(1000)
    rest = p.rest()
    for message in (first, part_a + part_b, rest):
        digest = subject.sha3_256(message)
        require(digest == hashlib.sha3_256(message).digest(), "SHA3-256 matches hashlib.sha3_256",
                f"{len(message)}-byte input")
        require(subject.sha3_256(message) == digest, "SHA3-256 is deterministic")
    incremental = hashlib.sha3_256()
    incremental.update(part_a)
    incremental.update(part_b)
    require(subject.sha3_256(part_a + part_b) == incremental.digest(), "incremental equals one-shot",
            f"{len(part_a)} + {len(part_b)} bytes")
    double = subject.sha3_256d(first)
    require(double == hashlib.sha3_256(hashlib.sha3_256(first).digest()).digest(),
            "SHA3d is SHA3 of SHA3", f"{len(first)}-byte input")
    require(subject.checksum(first) == double[:4], "message checksum is the first 4 bytes of SHA3d")


def fuzz_merkle(data: bytes, root_of: Callable[[list[bytes]], tuple[bytes, bool]] = compute_merkle_root) -> None:
    """A fuzz-chosen leaf list (up to 1,000 32-byte txids, as the C++ target)."""
    p = DataProvider(data)
    count = p.int_in_range(0, 1000, 2)
    leaves = []
    while len(leaves) < count and p.remaining() >= 32:
        leaves.append(p.bytes(32))
    root, mutated = root_of(leaves)
    require(len(root) == 32, "merkle root is 32 bytes")
    require(root_of(list(leaves)) == (root, mutated), "merkle root is deterministic")
    if not leaves:
        require((root, mutated) == (bytes(32), False), "empty list has the null root")
        return
    if len(leaves) == 1:
        require(root == leaves[0], "single leaf is its own root")
    if len(leaves) == 2:
        require(root == hashlib.sha3_256(leaves[0] + leaves[1]).digest(), "pair root is SHA3(a || b)")
    if len(set(leaves)) == len(leaves):
        require(not mutated, "distinct leaves are never flagged mutated", f"{len(leaves)} leaves")
    if len(leaves) % 2 == 1 and len(leaves) > 1:
        padded_root, padded_mutated = root_of(leaves + [leaves[-1]])
        require(padded_root == root, "CVE-2012-2459: repeating an odd last leaf keeps the root")
        require(padded_mutated, "CVE-2012-2459: a repeated last leaf is flagged mutated")
    index = p.uint(2) % len(leaves)
    changed = list(leaves)
    changed[index] = bytes([changed[index][0] ^ 1]) + changed[index][1:]
    require(root_of(changed)[0] != root, "changing a leaf changes the root", f"leaf {index}")


@dataclass(frozen=True)
class AddressSubject:
    """Base58Check and the address form of a public-key hash (C++ ``base58``, ``ValidateAddress``)."""

    encode: Callable[[bytes], str] = mldsa.encode_base58_check
    decode: Callable[[str], bytes] = mldsa.decode_base58_check
    to_address: Callable[[bytes], str] = mldsa.pub_key_hash_to_address
    to_pub_key_hash: Callable[[str], bytes] = mldsa.address_to_pub_key_hash


def address_text(raw: bytes) -> str:
    """Fuzz bytes as address text: ASCII as is, the other bytes as Base58 digits (so
    mutated inputs often stay decodable)."""
    return "".join(chr(b) if b < 0x80 else BASE58_ALPHABET[b % 58] for b in raw)


def fuzz_address(data: bytes, subject: AddressSubject = AddressSubject()) -> None:
    """Decode fuzz text (C++ ``address_base58_decode``), encode fuzz payloads
    (``address_base58_encode``), and change one character of a valid address."""
    p = DataProvider(data)
    text = address_text(p.random_length_bytes(100))
    payload = attempt(lambda: subject.decode(text), (ValueError,), "decode_base58_check")
    if payload is not None:
        require(subject.encode(payload) == text, "decode then encode gives the same text", repr(text))
    pkh = attempt(lambda: subject.to_pub_key_hash(text), (ValueError,), "address_to_pub_key_hash")
    if pkh is not None:
        require(len(pkh) == 20 and subject.to_address(pkh) == text, "a valid address maps back to itself")
    payload = p.random_length_bytes(40)
    encoded = subject.encode(payload)
    require(set(encoded) <= set(BASE58_ALPHABET), "encoding uses only the Base58 alphabet", repr(encoded))
    decoded = attempt(lambda: subject.decode(encoded), (ValueError,), "decoding an encoded payload")
    require(decoded == payload, "encode then decode round trip", payload.hex())
    key_hash = payload[:20].ljust(20, b"\0")
    address = subject.to_address(key_hash)
    back = attempt(lambda: subject.to_pub_key_hash(address), (ValueError,), "reading back an address")
    require(back == key_hash, "address round trip", address)
    position = p.uint(2) % len(encoded)
    replacement = BASE58_ALPHABET[(BASE58_ALPHABET.index(encoded[position]) + 1 + p.uint(1) % 57) % 58]
    altered = encoded[:position] + replacement + encoded[position + 1:]
    result = attempt(lambda: subject.decode(altered), (ValueError,), "decoding an altered address")
    # A changed character changes the number, so the checksum no longer matches
    # (a false match has probability 2^-32 per input).
    require(result is None, "a one-character change is refused by the checksum",
            f"{encoded} -> {altered}")
