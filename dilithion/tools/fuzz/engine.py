"""Running a target: the seeded mutation loop, the coverage-guided atheris run, findings.

The loop is deterministic for a given seed and input count: the same seeds,
the same mutations, the same order, so the default test suite reruns exactly
what it ran before.  ``atheris`` (libFuzzer's coverage-guided search, the
optional ``fuzz`` extra) serves the long on-demand runs.  Either way a target
fails by raising: :class:`PropertyViolation` names the property, and any other
exception is reported as the property :data:`ONLY_DOCUMENTED_ERRORS`.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dilithion.tools.fuzz.checks import ONLY_DOCUMENTED_ERRORS
from dilithion.tools.fuzz.provider import PropertyViolation

__all__ = ["Finding", "RunResult", "Mutator", "check_input", "run_loop", "write_finding", "MAX_INPUT_SIZE"]

#: Inputs grow by insertions and splices; past this size a mutation truncates them.
MAX_INPUT_SIZE = 64 * 1024
#: Integers worth planting: the CompactSize and signed/unsigned width boundaries.
INTERESTING = (0, 1, 0x7F, 0x80, 0xFC, 0xFD, 0xFE, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


@dataclass(frozen=True)
class Finding:
    """A failing input: which property broke, how, and the bytes."""

    target: str
    prop: str
    detail: str
    data: bytes

    def line(self, path: Path | None) -> str:
        where = f" input: {path}" if path else ""
        return f"FAIL {self.target}: property '{self.prop}' broken ({self.detail}){where}"


@dataclass(frozen=True)
class RunResult:
    executions: int
    seconds: float
    finding: Finding | None

    @property
    def per_second(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0


def check_input(name: str, run: Callable[[bytes], None], data: bytes) -> Finding | None:
    """Run one input; the broken property, or ``None`` when every property held."""
    try:
        run(data)
    except PropertyViolation as violation:
        return Finding(name, violation.prop, violation.detail, data)
    except Exception as exc:  # noqa: BLE001 - an undocumented exception is a finding
        return Finding(name, ONLY_DOCUMENTED_ERRORS, f"{type(exc).__name__}: {exc}", data)
    return None


class Mutator:
    """Byte-level mutations of corpus inputs (flip, set, plant an integer, insert,
    delete, duplicate, splice, truncate), one to four per new input."""

    def __init__(self, rng: random.Random, corpus: list[bytes]) -> None:
        self.rng = rng
        self.corpus = corpus or [b""]

    def next_input(self) -> bytes:
        data = bytearray(self.rng.choice(self.corpus))
        for _ in range(self.rng.randint(1, 4)):
            self._mutate(data)
        return bytes(data[:MAX_INPUT_SIZE])

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        kind = rng.randrange(8)
        if not data or kind == 0:            # insert a few random bytes
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 1:                      # flip one bit
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 2:                      # set one byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 3:                      # plant an interesting integer, either byte order
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            at = rng.randrange(len(data))
            data[at:at + width] = value.to_bytes(width, rng.choice(("little", "big")))
        elif kind == 4:                      # delete a range
            at = rng.randrange(len(data))
            del data[at:at + rng.randint(1, 16)]
        elif kind == 5:                      # duplicate a chunk in place
            at = rng.randrange(len(data))
            chunk = data[at:at + rng.randint(1, 64)]
            data[at:at] = chunk
        elif kind == 6:                      # splice with another corpus input
            other = rng.choice(self.corpus)
            at = rng.randint(0, len(data))
            data[at:] = other[rng.randint(0, len(other)):] if other else b""
        else:                                # truncate
            del data[rng.randint(0, len(data)):]


def run_loop(name: str, run: Callable[[bytes], None], seeds: list[bytes], seed: int,
             runs: int | None = None, seconds: float | None = None) -> RunResult:
    """Every seed once, then mutated inputs until ``runs`` inputs in all or ``seconds`` pass.

    Stops at the first finding.  With neither limit, only the seeds run.
    """
    mutator = Mutator(random.Random(seed), list(seeds))
    start = time.monotonic()
    executions = 0

    def more() -> bool:
        if runs is not None:
            return executions < runs
        return seconds is not None and time.monotonic() - start < seconds

    for data in seeds:
        executions += 1
        finding = check_input(name, run, data)
        if finding:
            return RunResult(executions, time.monotonic() - start, finding)
    while more():
        executions += 1
        finding = check_input(name, run, mutator.next_input())
        if finding:
            return RunResult(executions, time.monotonic() - start, finding)
    return RunResult(executions, time.monotonic() - start, None)


def write_finding(finding: Finding, out_dir: Path) -> Path:
    """Store the failing input as ``<target>-<sha1 prefix>.bin``; the name is its content's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{finding.target}-{hashlib.sha1(finding.data).hexdigest()[:16]}.bin"
    path.write_bytes(finding.data)
    return path
