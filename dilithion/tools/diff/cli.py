"""``dilithion-diff``: the command line (``run``, ``fuzz``, ``mine-corpus``).

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click
from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.testing.cpp_node import CppNode, check_binary
from dilithion.testing.node_process import PythonNode, TargetError
from dilithion.testing.testnet_blocks import DEFAULT_VECTORS, MINED_FILE

from .catalogue import Catalogue, CatalogueError, check_markdown, load_catalogue
from .corpus import CorpusError, load_corpus
from .fuzz import FUZZ_STEP_TIMEOUT_S, Fuzzer
from .fuzz_inputs import BlockNames, InputGenerator, load_seeds
from .fuzz_report import FindingWriter, format_table, write_summary
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


def node_options(step_timeout: float, out_default: Path):
    """The options ``run`` and ``fuzz`` share: the two sides, the catalogue, the step
    timeout and where the reports go (the values reach :class:`NodeChoice`)."""
    options = [
        click.option("--cpp", "cpp_path", default=None, metavar="PATH",
                     help="the C++ dilithion-node binary (default: $DILITHION_CPP_NODE)"),
        click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
                     default=out_default, show_default=True, help="where the reports go"),
        click.option("--self", "self_mode", is_flag=True,
                     help="Python against Python (the reference side is our unmutated node); the"
                          " catalogue still explains differences, as against the C++ node"),
        click.option("--self-args", default="", metavar="ARGS",
                     help="with --self: extra dilithion-node arguments for the reference side"),
        click.option("--catalogue", "catalogue_path", type=click.Path(path_type=Path),
                     default=None, show_default="docs/cpp-divergences.toml",
                     help="the divergence catalogue"),
        click.option("--no-catalogue", is_flag=True,
                     help="explain nothing: every difference is UNEXPLAINED (with --self: the"
                          " check that the harness is deterministic)"),
        click.option("--step-timeout", default=step_timeout, show_default=True,
                     type=click.FloatRange(1, 600),
                     help="seconds a node may take to answer a step before it counts as hung"),
        click.option("--python-program", default="", metavar="CMD",
                     help="run CMD in place of our dilithion-node on the Python side (same"
                          " arguments appended): how the harness's own tests run a mutant"),
    ]

    def wrap(func):
        for option in reversed(options):
            func = option(func)
        return func
    return wrap


@dataclass
class NodeChoice:
    """Which two nodes a command runs, from :func:`node_options`."""

    cpp_path: str | None
    self_mode: bool
    self_args: str
    catalogue_path: Path | None
    no_catalogue: bool
    step_timeout: float
    python_program: str
    binary: Path | None = field(default=None, init=False)
    catalogue: Catalogue | None = field(default=None, init=False)

    def check(self) -> Catalogue:
        """Everything checked before a node starts: the flags, the C++ binary (none with
        --self) and the catalogue (``--catalogue``, default the real one, also with --self:
        a mutant of our node must not be excused by it; empty with --no-catalogue);
        UsageFailure, TargetError or CatalogueError say what is wrong."""
        if self.self_mode and self.cpp_path:
            raise UsageFailure("--self and --cpp exclude each other")
        if self.no_catalogue and self.catalogue_path is not None:
            raise UsageFailure("--catalogue and --no-catalogue exclude each other")
        self.binary = None if self.self_mode else check_binary(
            self.cpp_path or os.environ.get("DILITHION_CPP_NODE"))
        self.catalogue = (Catalogue([]) if self.no_catalogue
                          else load_catalogue(self.catalogue_path or CATALOGUE))
        return self.catalogue

    @property
    def catalogue_name(self) -> str:
        """What report.json and summary.json say about the catalogue used."""
        return "none (--no-catalogue)" if self.no_catalogue else str(self.catalogue_path or CATALOGUE)

    def runner(self, work: Path, params: ChainParams) -> tuple[Runner, str]:
        """Both nodes (not started) in a runner with the catalogue, and the reference's name
        (after :meth:`check`)."""
        ref = (diff_python_node("python-b", work, shlex.split(self.self_args)) if self.self_mode
               else CppNode("cpp", work, self.binary))
        py = diff_python_node("python", work, program=shlex.split(self.python_program))
        return (Runner(ref, py, self.catalogue, params, self.step_timeout),
                "Python (--self)" if self.self_mode else f"C++ {self.binary}")


def copy_logs(work: Path, out_dir: Path) -> None:
    """The node logs into the reports directory, and the work directory removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for log in work.glob("*.log"):
        shutil.copy(log, out_dir / log.name)
    shutil.rmtree(work, ignore_errors=True)


