"""What ``dilithion-diff fuzz`` leaves in ``DIR``: ``found/*.json`` corpora, ``summary.json``
and ``summary.md`` (the same table the command prints)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from .corpus import Step
from .fuzz import Finding, FuzzStats
from .fuzz_inputs import step_json


class FindingWriter:
    """``DIR/found/NNN-<class>-<subject>.json``: ``fresh``, the base chain, the steps."""

    def __init__(self, out_dir: Path, seed: int) -> None:
        self.found = out_dir / "found"
        self.seed = seed
        self.count = 0

    def write_finding(self, finding: Finding, base: list[Step], steps: list[Step],
                      record: dict) -> Path:
        self.found.mkdir(parents=True, exist_ok=True)
        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9]+", "-", finding.subject).strip("-")[:60]
        path = self.found / f"{self.count:03d}-{finding.cls}-{slug}.json"
        date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        before, after = record["size_before"], record["size_after"]
        description = (f"dilithion-diff fuzz --seed {self.seed}, input {record['input']},"
                       f" {date}: {finding.describe()}; minimised from {before[0]} steps and"
                       f" {before[1]} payload bytes to {after[0]} and {after[1]}"
                       + ("" if record["replayed_from_base"] else
                          "; NOTE: it did not come back when replayed from empty datadirs"))
        doc = {"network": "testnet", "description": description,
               "steps": [{"name": "fresh", "fresh": True}] + [step_json(s) for s in base]
               + [step_json(s) for s in steps]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path


def summary_rows(stats: FuzzStats) -> list[tuple[str, str]]:
    """The summary table: (what, value)."""
    rows = [("seed", str(stats.seed)), ("executions", str(stats.executions)),
            ("steps", str(stats.steps)),
            ("executions/s", f"{stats.exec_per_s:.2f}"),
            ("seconds executing", f"{stats.fuzz_seconds:.1f}"),
            ("seconds minimising", f"{stats.minimise_seconds:.1f}"),
            ("seconds starting and rebasing",
             f"{stats.setup_seconds:.1f} ({stats.rebases} rebases)")]
    for title, counter in (("UNEXPLAINED", stats.unexplained), ("known", stats.known),
                           ("crashes", stats.crashes), ("hangs", stats.hangs)):
        rows.append((title, str(sum(counter.values()))))
        rows += [(f"  {title} {k}", str(v)) for k, v in sorted(counter.items())]
    rows.append(("findings written", str(len(stats.findings))))
    rows.append(("harness errors", str(len(stats.harness_errors))))
    if stats.aborted:
        rows.append(("ABORTED", stats.aborted))
    return rows


def format_table(stats: FuzzStats) -> str:
    rows = summary_rows(stats)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def write_summary(out_dir: Path, header: dict, stats: FuzzStats) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**header, "seed": stats.seed, "executions": stats.executions, "steps": stats.steps,
           "exec_per_s": round(stats.exec_per_s, 3), "fuzz_seconds": round(stats.fuzz_seconds, 1),
           "minimise_seconds": round(stats.minimise_seconds, 1),
           "setup_seconds": round(stats.setup_seconds, 1), "rebases": stats.rebases,
           "unexplained": dict(stats.unexplained), "known": dict(stats.known),
           "crashes": dict(stats.crashes), "hangs": dict(stats.hangs),
           "findings": stats.findings, "harness_errors": stats.harness_errors,
           "aborted": stats.aborted, "inputs_digest": stats.inputs_digest}
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# dilithion-diff fuzz: {header['reference']} against {header['python']}", "",
             f"Started {header['started']}.", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {k.strip()} | {v} |" for k, v in summary_rows(stats)]
    if stats.findings:
        lines += ["", "## Findings", "", "| class | subject | step | input | steps, bytes before"
                  " | after | corpus |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in stats.findings:
            lines.append(f"| {f['class']} | {f['subject']} | {f['step']} | {f['input']} |"
                         f" {f['size_before']} | {f['size_after']} | {Path(f['file']).name} |")
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")


__all__ = ["FindingWriter", "format_table", "summary_rows", "write_summary"]
