"""``report.json`` (everything, for machines) and ``report.md`` (one table, for people)."""
from __future__ import annotations

import json
from pathlib import Path

from .catalogue import Catalogue
from .runner import StepResult


def summary_counts(results: list[StepResult]) -> dict[str, int]:
    counts = {"same": 0, "known": 0, "unexplained": 0}
    for r in results:
        counts["unexplained" if r.unexplained else "same" if r.outcome == "same" else "known"] += 1
    return counts


def write_reports(out_dir: Path, header: dict, results: list[StepResult],
                  catalogue: Catalogue) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = summary_counts(results)
    hit = sorted({d["known"] for r in results for d in r.differences if d["known"]})
    unused = [e.id for e in catalogue.entries if e.exercised and e.id not in hit]
    doc = {**header, "counts": counts, "catalogue_entries_matched": hit,
           "exercised_entries_not_matched": unused,
           "steps": [{"corpus": r.corpus, "step": r.index, "name": r.name, "on": r.on,
                      "outcome": r.outcome,
                      "expect_same_failed": r.expect_same_failed,
                      "differences": r.differences, "observations": r.observations}
                     for r in results]}
    (out_dir / "report.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    lines = [f"# dilithion-diff: {header['reference']} against {header['python']}", "",
             f"Run {header['started']} ({header['seconds']:.0f} s). Steps: {counts['same']} same,"
             f" {counts['known']} differ with a known reason, {counts['unexplained']} UNEXPLAINED.",
             "", "| corpus | step | name | outcome |", "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {Path(r.corpus).name} | {r.index} | {r.name} | {r.outcome} |")
    bad = [r for r in results if r.unexplained]
    if bad:
        lines += ["", "## Unexplained differences", ""]
        for r in bad:
            lines.append(f"### {Path(r.corpus).name} step {r.index}: {r.name} (`{r.on}`)")
            for k in r.expect_same_failed:
                lines.append(f"* `expect_same` names `{k}` but it differs")
            for d in r.differences:
                if d["known"] is None:
                    lines.append(f"* `{d['kind']}` `{d['subject']}`: C++ side"
                                 f" `{json.dumps(d['cpp'], default=str)[:300]}`,"
                                 f" Python `{json.dumps(d['python'], default=str)[:300]}`")
            for side, obs in r.observations.items():
                if obs.get("log_tail"):
                    lines += [f"", f"{side} log tail:", "```", obs["log_tail"], "```"]
    lines += ["", "## Catalogue", "", "Entries matched: " + (", ".join(hit) or "none") + "."]
    if hit:
        lines += ["", "| entry | steps where it explained a difference |", "| --- | --- |"]
        for entry_id in hit:
            where = [f"{Path(r.corpus).name} {r.index}" for r in results
                     if any(d["known"] == entry_id for d in r.differences)]
            lines.append(f"| {entry_id} | {', '.join(where)} |")
    if unused:
        lines.append("Entries marked exercised but not matched in this run: " + ", ".join(unused)
                     + ".")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return counts