@cli.command()
@click.option("--corpus", "corpora", multiple=True, type=click.Path(path_type=Path),
              metavar="FILE", help="a JSON corpus (repeatable; default: the two built-in corpora)")
@node_options(step_timeout=10.0, out_default=Path("diff-report"))
def run(corpora, out_dir, **nodes) -> None:
    """Run the corpus on both nodes and report every difference."""
    try:
        code = _run(NodeChoice(**nodes), corpora, out_dir)
    except (CorpusError, CatalogueError, TargetError, UsageFailure) as exc:
        _fail(str(exc))
    sys.exit(code)


def diff_python_node(name: str, work: Path, extra_args=(), program=None) -> PythonNode:
    """Our node as the diff runs it: testnet, on loopback only, dialling nobody, RandomX
    in light mode unless the environment says otherwise (the hashes are the same).
    ``program`` runs another command in its place (a mutant, in the harness's tests)."""
    return PythonNode(name, work, extra_args, network="testnet", bind="127.0.0.1", connect=[],
                      light_randomx=True, node_program=program or None)


def _run(nodes: NodeChoice, corpora, out_dir: Path) -> int:
    catalogue = nodes.check()
    files = list(corpora) or list(BUILTIN_CORPORA)
    loaded = [load_corpus(f) for f in files]                # every file checked before a start
    params = ChainParams.testnet()
    work = Path(tempfile.mkdtemp(prefix="dilithion-diff-"))
    runner, reference = nodes.runner(work, params)
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
        copy_logs(work, out_dir)
    header = {"reference": reference, "python": "Python", "catalogue": nodes.catalogue_name,
              "started": started, "seconds": time.monotonic() - t0,
              "corpora": [str(f) for f in files]}
    counts = write_reports(out_dir, header, results, catalogue)
    click.echo(f"{counts['same']} same, {counts['known']} known, {counts['unexplained']}"
               f" UNEXPLAINED; reports in {out_dir}/report.md and report.json")
    return 1 if counts["unexplained"] else 0


@cli.command()
@click.option("--seconds", type=click.FloatRange(1), default=None, help="run for this long")
@click.option("--runs", type=click.IntRange(1), default=None, help="run this many executions")
@click.option("--seed", type=int, default=None,
              help="the inputs' seed (default: from the clock; logged, in summary.json)")
@node_options(step_timeout=FUZZ_STEP_TIMEOUT_S, out_default=Path("fuzz-out"))
def fuzz(seconds, runs, seed, out_dir, **nodes) -> None:
    """Generated inputs to both nodes; each unexplained difference, crash or hang minimised
    into DIR/found/ (docs/DIFF.md, "Differential fuzzing")."""
    try:
        if (seconds is None) == (runs is None):
            raise UsageFailure("give exactly one of --seconds N and --runs N")
        code = _fuzz(NodeChoice(**nodes), seconds, runs, seed, out_dir)
    except (CatalogueError, CorpusError, TargetError, UsageFailure) as exc:
        _fail(str(exc))
    sys.exit(code)


def _fuzz(nodes: NodeChoice, seconds, runs, seed, out_dir: Path) -> int:
    nodes.check()
    seed = int(time.time()) if seed is None else seed
    click.echo(f"dilithion-diff fuzz: seed {seed}", err=True)
    params = ChainParams.testnet()
    names = BlockNames(params)
    seeds = load_seeds(BUILTIN_CORPUS, DEFAULT_VECTORS, MINED_FILE, names)
    work = Path(tempfile.mkdtemp(prefix="dilithion-fuzz-"))
    runner, reference = nodes.runner(work, params)
    fuzzer = Fuzzer(runner, seeds, InputGenerator(seeds, seed), names,
                    FindingWriter(out_dir, seed))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    bar = click.progressbar(length=runs if runs else int(seconds), file=sys.stderr,
                            label="fuzz", show_eta=True, item_show_func=lambda text: text)

    def progress(stats, elapsed: float) -> None:
        done = stats.executions if runs else min(int(elapsed), int(seconds))
        bar.update(done - bar.pos, f"{stats.executions} exec, {stats.exec_per_s:.2f} exec/s,"
                                   f" {len(stats.findings)} found")
    try:
        fuzzer.start()
        stats = fuzzer.run(runs, seconds, progress)
    except TargetError as exc:
        raise UsageFailure(f"a node did not start: {exc}") from None
    finally:
        bar.render_finish()
        runner.close()
        copy_logs(work, out_dir)
    header = {"reference": reference, "python": "Python", "catalogue": nodes.catalogue_name,
              "started": started}
    write_summary(out_dir, header, stats)
    click.echo(format_table(stats))
    click.echo(f"summary in {out_dir}/summary.md and summary.json")
    return 1 if stats.failing else 0


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
