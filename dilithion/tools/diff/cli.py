"""``dilithion-diff``: the command line (``run``, ``mine-corpus``).

Exit status: 0 nothing unexplained, 1 an unexplained difference, 2 the run
could not be made (bad corpus, missing binary, a node that never starts); the
last two print one line, never a traceback.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.testing.cpp_node import CppNode, check_binary
from dilithion.testing.node_process import PythonNode, TargetError
from dilithion.testing.testnet_blocks import DEFAULT_VECTORS

from .catalogue import Catalogue, CatalogueError, check_markdown, load_catalogue
from .corpus import CorpusError, load_corpus
from .report import write_reports
from .runner import Runner

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
BUILTIN_CORPUS = PACKAGE_DATA / "builtin-corpus.json"
BUILTIN_DEPTH_CORPUS = PACKAGE_DATA / "builtin-depth-corpus.json"
BUILTIN_CORPORA = (BUILTIN_CORPUS, BUILTIN_DEPTH_CORPUS)
REPO = Path(__file__).resolve().parents[3]
CATALOGUE = REPO / "docs" / "cpp-divergences.toml"


class UsageFailure(Exception):
    """One line for the user, exit 2."""


def _fail(message: str) -> None:
    click.echo(f"dilithion-diff: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def cli(log_level: str) -> None:
    """Differential testing of the Python node against the C++ node (docs/DIFF.md)."""
    logger.remove()
    logger.add(sys.stderr, level=log_level)


@cli.command()
@click.option("--cpp", "cpp_path", default=None, metavar="PATH",
              help="the C++ dilithion-node binary (default: $DILITHION_CPP_NODE)")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(path_type=Path),
              metavar="FILE", help="a JSON corpus (repeatable; default: the two built-in corpora)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("diff-report"), show_default=True, help="where the reports go")
@click.option("--self", "self_mode", is_flag=True,
              help="Python against Python (the reference side is our unmutated node); the"
                   " catalogue still explains differences, as against the C++ node")
@click.option("--self-args", default="", metavar="ARGS",
              help="with --self: extra dilithion-node arguments for the reference side")
@click.option("--catalogue", "catalogue_path", type=click.Path(path_type=Path),
              default=CATALOGUE, show_default=True, help="the divergence catalogue")
@click.option("--no-catalogue", is_flag=True,
              help="explain nothing: every difference is UNEXPLAINED (with --self: the check"
                   " that the harness is deterministic)")
@click.option("--step-timeout", default=10.0, show_default=True, type=click.FloatRange(1, 600),
              help="seconds a node may take to answer a step before it counts as hung")
@click.option("--python-program", default="", metavar="CMD",
              help="run CMD in place of our dilithion-node on the Python side (same arguments"
                   " appended): how the harness's own tests run a mutant of our node")
@click.pass_context
def run(ctx, cpp_path, corpora, out_dir, self_mode, self_args, catalogue_path, no_catalogue,
        step_timeout, python_program) -> None:
    """Run the corpus on both nodes and report every difference."""
    try:
        if no_catalogue and (ctx.get_parameter_source("catalogue_path")
                             is not click.core.ParameterSource.DEFAULT):
            raise UsageFailure("--catalogue and --no-catalogue exclude each other")
        code = _run(cpp_path, corpora, out_dir, self_mode, self_args,
                    None if no_catalogue else catalogue_path, step_timeout,
                    shlex.split(python_program))
    except (CorpusError, CatalogueError, TargetError, UsageFailure) as exc:
        _fail(str(exc))
    sys.exit(code)


def diff_python_node(name: str, work: Path, extra_args=(), program=None) -> PythonNode:
    """Our node as the diff runs it: testnet, on loopback only, dialling nobody, RandomX
    in light mode unless the environment says otherwise (the hashes are the same).
    ``program`` runs another command in its place (a mutant, in the harness's tests)."""
    return PythonNode(name, work, extra_args, network="testnet", bind="127.0.0.1", connect=[],
                      light_randomx=True, node_program=program or None)


def _run(cpp_path, corpora, out_dir, self_mode, self_args, catalogue_path, step_timeout,
         python_program=()) -> int:
    if self_mode and cpp_path:
        raise UsageFailure("--self and --cpp exclude each other")
    binary = None if self_mode else check_binary(cpp_path or os.environ.get("DILITHION_CPP_NODE"))
    files = list(corpora) or list(BUILTIN_CORPORA)
    loaded = [load_corpus(f) for f in files]                # every file checked before a start
    catalogue = Catalogue([]) if catalogue_path is None else load_catalogue(catalogue_path)
    params = ChainParams.testnet()
    work = Path(tempfile.mkdtemp(prefix="dilithion-diff-"))
    ref = (diff_python_node("python-b", work, shlex.split(self_args)) if self_mode
           else CppNode("cpp", work, binary))
    runner = Runner(ref, diff_python_node("python", work, program=python_program), catalogue,
                    params, step_timeout)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    results = []
    try:
        runner.start()
        for corpus in loaded:
            results += runner.run_corpus(corpus)
        if loaded[-1].steps[-1].action != "restart":    # a final restart just compared storage
            results.append(runner.final_storage("end of run"))
    finally:
        runner.close()
        out_dir.mkdir(parents=True, exist_ok=True)
        for log in work.glob("*.log"):
            shutil.copy(log, out_dir / log.name)
        shutil.rmtree(work, ignore_errors=True)
    header = {"reference": "Python (--self)" if self_mode else f"C++ {binary}",
              "python": "Python", "catalogue": str(catalogue_path or "none (--no-catalogue)"),
              "started": started, "seconds": time.monotonic() - t0,
              "corpora": [str(f) for f in files]}
    counts = write_reports(out_dir, header, results, catalogue)
    click.echo(f"{counts['same']} same, {counts['known']} known, {counts['unexplained']}"
               f" UNEXPLAINED; reports in {out_dir}/report.md and report.json")
    return 1 if counts["unexplained"] else 0


@cli.command("mine-corpus")
@click.option("--vectors", type=click.Path(path_type=Path), default=DEFAULT_VECTORS,
              show_default=True, help="the C++ vector chain (cpp-testnet-chain.json)")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
def mine_corpus(vectors: Path, threads: int) -> None:
    """Mine the built-in corpora's blocks that are missing and rewrite both corpus files."""
    from .builtin import write_builtin_corpora
    from .mine import mine_missing

    if not vectors.is_file():
        _fail(f"C++ vectors {vectors}: no such file")
    mined = mine_missing(vectors, threads=threads)
    write_builtin_corpora(vectors, mined, *BUILTIN_CORPORA)
    click.echo(f"wrote {' and '.join(str(f) for f in BUILTIN_CORPORA)}")


@cli.command("check-catalogue")
@click.option("--catalogue", "catalogue_path", type=click.Path(path_type=Path),
              default=CATALOGUE, show_default=True)
def check_catalogue(catalogue_path: Path) -> None:
    """Check the catalogue against docs/CPP-DIVERGENCES.md (same rows, both ways)."""
    try:
        catalogue = load_catalogue(catalogue_path)
    except CatalogueError as exc:
        _fail(str(exc))
    problems = check_markdown(catalogue, (catalogue_path.parent / "CPP-DIVERGENCES.md").read_text())
    for p in problems:
        click.echo(p)
    sys.exit(1 if problems else 0)
