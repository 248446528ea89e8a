"""A gate line and the evidence it rests on.

Every gate line is a :class:`Verdict`; a PASS can only be built from an
:class:`Evidence` that is non-empty (runs or series, nodes, samples, a
measured span), has no gap (a missing metric, a failed sample, a ``--short``
run, a span shorter than the gate needs) and is of the kind the gate needs
(``LAB``: loopback regtest runs of ``dilithion-lab``; ``NETWORK``: a Prometheus
scraping the real network).  Anything else is FAIL "no evidence: <why>", or
NOT RUN where nothing that could answer the gate was given.  The check lives in
:meth:`Verdict.__post_init__`, so no gate can forget it.

``Evidence.build`` names what ran (the node program and results version), so a
later gate can tell a run of the real node from a run of a defective one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Evidence", "EvidenceSet", "Verdict", "LAB", "NETWORK", "PASS", "FAIL", "NOT_RUN",
           "MANUAL", "EvidenceError"]

LAB = "lab"            # loopback regtest runs of dilithion-lab
NETWORK = "network"    # a Prometheus scraping the nodes of a real network
PASS, FAIL, NOT_RUN, MANUAL = "PASS", "FAIL", "NOT RUN", "MANUAL"
VERDICTS = (PASS, FAIL, NOT_RUN, MANUAL)


class EvidenceError(ValueError):
    """A PASS was asked for without evidence that could have shown a failure."""


@dataclass(frozen=True)
class Evidence:
    """What a gate line was measured on.

    ``runs``: scenario runs (lab) or PromQL series (network); ``nodes``: the
    nodes measured; ``samples``: how many data points (blocks, metric samples,
    criteria) the figure comes from; ``span_s``: the measured span, from the
    data; ``gaps``: why this evidence cannot support a PASS (empty when it can).
    """

    kind: str
    runs: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    samples: int = 0
    span_s: float | None = None
    gaps: tuple[str, ...] = ()
    build: str = ""

    def missing(self) -> list[str]:
        """Every reason this evidence cannot carry a PASS (empty: it can)."""
        why = list(self.gaps)
        if not self.runs:
            why.append("no run or series measured")
        if not self.nodes:
            why.append("no node measured")
        if self.samples <= 0:
            why.append("no sample")
        if self.span_s is None or self.span_s <= 0:
            why.append("no measured span")
        return why

    def with_gaps(self, *gaps: str) -> "Evidence":
        return Evidence(self.kind, self.runs, self.nodes, self.samples, self.span_s,
                        self.gaps + tuple(g for g in gaps if g), self.build)

    def describe(self) -> str:
        span = "-" if self.span_s is None else _span(self.span_s)
        nodes = ", ".join(self.nodes) if len(self.nodes) <= 4 else f"{len(self.nodes)} in all"
        return (f"{self.kind}: {', '.join(self.runs) or '-'}; nodes {nodes or '-'};"
                f" {self.samples} samples; span {span}" + (f"; {self.build}" if self.build else ""))


def _span(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


@dataclass(frozen=True)
class Verdict:
    """One gate line.  PASS only with evidence of ``needs`` kind and no gap."""

    name: str
    verdict: str
    measured: str
    criterion: str
    evidence: Evidence | None = None
    needs: str | None = None          # the evidence kind this gate is judged on
    reason: str = ""                  # why FAIL / NOT RUN / MANUAL, when not the figure

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise EvidenceError(f"{self.name}: unknown verdict {self.verdict!r}")
        if self.verdict != PASS:
            return
        if self.evidence is None or self.needs is None:
            raise EvidenceError(f"{self.name}: PASS without evidence")
        if self.evidence.kind != self.needs:
            raise EvidenceError(f"{self.name}: PASS on {self.evidence.kind} evidence, needs"
                                f" {self.needs}")
        if self.evidence.missing():
            raise EvidenceError(f"{self.name}: PASS on incomplete evidence:"
                                f" {'; '.join(self.evidence.missing())}")

    @classmethod
    def judge(cls, name: str, criterion: str, ok: bool, measured, evidence: Evidence,
              needs: str) -> "Verdict":
        """PASS when ``ok`` and the evidence can carry it; otherwise FAIL, with
        "no evidence: ..." when the evidence is what is lacking."""
        measured = _text(measured)
        if evidence.kind != needs:
            return cls(name, FAIL, measured, criterion, evidence, needs,
                       f"no evidence: {evidence.kind} data cannot show this ({needs} gate)")
        missing = evidence.missing()
        if missing:
            return cls(name, FAIL, measured, criterion, evidence, needs,
                       "no evidence: " + "; ".join(missing))
        return cls(name, PASS if ok else FAIL, measured, criterion, evidence, needs)

    @classmethod
    def not_run(cls, name: str, criterion: str, why: str, needs: str | None = None) -> "Verdict":
        return cls(name, NOT_RUN, "-", criterion, None, needs, why)

    @classmethod
    def no_evidence(cls, name: str, criterion: str, why: str, evidence: Evidence | None = None,
                    needs: str | None = None, measured="-") -> "Verdict":
        return cls(name, FAIL, _text(measured), criterion, evidence, needs, f"no evidence: {why}")

    @classmethod
    def manual(cls, name: str, criterion: str) -> "Verdict":
        return cls(name, MANUAL, "-", criterion, None, None, "no program can check this")

    def line(self, width: int = 0) -> str:
        out = f"{self.verdict:<7} {self.name:<{width}}  measured: {self.measured}  criterion:" \
              f" {self.criterion}"
        if self.reason:
            out += f"  [{self.reason}]"
        if self.evidence is not None:
            out += f"  evidence: {self.evidence.describe()}"
        return out


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class EvidenceSet:
    """Evidence gathered over several runs (a gate over every scenario), frozen into
    one :class:`Evidence` once complete.  Owned by the one call that builds a gate."""

    kind: str
    runs: list[str] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    samples: int = 0
    span_s: float = 0.0
    gaps: list[str] = field(default_factory=list)
    builds: set[str] = field(default_factory=set)

    def freeze(self) -> Evidence:
        return Evidence(self.kind, tuple(self.runs), tuple(sorted(self.nodes)), self.samples,
                        self.span_s if self.runs else None, tuple(self.gaps),
                        ", ".join(sorted(self.builds)))
