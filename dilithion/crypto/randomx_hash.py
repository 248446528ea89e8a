"""RandomX block hashing (``src/crypto/randomx_hash.{h,cpp}``) through ``cyrx``.

The C++ keeps one global VM behind one mutex, so its mining threads hash one at
a time and ``StopMining`` destroys the VM that block validation also needs
(``cli 6.2`` #13/#14, ``chain D41``).  Here the expensive part, the 256 MiB
cache, is built once per key and shared read-only; every thread that hashes gets
its own light-mode VM on first use.  ``cyrx``'s ``VM.hash`` releases the GIL, so
threads scale.  Light mode gives the same hashes as full mode (``chain`` 1.4).
"""
from __future__ import annotations

import threading

import cyrx

__all__ = ["RANDOMX_KEY", "RANDOMX_HASH_SIZE", "RandomXHasher"]

#: The key the node sets at start-up: the nine ASCII bytes ``Dilithion``.
RANDOMX_KEY = b"Dilithion"
RANDOMX_HASH_SIZE = 32


class RandomXHasher:
    """One RandomX cache for one key, and one VM per calling thread.

    Ownership: the cache is immutable after construction and shared by every
    thread; each VM belongs to the thread that created it (``threading.local``),
    so ``hash`` needs no lock.  Instances are shared through :meth:`for_key`
    because a cache costs 256 MiB and most of a second to build; several nodes in
    one process (tests) share it, which is safe because it is read-only.
    """

    _instances: dict[bytes, "RandomXHasher"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, key: bytes = RANDOMX_KEY) -> None:
        self.key = bytes(key)
        self._flags = cyrx.get_flags()
        self._cache = cyrx.Cache(self._flags)
        self._cache.init(self.key)
        self._local = threading.local()

    @classmethod
    def for_key(cls, key: bytes = RANDOMX_KEY) -> "RandomXHasher":
        with cls._instances_lock:
            hasher = cls._instances.get(key)
            if hasher is None:
                hasher = cls._instances[key] = cls(key)
            return hasher

    def _vm(self) -> "cyrx.VM":
        vm = getattr(self._local, "vm", None)
        if vm is None:
            vm = self._local.vm = cyrx.VM(self._flags, self._cache)
        return vm

    def hash(self, data: bytes) -> bytes:
        """The 32-byte RandomX output, stored raw as the block hash (``chain`` 1.4)."""
        return self._vm().hash(bytes(data))
