"""The RandomX full-mode dataset: whether it fits, how it is allocated, how it is built.

RandomX's full mode hashes from a 2080 MiB dataset that is computed once from the
256 MiB light-mode cache; every VM of the process reads it, none writes it.  The
hashes are the same as in light mode, only about eight times cheaper.  The C++
node never uses it (``src/crypto/randomx_hash.cpp`` creates light-mode VMs only).

Three things decide whether and how fast full mode works on a machine:

* **memory**: :func:`memory_available` takes the smallest of what the kernel says
  is available (``MemAvailable``), what the process's cgroup still allows and what
  its address-space limit (``RLIMIT_AS``) leaves; full mode is attempted only
  above :data:`FULL_MODE_MIN_AVAILABLE` (dataset plus 512 MiB of headroom), and a
  failed allocation is reported, never fatal;
* **pages**: random reads over 2 GiB thrash the TLB with 4 KiB pages; the dataset
  is taken from reserved huge pages when the operator configured them
  (``vm.nr_hugepages``), else the kernel is asked for transparent huge pages
  (``madvise(MADV_HUGEPAGE)``) before the memory is first written: measured on
  the reference machine this is the difference between about 320 and 550 H/s;
* **build time**: the dataset is filled in chunks by one thread per CPU in the
  background (:class:`DatasetBuild`), so the node keeps hashing in light mode
  meanwhile and a process exit stops the build within one chunk.
"""
from __future__ import annotations

import atexit
import ctypes
import mmap
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import randomx
from loguru import logger

__all__ = ["DATASET_BYTES", "FULL_MODE_MIN_AVAILABLE", "MemoryReport", "memory_available",
           "DatasetBuild", "MiB"]

MiB = 1 << 20
#: The dataset's size: items times 64 bytes (2,181,038,016 bytes, about 2080 MiB).
DATASET_BYTES = randomx.Dataset.count() * randomx.DATASET_ITEM_SIZE
#: Full mode is attempted only when at least this much memory is available.
FULL_MODE_MIN_AVAILABLE = DATASET_BYTES + 512 * MiB
#: The dataset is built in this many pieces; a cancelled build stops after the current one.
BUILD_CHUNKS = 512
_HUGE_PAGE = 2 * MiB
_MADV_HUGEPAGE = 14


@dataclass(frozen=True)
class MemoryReport:
    """How many bytes this process can still allocate, and which limit says so."""

    available: int
    limited_by: str

    def describe(self) -> str:
        return f"{self.available / MiB:.0f} MiB available ({self.limited_by})"


def _meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """cgroup v2: ``memory.max - memory.current`` of this process's group, if limited."""
    try:
        relative = next(line.split("::", 1)[1] for line in
                        Path("/proc/self/cgroup").read_text().splitlines()
                        if line.startswith("0::"))
        group = root / relative.lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError, StopIteration):
        return None


