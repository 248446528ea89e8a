"""``python -m dilithion.tools.fuzz TARGET``: run one in-process fuzz target (docs/FUZZING.md).

Exit status: 0 every input kept every property, 1 a finding (one line: the
target, the property, the path of the failing input), 2 bad usage (one line).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
from loguru import logger

from dilithion.tools.fuzz.coverage_run import atheris_available, run_atheris
from dilithion.tools.fuzz.engine import run_loop, write_finding
from dilithion.tools.fuzz.registry import TARGETS, target_named

__all__ = ["cli", "main"]

PROG = "dilithion-fuzz"
DEFAULT_RUNS = 1000


def _fail(message: str) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)
    sys.exit(2)


def _corpus_inputs(corpus: Path | None) -> list[bytes]:
    if corpus is None:
        return []
    if not corpus.is_dir():
        _fail(f"--corpus {corpus} is not a directory")
    return [path.read_bytes() for path in sorted(corpus.iterdir()) if path.is_file()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target_name", metavar="TARGET", required=False)
@click.option("--runs", type=int, default=None, help=f"inputs to run, seeds included (default {DEFAULT_RUNS})")
@click.option("--seconds", type=float, default=None, help="run for this long instead of a number of inputs")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the mutation loop")
@click.option("--corpus", type=click.Path(path_type=Path), default=None,
              help="a directory of extra inputs (atheris also stores new ones there)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fuzz-findings"),
              show_default=True, help="where a failing input is written")
@click.option("--engine", type=click.Choice(["auto", "loop", "atheris"]), default="auto", show_default=True,
              help="auto: atheris when installed, else the seeded mutation loop")
@click.option("--list", "list_targets", is_flag=True, help="list the targets and exit")
def cli(target_name: str | None, runs: int | None, seconds: float | None, seed: int, corpus: Path | None,
        out_dir: Path, engine: str, list_targets: bool) -> None:
    """Run the in-process fuzz target TARGET (the counterpart of the C++ fuzz_TARGET)."""
    if list_targets:
        for target in TARGETS.values():
            click.echo(f"{target.name:16} {target.cpp_target:22} {target.subject}")
        return
    if target_name is None:
        _fail("name a TARGET (--list shows them)")
    try:
        target = target_named(target_name)
    except KeyError as exc:
        _fail(exc.args[0])
    if runs is not None and seconds is not None:
        _fail("give --runs or --seconds, not both")
    if (runs is not None and runs < 1) or (seconds is not None and seconds <= 0):
        _fail("--runs and --seconds must be positive")
    if engine == "atheris" and not atheris_available():
        _fail("atheris is not installed (pip install 'dilithion[fuzz]'), use --engine loop")
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    seeds = target.seeds() + _corpus_inputs(corpus)
    if runs is None and seconds is None:
        runs = DEFAULT_RUNS
    if engine == "atheris" or (engine == "auto" and atheris_available()):
        run_atheris(target, seeds, seed, runs, seconds, corpus, out_dir, click.echo)
        return
    result = run_loop(target.name, target.run, seeds, seed, runs=runs, seconds=seconds)
    if result.finding:
        click.echo(result.finding.line(write_finding(result.finding, out_dir)))
        sys.exit(1)
    click.echo(f"ok {target.name}: {result.executions} executions in {result.seconds:.1f} s "
               f"({result.per_second:.0f}/s), {len(seeds)} seeds, engine loop, seed {seed}")


def main() -> None:
    """The command with click's own usage errors turned into one line, exit 2."""
    try:
        cli.main(standalone_mode=False)
    except click.UsageError as exc:
        _fail(exc.format_message())
    except click.Abort:
        _fail("aborted")
