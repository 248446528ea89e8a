"""Recorded ``dilithion-lab`` results for the gate tests, and the edits a test
makes to them, each named for what it stands for.

``tests/data/lab/*.json`` are one real ``dilithion-lab run all --short`` (results
version 2, 2026-12-07, this machine) trimmed: the last sample of each node and
the first three blocks kept; every other figure (summary, criteria, counters,
evidence) as written.  ``slow-peer``, ``peer-kill``, ``partition``, ``load`` and
``regions`` were recorded again (same trimming, one ``--short`` run each, same
day) when those scenarios got the checklist's faults (a peer that stops
reading, a kill inside a block frame, a silent partition, fetching peers, the
three regions), so they carry the criteria and extras the fault gate lines
read (``stuck_link_send_timeouts``, ``miner_held_s``, ...); the build field names
the venv's ``dilithion-node`` relative to the checkout, as the others do.  :func:`full_set` is the same runs with what only full-length runs
reach edited in (said there); :func:`write_run_all` lays results out as
``dilithion-lab run all`` does (one folder per scenario, ``run.json`` then
``results.json``).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from dilithion.tools.lab.lab import SAMPLED_METRICS

DATA = Path(__file__).parent / "data" / "lab"


def recorded() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))}


def full_set() -> dict[str, dict]:
    """The recorded runs as full-length runs would have written them.  Edited: not
    short; every run's sampled span set to its own duration (a short peer-kill or
    partition run ends before a second sample); line 10 complete blocks; load an hour long (3,600 s sampled,
    720 samples) with 52 peers and its leak criteria decided PASS."""
    results = copy.deepcopy(recorded())
    for r in results.values():
        if r["verdict"] == "SKIPPED":
            continue
        r["options"]["short"] = False
        r["evidence"]["sampled_span_s"] = round(r["finished"] - r["started"], 1)
    results["line"]["summary"]["complete"] = 10
    load = results["load"]
    load["options"]["duration"] = 3600.0
    load["evidence"].update(sampled_span_s=3600.0, samples=720)
    load["extra"]["concurrent_peers"] = 52
    for c in load["criteria"]:
        if c["verdict"] == "N/A":
            c["verdict"] = "PASS"
    return results


def without_metric(r: dict, metric: str, node: str = "n1") -> dict:
    """``r`` as the runner writes it when ``node`` does not export ``metric``: its
    samples and last counters hold None (missing, not 0), the totals are None,
    a criterion built on it measured nothing and failed, and the run's evidence
    names the missing metric."""
    r = copy.deepcopy(r)
    key = SAMPLED_METRICS[metric]
    for s in r["samples"]:
        if s["node"] == node:
            s[key] = None
            s["missing"] = [metric]
    r["counters"][node][key] = None
    summary_key = {"send_timeouts": "send_timeouts", "socket_errors": "socket_errors",
                   "bytes_sent": "bytes_sent"}.get(key)
    if summary_key:
        r["summary"][summary_key] = None
    crit = {"send_timeouts": "send timeouts", "socket_errors": "socket errors"}.get(key)
    for c in r["criteria"]:
        if crit and c["name"].startswith(crit):
            c["measured"], c["verdict"] = None, "FAIL"
            r["verdict"] = "FAIL"
    r["evidence"]["missing_metrics"] = sorted(set(r["evidence"]["missing_metrics"])
                                              | {f"{metric} on {node}"})
    return r


def write_run_all(folder: Path, results: dict[str, dict]) -> Path:
    """``results`` laid out as ``dilithion-lab run all --out folder`` writes them."""
    for name, r in results.items():
        sub = folder / name
        sub.mkdir(parents=True)
        meta = {k: r[k] for k in ("scenario", "options", "seed", "network", "started", "version")}
        (sub / "run.json").write_text(json.dumps(meta))
        (sub / "results.json").write_text(json.dumps(r))
    return folder