def _address_space_available() -> int | None:
    """``RLIMIT_AS`` minus the address space already mapped, if a limit is set."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return soft


def memory_available() -> MemoryReport:
    """The tightest of the kernel's, the cgroup's and the address-space limit."""
    candidates = [(value, name) for value, name in (
        (_meminfo_available(), "MemAvailable"),
        (_cgroup_available(), "cgroup memory.max"),
        (_address_space_available(), "RLIMIT_AS")) if value is not None]
    if not candidates:
        return MemoryReport(1 << 62, "no limit found")
    value, name = min(candidates)
    return MemoryReport(value, name)


def _advise_huge_pages(dataset: "randomx.Dataset") -> bool:
    """Ask for transparent huge pages over the (not yet touched) dataset memory."""
    try:
        view = memoryview(dataset.get_memory())
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
        start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (address + DATASET_BYTES) & ~(_HUGE_PAGE - 1)
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return madvise(start, end - start, getattr(mmap, "MADV_HUGEPAGE", _MADV_HUGEPAGE)) == 0
    except (AttributeError, OSError, TypeError, ValueError):
        return False


def _allocate_dataset() -> tuple["randomx.Dataset", str]:
    """A dataset in reserved huge pages if there are enough, else in advised normal memory.

    Raises ``MemoryError`` when neither allocation succeeds.
    """
    try:
        return randomx.Dataset(randomx.FLAG_LARGE_PAGES), "reserved huge pages"
    except MemoryError:
        pass
    dataset = randomx.Dataset(randomx.FLAG_DEFAULT)
    pages = "transparent huge pages" if _advise_huge_pages(dataset) else "4 KiB pages"
    return dataset, pages


class DatasetBuild:
    """One background build of the dataset from a light-mode cache.

    States: ``building`` -> ``ready`` (``dataset`` usable) or ``unavailable``
    (``reason`` says why: too little memory, allocation failed, cancelled).
    ``done`` is set on either outcome; ``on_ready(dataset)`` runs once, on the
    last builder thread, when the dataset is complete.

    Ownership: the builder threads own the dataset memory until ``done``; then
    it is read-only.  ``state``, ``reason``, ``seconds`` and ``pages`` are written
    once, before ``done`` is set, and only read after it (or read as a whole
    attribute, which is atomic).  ``_next_chunk`` is guarded by ``_chunk_lock``.
    """

    def __init__(self, cache: "randomx.Cache", threads: int, on_ready=None) -> None:
        self.threads = max(1, threads)
        self.state = "building"
        self.reason = ""
        self.pages = ""
        self.seconds = 0.0
        self.chunks_done = 0
        self.done = threading.Event()
        self._cache = cache
        self._on_ready = on_ready
        self._cancel = threading.Event()
        self._chunk_lock = threading.Lock()
        self._next_chunk = 0
        self._running = 0
        self._started = 0.0
        self.dataset: "randomx.Dataset | None" = None

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> "DatasetBuild":
        """Check memory, allocate, and start the builder threads; never raises."""
        report = memory_available()
        if report.available < FULL_MODE_MIN_AVAILABLE:
            return self._give_up(f"full mode needs {FULL_MODE_MIN_AVAILABLE / MiB:.0f} MiB "
                                 f"of free memory, {report.describe()}")
        self._started = time.monotonic()
        try:
            self.dataset, self.pages = _allocate_dataset()
        except MemoryError:
            return self._give_up(f"allocating the {DATASET_BYTES / MiB:.0f} MiB dataset "
                                 f"failed ({report.describe()} before the attempt)")
        logger.info(f"RandomX: building the full-mode dataset ({DATASET_BYTES / MiB:.0f} MiB, "
                    f"{self.pages}) on {self.threads} thread(s) in the background; "
                    "hashing in light mode until it is ready")
        atexit.register(self.cancel)
        self._running = self.threads
        for index in range(self.threads):
            threading.Thread(target=self._build_chunks, name=f"randomx-dataset-{index}",
                             daemon=True).start()
        return self

    def cancel(self) -> None:
        """Stop after the chunks in progress (process exit); the build ends ``unavailable``."""
        self._cancel.set()

    def progress(self) -> float:
        return self.chunks_done / BUILD_CHUNKS

    # ---- the builder threads -----------------------------------------------
    def _claim_chunk(self) -> int | None:
        with self._chunk_lock:
            if self._cancel.is_set() or self._next_chunk >= BUILD_CHUNKS:
                return None
            chunk = self._next_chunk
            self._next_chunk += 1
            return chunk

    def _build_chunks(self) -> None:
        items = randomx.Dataset.count()
        while (chunk := self._claim_chunk()) is not None:
            first = chunk * items // BUILD_CHUNKS
            last = (chunk + 1) * items // BUILD_CHUNKS
            self.dataset.init(self._cache, first, last - first)   # releases the GIL
            with self._chunk_lock:
                self.chunks_done += 1
        with self._chunk_lock:
            self._running -= 1
            last_thread = self._running == 0
        if last_thread:
            self._finish()

    def _finish(self) -> None:
        if self.chunks_done < BUILD_CHUNKS:
            self.dataset = None
            self._give_up("the dataset build was cancelled")
            return
        self.seconds = time.monotonic() - self._started
        self.state = "ready"
        logger.info(f"RandomX: full mode ready (dataset built in {self.seconds:.1f} s, "
                    f"{self.pages}); mining and block verification now use the dataset")
        if self._on_ready is not None:
            self._on_ready(self.dataset)
        self.done.set()

    def _give_up(self, reason: str) -> "DatasetBuild":
        self.state = "unavailable"
        self.reason = reason
        logger.warning(f"RandomX: staying in light mode: {reason}")
        self.done.set()
        return self
