"""``dilithion-lab``: list / run SCENARIO / run all / gate DIR / gate --prometheus URL.

Bad input and environment problems print one ``error:`` line and exit 2;
a gate with a FAIL exits 1; Ctrl+C stops every process the lab started,
writes what it has and exits 130.
"""
from __future__ import annotations

import faulthandler
import signal
import sys
import time
from pathlib import Path

import click
from loguru import logger

from dilithion.tools.lab.gate import evaluate_results, failed, format_gates
from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.prometheus import evaluate_prometheus
from dilithion.tools.lab.report import summary_table
from dilithion.tools.lab.results_io import load_results
from dilithion.tools.lab.runner import run_scenario, scenario_options, write_json
from dilithion.tools.lab.scenario import SCENARIOS

__all__ = ["cli", "main"]


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log the lab's own debug lines.")
def cli(verbose: bool) -> None:
    """The mainnet-readiness lab: scenarios on real nodes, measured, gated (docs/LAB.md)."""
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING")
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a
    # run that does not stop is waiting (the run goes on afterwards).
    faulthandler.register(signal.SIGUSR1, all_threads=True)


@cli.command("list")
def list_cmd() -> None:
    """Print every scenario: name, what it does, its pass criteria."""
    for sc in SCENARIOS.values():
        click.echo(f"{sc.name}\t{sc.summary}\tpass: {sc.criteria}")


@cli.command("run")
@click.argument("scenario")
@click.option("--nodes", type=click.IntRange(1, 64), default=None, help="Node processes.")
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Seconds (load only; default 600; 3600 for the 1-hour load gate).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between blocks (load only; default 60, the testnet's rate).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder (default lab-results/<scenario or all>-<time>).")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--short", is_flag=True, help="The short versions the test suite runs.")
@click.option("--base-port", type=click.IntRange(1024, 65000), default=None,
              help="Give node i the ports BASE+3i..BASE+3i+2 (default: free ports).")
@click.option("--node-arg", "node_args", multiple=True,
              help="Extra dilithion-node argument for every node (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def run_cmd(scenario: str, nodes, duration, interval, out, seed, short, base_port, node_args,
            no_progress) -> None:
    """Run SCENARIO (or `all`) on real nodes and write results.json, report.md and plots."""
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    try:
        plans = {n: scenario_options(n, short=short, nodes=nodes,
                                     duration=duration if n == "load" or scenario != "all"
                                     else None,
                                     interval=interval if n == "load" or scenario != "all"
                                     else None) for n in names}
    except LabError as exc:
        _fail(str(exc))
    out = out or Path("lab-results") / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    done = []
    try:
        for name in names:
            folder = out / name if scenario == "all" else out
            done.append(run_scenario(name, folder, plans[name], seed=seed, base_port=base_port,
                                     node_args=list(node_args), progress=not no_progress))
            if done[-1]["verdict"] == "SKIPPED":
                click.echo(f"{name}: SKIPPED ({done[-1]['extra']['skipped']})")
    except KeyboardInterrupt:
        click.echo(f"interrupted: every process stopped; partial results in {out}", err=True)
        sys.exit(130)
    except LabError as exc:
        _fail(f"{exc} (results so far in {out})")
    if scenario == "all":
        write_json(out / "summary.json", [{k: r[k] for k in ("scenario", "verdict", "summary")}
                                          for r in done])
        (out / "summary.md").write_text(summary_table(done))
    click.echo(summary_table(done))
    click.echo(f"results: {out}")


@cli.command("gate")
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--prometheus", "prom_url", default=None, metavar="URL",
              help="Evaluate the gates from a live Prometheus server instead.")
@click.option("--window", default="1h", show_default=True,
              help="How far back to look; the gates use the span the data covers inside it.")
def gate_cmd(folders, prom_url, window) -> None:
    """One line per gate: PASS, FAIL, NOT RUN or MANUAL, each with its evidence;
    exit 0 only when nothing FAILs."""
    if bool(folders) == bool(prom_url):
        _fail("give results folder(s) or --prometheus URL (one of the two)")
    try:
        gates = (evaluate_prometheus(prom_url, window) if prom_url
                 else evaluate_results(load_results(list(folders))))
    except LabError as exc:
        _fail(str(exc))
    click.echo(format_gates(gates))
    sys.exit(1 if failed(gates) else 0)


def main() -> None:
    cli()
