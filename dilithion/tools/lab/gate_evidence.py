"""What the lab's gate lines rest on: one run's evidence, several runs' evidence
merged, and the small readers every gate module shares (``gate``, ``gate_faults``)."""
from __future__ import annotations

from dilithion.tools.lab.verdict import LAB, Evidence, EvidenceSet, Verdict

__all__ = ["lab_evidence"]


def lab_evidence(name: str, r: dict, *, samples: int | None = None, sampled: bool = True,
                 metrics: tuple[str, ...] = ()) -> Evidence:
    """What one run shows: its nodes, ``samples`` data points (default: its
    resource/metric samples), the span its samples cover, and every gap —
    a ``--short`` run, results that record no evidence (before version 2), and
    when the gate reads sampled figures (``sampled``) failed samples and the
    ``metrics`` it reads that a node did not export."""
    ev = r.get("evidence")
    gaps = []
    if ev is None or "short" not in r["options"]:
        gaps.append(f"{name}: results version {r.get('version', 1)} record no evidence"
                    " (failed samples, missing metrics, short or not): run it again")
        ev = ev or {}
    if r["options"].get("short"):
        gaps.append(f"{name} is a --short run")
    if sampled:
        failures = ev.get("sample_failures") or []
        if failures:
            first = failures[0]
            gaps.append(f"{name}: {len(failures)} failed sample(s) ({first['node']}:"
                        f" {first['error']})")
        absent = [m for m in ev.get("missing_metrics") or [] if m.split(" on ")[0] in metrics]
        if absent:
            gaps.append(f"{name}: not exported: " + ", ".join(absent))
    return Evidence(LAB, (name,), tuple(r["nodes"]),
                    ev.get("samples", 0) if samples is None else samples,
                    ev.get("sampled_span_s"), tuple(gaps), ev.get("build", ""))


def _merge(evidences: list[Evidence]) -> Evidence:
    acc = EvidenceSet(LAB)
    for e in evidences:
        acc.runs += e.runs
        acc.nodes |= {f"{e.runs[0]}/{n}" for n in e.nodes} if e.runs else set(e.nodes)
        acc.samples += e.samples
        acc.span_s += e.span_s or 0.0
        acc.gaps += e.gaps
        if e.build:
            acc.builds.add(e.build)
    return acc.freeze()


def _crit(r: dict | None, prefix: str) -> dict | None:
    if r is None:
        return None
    return next((c for c in r["criteria"] if c["name"].startswith(prefix)), None)


def _n(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _not_run(name: str, criterion: str, scenario: str) -> Verdict:
    return Verdict.no_evidence(name, criterion, f"scenario {scenario} not run", needs=LAB)
