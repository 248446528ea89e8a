"""Debug aid, off by default: periodic ``tracemalloc`` snapshots for leak hunts.

Why: the lab's load run measures a node's RSS from outside; to see *what*
grows, compare snapshots of the Python heap by allocation site.  When
``DIL_TRACEMALLOC_DUMP_S`` holds a positive number of seconds, the node starts
``tracemalloc`` (``TRACE_FRAMES`` frames, unless ``PYTHONTRACEMALLOC`` already
did) and its main loop writes ``DATADIR/tracemalloc/snap-NNNN.bin`` that often
(``tracemalloc.Snapshot.load`` reads them back).  The variable is read from the
node's own environment, so a lab run can trace its nodes without tracing
itself.  Unset (the default), nothing is traced or written.
"""
from __future__ import annotations

import math
import os
import time
import tracemalloc
from pathlib import Path

from loguru import logger

__all__ = ["SnapshotDumper", "ENV_VAR"]

ENV_VAR = "DIL_TRACEMALLOC_DUMP_S"
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
        """Write the next snapshot if it is due; a write error stops the dumps (one
        warning line), never the node."""
        if self._clock() < self._next:
            return None
        self._next = self._clock() + self.every_s
        path = self.directory / f"snap-{len(self.written):04d}.bin"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tracemalloc.take_snapshot().dump(str(path))
        except OSError as exc:
            logger.warning(f"tracemalloc snapshots stopped: {exc}")
            self._next = math.inf
            return None
        self.written.append(path)
        return path
