"""Debug aid, off by default: periodic ``tracemalloc`` snapshots for leak hunts.

Why: the lab's load run measures a node's RSS from outside; to see *what*
grows, compare snapshots of the Python heap by allocation site.  When the
process runs with ``PYTHONTRACEMALLOC=N`` and ``DILITHION_TRACEMALLOC_DUMP_S``
is set to a number of seconds, the node's main loop writes
``DATADIR/tracemalloc/snap-NNNN.bin`` that often (``tracemalloc.Snapshot.load``
reads them back).  Without both variables nothing happens and nothing is imported
into the hot path.
"""
from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

__all__ = ["SnapshotDumper", "ENV_VAR"]

ENV_VAR = "DILITHION_TRACEMALLOC_DUMP_S"
TRACE_FRAMES = 4


class SnapshotDumper:
    """Owned by the node's main thread; :meth:`maybe_dump` is called once a second."""

    def __init__(self, directory: Path, every_s: float, clock=time.monotonic) -> None:
        self.directory = Path(directory)
        self.every_s = every_s
        self._clock = clock
        self._next = clock()
        self.written: list[Path] = []

    @classmethod
    def from_env(cls, datadir: Path, environ=os.environ) -> "SnapshotDumper | None":
        """A dumper (tracing started) when the variable holds a positive number, else None."""
        try:
            every = float(environ.get(ENV_VAR, ""))
        except ValueError:
            return None
        if not every > 0:
            return None
        if not tracemalloc.is_tracing():
            tracemalloc.start(TRACE_FRAMES)
        return cls(Path(datadir) / "tracemalloc", every)

    def maybe_dump(self) -> Path | None:
        if self._clock() < self._next:
            return None
        self._next = self._clock() + self.every_s
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"snap-{len(self.written):04d}.bin"
        tracemalloc.take_snapshot().dump(str(path))
        self.written.append(path)
        return path
