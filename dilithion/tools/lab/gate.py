"""The checklist's gates and decision tree, evaluated on lab results.

Each gate says PASS, FAIL or MANUAL (what no program can check), the measured
value and the criterion.  A gate whose scenario is missing from the results
FAILs ("not run"): the checklist asks for every one of them.
"""
from __future__ import annotations

from dataclasses import dataclass

from dilithion.tools.lab.leaks import LEAK_CRITERIA, LEAK_LIMITS_TEXT

__all__ = ["GateResult", "evaluate_results", "format_gates", "FAILURE_SCENARIOS"]

FAILURE_SCENARIOS = ("slow-peer", "peer-kill", "partition", "latency", "burst")
DAY_S = 86400.0


@dataclass
class GateResult:
    name: str
    verdict: str            # PASS / FAIL / MANUAL
    measured: str
    criterion: str


def _crit(r: dict | None, prefix: str) -> dict | None:
    if r is None:
        return None
    return next((c for c in r["criteria"] if c["name"].startswith(prefix)), None)


def _n(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _check(name: str, criterion: str, ok: bool, measured) -> GateResult:
    return GateResult(name, "PASS" if ok else "FAIL", _n(measured), criterion)


def _not_run(name: str, criterion: str, scenario: str) -> GateResult:
    return GateResult(name, "FAIL", f"scenario {scenario} not run", criterion)


def evaluate_results(results: dict[str, dict]) -> list[GateResult]:
    """The gates over ``results`` (scenario -> results); a SKIPPED run counts as not run."""
    results = {k: r for k, r in results.items() if r["verdict"] != "SKIPPED"}
    g: list[GateResult] = []
    line, load = results.get("line"), results.get("load")
    if line is None:
        for name, crit in (("blocks across 3 nodes", "10+ blocks over 3+ nodes"),
                           ("every block to every node", "<= 10 s"),
                           ("average propagation", "< 5 s"),
                           ("CPU spike during broadcast", "< 10 %")):
            g.append(_not_run(name, crit, "line"))
    else:
        s = line["summary"]
        g.append(_check("blocks across 3 nodes", "10+ blocks over 3+ nodes",
                        s["complete"] >= 10 and len(line["nodes"]) >= 3,
                        f"{s['complete']} blocks over {len(line['nodes'])} nodes"))
        g.append(_check("every block to every node", "<= 10 s",
                        s["max_s"] is not None and s["max_s"] <= 10, f"max {_n(s['max_s'])} s"))
        g.append(_check("average propagation", "< 5 s",
                        s["mean_s"] is not None and s["mean_s"] < 5, f"mean {_n(s['mean_s'])} s"))
        cpu = _crit(line, "relaying node CPU")
        g.append(_check("CPU spike during broadcast", "< 10 %",
                        cpu is not None and cpu["verdict"] == "PASS",
                        f"{_n(cpu['measured']) if cpu else None} %"))
    ran = [r for r in results.values() if r["summary"]["blocks"]]
    rates = [r["summary"]["success_rate"] for r in ran]
    g.append(_check("block propagation success rate", "100% in every scenario",
                    bool(rates) and min(rates) == 1.0,
                    f"min {_n(min(rates)) if rates else None} over {len(rates)} scenario(s)"))
    timeouts = sum(r["summary"]["send_timeouts"] for r in results.values())
    g.append(_check("send timeouts", "0 (timeout rate 0%)", bool(results) and timeouts == 0,
                    f"{timeouts:g}"))
    for sc in FAILURE_SCENARIOS:
        r = results.get(sc)
        if r is None:
            g.append(_not_run(f"scenario {sc}", "all criteria pass", sc))
        else:
            failed = [c["name"] for c in r["criteria"] if c["verdict"] != "PASS"]
            g.append(_check(f"scenario {sc}", "all criteria pass", r["verdict"] == "PASS",
                            "all pass" if not failed else "failed: " + "; ".join(failed)))
    if load is None:
        for name, crit in (("50+ concurrent peers", ">= 50"),
                           ("no memory, CPU or descriptor leaks", LEAK_LIMITS_TEXT),
                           ("24-hour run", ">= 24 h")):
            g.append(_not_run(name, crit, "load"))
    else:
        peers = load["extra"].get("concurrent_peers")
        g.append(_check("50+ concurrent peers", ">= 50", peers is not None and peers >= 50, peers))
        leak = [c for c in load["criteria"] if c["name"] in LEAK_CRITERIA]
        missing = [n for n in LEAK_CRITERIA if n not in {c["name"] for c in leak}]
        bad = [c for c in leak if c["verdict"] != "PASS"]
        g.append(_check("no memory, CPU or descriptor leaks", LEAK_LIMITS_TEXT, not missing and not bad,
                        "; ".join([f"{c['name']} {_n(c['measured'])} ({c['verdict']})" for c in leak]
                                  + [f"{n}: not recorded" for n in missing])))
        hours = load["options"].get("duration", 0) / 3600
        g.append(_check("24-hour run", ">= 24 h", hours >= 24, f"{hours:.2f} h"))
    # Decision tree
    g.append(GateResult("7+ days validated on testnet", "MANUAL", "-", "testnet history"))
    sp = _crit(results.get("slow-peer"), "miner: slowest inv")
    g.append(_check("asynchronous broadcasting", "the miner never waits for a slow peer",
                    sp is not None and sp["verdict"] == "PASS",
                    f"slowest inv queued {_n(sp['measured']) if sp else None} ms"))
    missing = [sc for sc in FAILURE_SCENARIOS if results.get(sc, {}).get("verdict") != "PASS"]
    g.append(_check("all failure scenarios tested", "each runs and passes", not missing,
                    "all pass" if not missing else "not passing: " + ", ".join(missing)))
    g.append(GateResult("monitoring and alerting configured", "MANUAL", "-",
                        "contrib/prometheus/alerts.yml deployed and scraping every node"))
    g.append(GateResult("on-call engineer 24/7", "MANUAL", "-", "a rota"))
    total = sum(r["summary"]["complete"] for r in results.values())
    for need, stage in ((20, "aggressive: basic scenarios"), (50, "week 1"),
                        (100, "week 5: private mainnet"), (500, "week 6: limited public")):
        g.append(_check(f"{need}+ blocks propagated ({stage})", f">= {need} blocks reached every"
                        " node", total >= need, f"{total} (lab)"))
    return g


def format_gates(gates: list[GateResult]) -> str:
    width = max(len(x.name) for x in gates)
    return "\n".join(f"{x.verdict:<6} {x.name:<{width}}  measured: {x.measured}  criterion:"
                     f" {x.criterion}" for x in gates)
