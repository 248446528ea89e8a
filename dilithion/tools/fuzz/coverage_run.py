"""The coverage-guided run: the same target under ``atheris`` (libFuzzer), on demand.

``atheris`` is the optional ``fuzz`` extra; nothing else in the package needs it.
libFuzzer owns the process once :func:`run_atheris` starts it and exits by
itself (status 0, without running Python's exit hooks) when ``-runs`` or
``-max_total_time`` is reached; its last line, ``Done N runs in S second(s)``,
is the summary.  A finding ends the process at once with status 1 after its
line is printed (libFuzzer's own crash handling would print a traceback and
exit with another status).
"""
from __future__ import annotations

import gc
import os
import sys
import types
from pathlib import Path
from typing import Callable

from dilithion.tools.fuzz.engine import check_input, write_finding
from dilithion.tools.fuzz.registry import Target

__all__ = ["atheris_available", "run_atheris"]


def atheris_available() -> bool:
    """Whether the optional ``fuzz`` extra is installed (and importable)."""
    try:
        import atheris
    except ImportError:
        return False
    return atheris is not None


def _instrument_node_code(atheris) -> int:
    """Coverage instrumentation for every loaded function of the ``dilithion`` package.

    ``atheris.instrument_all()`` would also instrument the standard library and
    every dependency: 48 s before the first input here, for branches that are
    not ours.  Returns the number of functions instrumented.
    """
    functions = [obj for obj in gc.get_objects()
                 if isinstance(obj, types.FunctionType) and (obj.__module__ or "").startswith("dilithion.")]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def run_atheris(target: Target, seeds: list[bytes], seed: int, runs: int | None, seconds: float | None,
                corpus_dir: Path | None, out_dir: Path, echo: Callable[[str], None]) -> None:
    """Fuzz ``target`` with libFuzzer's search over the seeds (written to
    ``out_dir/seeds-<target>``) and ``corpus_dir``, where libFuzzer also keeps
    the inputs that reached new code.  Does not return."""
    import atheris

    seed_dir = out_dir / f"seeds-{target.name}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(seeds):
        (seed_dir / f"seed-{index:04d}").write_bytes(data)

    def one_input(data: bytes) -> None:
        finding = check_input(target.name, target.run, data)
        if finding:
            echo(finding.line(write_finding(finding, out_dir)))
            sys.stdout.flush()
            os._exit(1)

    dirs = ([str(corpus_dir)] if corpus_dir else []) + [str(seed_dir)]
    args = [sys.argv[0], f"-seed={max(seed, 1)}", "-max_len=65536", f"-artifact_prefix={out_dir}/"]
    args += [f"-runs={runs}"] if runs is not None else []
    args += [f"-max_total_time={max(1, int(seconds))}"] if seconds is not None else []
    _instrument_node_code(atheris)
    atheris.Setup(args + dirs, one_input)
    atheris.Fuzz()
