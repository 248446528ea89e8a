"""The node's mining key, kept in the data directory.

The C++ node has no wallet file: every start generates a fresh ML-DSA-65 key,
so the coins mined in an earlier run pay a key that no longer exists
(``cli 6.1.2``).  This node stores the 32-byte ML-DSA-65 seed in
``<datadir>/mining_key`` (mode 0600), creates it on first start and reuses it
afterwards, so coinbase outputs stay spendable across restarts.
"""
from __future__ import annotations

import os
from pathlib import Path

from dilithion.crypto.mldsa import SEED_SIZE, KeyPair

__all__ = ["MINING_KEY_FILE", "MiningKeyError", "load_or_create_mining_key"]

MINING_KEY_FILE = "mining_key"


class MiningKeyError(Exception):
    """The key file exists but cannot be used (wrong size, unreadable, unwritable)."""


def load_or_create_mining_key(datadir: Path | str) -> KeyPair:
    """Return the key whose seed is in ``<datadir>/mining_key``, creating it if absent.

    A new seed is written to a temporary file first and renamed into place, so a
    crash never leaves a truncated key behind.  An existing file of the wrong
    size is refused rather than replaced: it may be the only copy of a key that
    owns coins.
    """
    path = Path(datadir) / MINING_KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise MiningKeyError(f"cannot read mining key {path}: {exc.strerror or exc}") from exc
    if len(seed) != SEED_SIZE:
        raise MiningKeyError(f"mining key {path} holds {len(seed)} bytes, expected {SEED_SIZE}; "
                             "move it away to generate a new key")
    return KeyPair.from_seed(seed)


def _create(path: Path) -> KeyPair:
    key = KeyPair.generate()
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key.seed())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise MiningKeyError(f"cannot write mining key {path}: {exc.strerror or exc}") from exc
    return key
