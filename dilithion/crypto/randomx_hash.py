"""RandomX block hashing (``src/crypto/randomx_hash.{h,cpp}``), light and full mode.

The C++ keeps one global light-mode VM behind one mutex, so its mining threads
hash one at a time and ``StopMining`` destroys the VM that block validation
also needs (``cli 6.2`` #13/#14, ``chain D41``).  Here the 256 MiB cache is
built once per key and shared read-only; every thread that hashes gets its own
VM on first use, and the binding releases the GIL while hashing, so threads
scale.

Full mode (:mod:`dilithion.crypto.randomx_dataset`) is switched on at run time:
:meth:`RandomXHasher.start_full_mode` builds the 2080 MiB dataset in the
background while hashing goes on in light mode; when it is ready, each thread
replaces its light VM with a full one at its next hash.  Both modes give the
same hashes (``chain`` 1.4; the C++ vectors are checked in both).

The binding is the ``RandomX`` package, which compiles the tevador library at
install time; the C++ node links the same library (``depends/randomx``).
"""
from __future__ import annotations

import os
import threading

import randomx

from dilithion.crypto.randomx_dataset import DatasetBuild

__all__ = ["RANDOMX_KEY", "RANDOMX_HASH_SIZE", "RANDOMX_MODES", "VM_BYTES", "RandomXHasher",
           "wants_full_mode"]

#: The key the node sets at start-up: the nine ASCII bytes ``Dilithion``.
RANDOMX_KEY = b"Dilithion"
RANDOMX_HASH_SIZE = 32
#: ``--randomx``: ``light`` never builds the dataset, ``full`` builds it at start,
#: ``auto`` builds it when mining starts.  Memory permitting, always.
RANDOMX_MODES = ("light", "full", "auto")
#: What one VM adds to the process (2 MiB scratchpad plus program buffers),
#: measured as the RSS step at a thread's first hash.  A node holds one VM per
#: thread that ever hashed, so its RSS rises in such steps up to a bound.
VM_BYTES = 2 * 2**20 + 64 * 2**10


class _VMHolder:
    """A thread's VM; counts itself in :attr:`RandomXHasher.vms` while alive, so the
    count falls when a thread ends (its ``threading.local`` is dropped)."""

    __slots__ = ("vm", "dataset", "_hasher")

    def __init__(self, hasher: "RandomXHasher", vm: "randomx.VM", dataset) -> None:
        self.vm, self.dataset, self._hasher = vm, dataset, hasher
        hasher._count_vm(+1)

    def __del__(self) -> None:
        self._hasher._count_vm(-1)


def wants_full_mode(setting: str, mining: bool) -> bool:
    """Whether the ``--randomx`` setting asks for the dataset in this situation."""
    return setting == "full" or (setting == "auto" and mining)


class RandomXHasher:
    """One RandomX cache for one key, an optional shared dataset, one VM per thread.

    Ownership: the cache is immutable after construction and shared by every
    thread.  ``_dataset`` is written once (by the dataset build's last thread)
    and read without a lock: a single attribute read is atomic, and a thread
    that still sees ``None`` simply hashes one more time in light mode.  Each VM
    belongs to the thread that created it (``threading.local``), so ``hash``
    needs no lock.  ``_build`` is created once under ``_build_lock``.

    Instances are shared through :meth:`for_key` because a cache costs 256 MiB
    (and a dataset 2080 MiB): several nodes in one process (tests) share them,
    which is safe because both are read-only; so is the mode.
    """

    _instances: dict[bytes, "RandomXHasher"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, key: bytes = RANDOMX_KEY) -> None:
        self.key = bytes(key)
        self._flags = randomx.get_flags()
        self._cache = randomx.Cache(self._flags, self.key)
        self._dataset: "randomx.Dataset | None" = None
        self._build: DatasetBuild | None = None
        self._build_lock = threading.Lock()
        self._local = threading.local()
        self._vms = 0
        self._vms_lock = threading.Lock()

    @classmethod
    def for_key(cls, key: bytes = RANDOMX_KEY) -> "RandomXHasher":
        with cls._instances_lock:
            hasher = cls._instances.get(key)
            if hasher is None:
                hasher = cls._instances[key] = cls(key)
            return hasher

    # ---- hashing -------------------------------------------------------------
    def hash(self, data: bytes) -> bytes:
        """The 32-byte RandomX output, stored raw as the block hash (``chain`` 1.4)."""
        return self._vm().calculate_hash(bytes(data))

    def _vm(self) -> "randomx.VM":
        dataset, local = self._dataset, self._local
        holder = getattr(local, "holder", None)
        if holder is None or holder.dataset is not dataset:
            local.holder = holder = None        # free the old VM before making the next
            if dataset is None:
                vm = randomx.VM(self._flags, self._cache)
            else:
                vm = randomx.VM(self._flags | randomx.FLAG_FULL_MEM, None, dataset)
            local.holder = holder = _VMHolder(self, vm, dataset)
        return holder.vm

    def _count_vm(self, delta: int) -> None:
        with self._vms_lock:
            self._vms += delta

    @property
    def vms(self) -> int:
        """VMs alive: one per thread that hashed and still runs (bounded by the threads)."""
        return self._vms

    # ---- mode ------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``full`` once the dataset is ready, ``light`` before and without it."""
        return "light" if self._dataset is None else "full"

    @property
    def dataset_build(self) -> DatasetBuild | None:
        """The dataset build, if full mode was ever asked for (its state, time, reason)."""
        return self._build

    def start_full_mode(self, threads: int | None = None) -> DatasetBuild:
        """Start building the dataset in the background (once; later calls return the
        same build).  Hashing continues in light mode meanwhile; too little memory
        leaves the hasher in light mode with one warning line, never an error."""
        with self._build_lock:
            if self._build is None:
                self._build = DatasetBuild(self._cache, threads or os.cpu_count() or 1,
                                           on_ready=self._use_dataset)
                self._build.start()
            return self._build

    def _use_dataset(self, dataset: "randomx.Dataset") -> None:
        self._dataset = dataset
