"""Run one scenario into a folder: start the lab, run, always stop every
process and write ``results.json``, ``report.md`` and the plots, also after a
failure or Ctrl+C (then ``interrupted`` is true and the figures are partial).

``run.json`` is written first and ``results.json`` last (atomically), so a
folder with the first and not the second is a run that was killed midway.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from dilithion.tools.lab import (scenarios_basic, scenarios_checklist,  # noqa: F401 - register
                                 scenarios_faults, scenarios_mixed)
from dilithion.testing.node_process import python_node_binary
from dilithion.tools.lab.lab import Lab, total
from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.leaks import leak_figures
from dilithion.tools.lab.measure import block_summary
from dilithion.tools.lab.plots import write_plots
from dilithion.tools.lab.report import write_report
from dilithion.tools.lab.scenario import SCENARIOS, Run

__all__ = ["run_scenario", "scenario_options", "write_json"]

#: 2: ``options.short``, ``evidence`` (sample failures, missing metrics, sampled
#: span, the node program), missing metrics as null instead of 0.
RESULTS_VERSION = 2


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def scenario_options(name: str, *, short: bool = False, nodes: int | None = None,
                     duration: float | None = None, interval: float | None = None) -> dict:
    if name not in SCENARIOS:
        raise LabError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    sc = SCENARIOS[name]
    opts = {**sc.full, **(sc.short if short else {}), "short": short}
    if nodes is not None:
        if nodes < sc.min_nodes:
            raise LabError(f"scenario {name} needs at least {sc.min_nodes} nodes, not {nodes}")
        opts["nodes"] = nodes
    if duration is not None:
        if "duration" not in opts:
            raise LabError(f"scenario {name} has no duration (only load does)")
        opts["duration"] = duration
    if interval is not None:
        if "interval" not in opts:
            raise LabError(f"scenario {name} has no block interval (only load does)")
        opts["interval"] = interval
    return opts


def _planned_steps(opts: dict) -> int:
    if "duration" in opts:
        return max(1, int(opts["duration"] / opts.get("interval", 5.0)))
    return opts.get("blocks", 1)


def run_scenario(name: str, out: Path, opts: dict, *, seed: int = 0, base_port: int | None = None,
                 node_args: list[str] | None = None, network: str | None = None,
                 progress: bool = True, node_program: list[str] | None = None) -> dict:
    """Run ``name`` with ``opts`` into ``out`` (on the scenario's own network unless
    ``network`` says otherwise); returns the results written.  ``node_program``
    runs another program in place of ``dilithion-node`` (the tests' defective
    nodes); the results' evidence names it as the build."""
    sc = SCENARIOS[name]
    network = network or sc.network
    random.seed(seed)
    out = out.resolve()          # nodes run in out/nodes: a relative datadir would move
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "report.md"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "nodes", ignore_errors=True)      # every run starts from genesis
    meta = {"scenario": name, "options": opts, "seed": seed, "network": network,
            "started": time.time(), "version": RESULTS_VERSION}
    write_json(out / "run.json", meta)
    lab = Lab(out, network=network, base_port=base_port, node_args=node_args,
              sample_interval=opts.get("sample", 2.0), node_program=node_program)
    bar = tqdm(total=_planned_steps(opts), desc=name, unit="step", disable=not progress,
               leave=True, dynamic_ncols=True)
    run = Run(lab, opts, bar)
    status, error = "finished", None
    try:
        sc.run(run)
        lab.sample_now()           # a last sample of every serving node: the sampled span ends here
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except LabError as exc:
        status, error = "error", str(exc)
        raise
    finally:
        bar.close()
        lab.close()
        results = _results(meta, run, status, error)
        write_report(out, results)
        write_plots(out, results)
        write_json(out / "results.json", results)
    return results


def _results(meta: dict, run: Run, status: str, error: str | None) -> dict:
    names = [n.name for n in run.lab.nodes]
    blocks = run.blocks_json()
    summary = block_summary(blocks)
    counters = run.lab.counters()
    errors = total(v["socket_errors"] for v in counters.values())
    summary.update(
        send_timeouts=total(v["send_timeouts"] for v in counters.values()),
        socket_errors=errors,
        socket_errors_per_1000_blocks=(1000 * errors / len(blocks))
        if blocks and errors is not None else None,
        bytes_sent=total(v["bytes_sent"] for v in counters.values()))
    leaks = run.extra.get("leaks") or leak_figures(run.lab.samples)
    verdicts = {c["verdict"] for c in run.criteria}
    if run.extra.get("skipped"):
        verdict = "SKIPPED"
    elif status != "finished":
        verdict = "INCOMPLETE"
    else:
        verdict = "FAIL" if "FAIL" in verdicts or not run.criteria else "PASS"
    return {**meta, "finished": time.time(), "status": status, "error": error,
            "interrupted": status == "interrupted", "verdict": verdict,
            "nodes": names, "parents": run.parents, "summary": summary, "criteria": run.criteria,
            "extra": run.extra, "leaks": leaks, "counters": counters, "events": run.events,
            "blocks": blocks, "samples": run.lab.samples, "evidence": _evidence(run)}


def _evidence(run: Run) -> dict:
    """What the gate needs to know about how the figures were measured."""
    samples = run.lab.samples
    missing = sorted({(s["node"], m) for s in samples for m in s.get("missing", ())})
    times = [s["t"] for s in samples]
    return {"samples": len(samples), "sampled_span_s": (max(times) - min(times)) if times else 0.0,
            "sample_failures": run.lab.sample_failures,
            "missing_metrics": [f"{m} on {n}" for n, m in missing],
            "build": (" ".join(run.lab.node_program) if run.lab.node_program
                      else f"dilithion-node {python_node_binary()}")}
