"""The checklist's gates and decision tree, evaluated on lab results.

Each gate line is a :class:`~dilithion.tools.lab.verdict.Verdict` with the
evidence it rests on (runs, nodes, samples, measured span).  The lab's gates
say what loopback regtest runs prove and nothing more: a ``--short`` run, a
metric a node did not export, a failed sample, a run without figures is FAIL
"no evidence"; a scenario missing from the folders is FAIL ("not run": the
checklist asks for every one).  What only the real network can show — rollout
block counts, 24 h and 7 d windows, "no alert", monitoring configured — is
NOT RUN here: ``dilithion-lab gate --prometheus`` judges it
(:mod:`dilithion.tools.lab.prometheus`).
"""
from __future__ import annotations

from dilithion.tools.lab.gate_evidence import _crit, _merge, _n, _not_run, lab_evidence
from dilithion.tools.lab.gate_faults import fault_gates, healthy_send_timeouts
from dilithion.tools.lab.lab import SAMPLED_METRICS
from dilithion.tools.lab.leaks import LEAK_CRITERIA, LEAK_LIMITS_TEXT
from dilithion.tools.lab.verdict import LAB, NETWORK, FAIL, Verdict

__all__ = ["evaluate_results", "format_gates", "FAILURE_SCENARIOS", "ROLLOUT_BLOCKS",
           "LOAD_HOUR_S", "NETWORK_ONLY", "lab_evidence"]

FAILURE_SCENARIOS = ("slow-peer", "peer-kill", "partition", "latency", "burst")
#: The one-hour load run (``run load --duration 3600``): its own gate, judged on the
#: span the samples cover, not on the duration asked for.
LOAD_HOUR_S = 3600.0
#: The checklist's rollout block counts: (blocks, stage).  Judged only on the network.
ROLLOUT_BLOCKS = ((20, "aggressive: basic scenarios"), (50, "week 1: testnet"),
                  (100, "week 5: private mainnet"), (500, "week 6: limited public"))
LAB_BLOCKS_ARE_NOT_ROLLOUT = ("lab blocks are loopback regtest blocks, not rollout blocks:"
                              " dilithion-lab gate --prometheus on the network")
#: Gates only the live network answers, with the reason given on lab results.
NETWORK_ONLY = (
    ("24-hour run", ">= 24 h of the network's data, no alert firing",
     "a 24 h window is the network's, not a lab run's: dilithion-lab gate --prometheus"),
    ("7+ days validated on testnet", ">= 7 d of the testnet's data, no alert firing",
     "testnet history: dilithion-lab gate --prometheus on the testnet's Prometheus"),
    ("monitoring and alerting configured", "alert rules loaded, every node scraped and up",
     "read from Prometheus's /api/v1/rules and /api/v1/targets: dilithion-lab gate --prometheus"),
)
ALL_METRICS = tuple(SAMPLED_METRICS)


def _line_gates(line: dict | None) -> list[Verdict]:
    gates = (("blocks across 3 nodes", "10+ loopback blocks reached all of 3+ nodes"),
             ("every block to every node", "<= 10 s (slowest block, loopback)"),
             ("average propagation", "< 5 s (mean, loopback)"),
             ("CPU spike during broadcast", "< 10 % of a core (median block)"))
    if line is None:
        return [_not_run(name, crit, "line") for name, crit in gates]
    s = line["summary"]
    # every block measured is a sample, arrived or not: a node that relays nothing
    # has 0 complete blocks, a figure, not a lack of evidence
    blocks = lab_evidence("line", line, samples=s["blocks"], sampled=False)
    cpu = _crit(line, "relaying node CPU")
    cpu_ev = lab_evidence("line", line, samples=len(line["extra"].get("cpu_pct_per_block", [])),
                          sampled=False)
    if cpu is None or cpu["measured"] is None:
        cpu_ev = cpu_ev.with_gaps("line: no CPU figure recorded")
    return [
        Verdict.judge(gates[0][0], gates[0][1], s["complete"] >= 10 and len(line["nodes"]) >= 3,
                      f"{s['complete']} blocks over {len(line['nodes'])} nodes", blocks, LAB),
        Verdict.judge(gates[1][0], gates[1][1], s["max_s"] is not None and s["max_s"] <= 10,
                      f"max {_n(s['max_s'])} s", blocks, LAB),
        Verdict.judge(gates[2][0], gates[2][1], s["mean_s"] is not None and s["mean_s"] < 5,
                      f"mean {_n(s['mean_s'])} s", blocks, LAB),
        Verdict.judge(gates[3][0], gates[3][1], cpu is not None and cpu["verdict"] == "PASS",
                      f"{_n(cpu['measured']) if cpu else None} %", cpu_ev, LAB)]


def _scenario_gate(sc: str, r: dict | None) -> Verdict:
    name, crit = f"scenario {sc}", "all criteria pass, each measured"
    if r is None:
        return _not_run(name, crit, sc)
    ev = lab_evidence(sc, r, metrics=ALL_METRICS)
    unmeasured = [c["name"] for c in r["criteria"] if c["measured"] is None]
    if not r["criteria"]:
        ev = ev.with_gaps(f"{sc}: no criterion recorded")
    if unmeasured:
        ev = ev.with_gaps(f"{sc}: measured nothing for " + "; ".join(unmeasured))
    failed = [c["name"] for c in r["criteria"] if c["verdict"] != "PASS"]
    return Verdict.judge(name, crit, r["verdict"] == "PASS" and not failed,
                         "all pass" if not failed else "failed: " + "; ".join(failed), ev, LAB)


def _load_gates(load: dict | None) -> list[Verdict]:
    hour = "1-hour load run (lab)"
    hour_crit = f"load samples span >= {LOAD_HOUR_S / 3600:g} h (run load --duration 3600)"
    if load is None:
        return [_not_run("50+ concurrent peers", ">= 50", "load"),
                _not_run("no memory, CPU or descriptor leaks", LEAK_LIMITS_TEXT, "load"),
                Verdict.not_run(hour, hour_crit, "scenario load not run", LAB)]
    peers = load["extra"].get("concurrent_peers")
    ev_peers = lab_evidence("load", load, samples=1 if peers is not None else 0, sampled=False)
    leak = [c for c in load["criteria"] if c["name"] in LEAK_CRITERIA]
    missing = [n for n in LEAK_CRITERIA if n not in {c["name"] for c in leak}]
    undecided = [c["name"] for c in leak if c["verdict"] == "N/A" or c["measured"] is None]
    ev_leak = lab_evidence("load", load, metrics=("randomx_vms", "chain_height")).with_gaps(
        *[f"{n}: not recorded" for n in missing],
        *[f"{n}: not decided (run too short or no data)" for n in undecided])
    bad = [c for c in leak if c["verdict"] == "FAIL"]
    ev_hour = lab_evidence("load", load)
    span = ev_hour.span_s or 0.0
    out = [Verdict.judge("50+ concurrent peers", ">= 50", peers is not None and peers >= 50, peers,
                         ev_peers, LAB),
           Verdict.judge("no memory, CPU or descriptor leaks", LEAK_LIMITS_TEXT, not bad,
                         "; ".join(f"{c['name']} {_n(c['measured'])} ({c['verdict']})"
                                   for c in leak) or "-", ev_leak, LAB)]
    if span < LOAD_HOUR_S:
        out.append(Verdict.no_evidence(hour, hour_crit, f"load sampled {span:.0f} s of the"
                                       f" {LOAD_HOUR_S:.0f} s needed", ev_hour, LAB,
                                       f"{span / 3600:.2f} h"))
    else:
        failed = [c["name"] for c in load["criteria"] if c["verdict"] != "PASS"]
        out.append(Verdict.judge(hour, hour_crit, load["verdict"] == "PASS" and not failed,
                                 f"{span / 3600:.2f} h" + (", failed: " + "; ".join(failed)
                                                           if failed else ""), ev_hour, LAB))
    return out


def evaluate_results(results: dict[str, dict]) -> list[Verdict]:
    """The gates over ``results`` (scenario -> results); a SKIPPED run counts as not run."""
    results = {k: r for k, r in results.items() if r["verdict"] != "SKIPPED"}
    g: list[Verdict] = _line_gates(results.get("line"))
    ran = {k: r for k, r in results.items() if r["summary"]["blocks"]}
    rates = [r["summary"]["success_rate"] for r in ran.values()]
    g.append(Verdict.judge(
        "block propagation success rate", "100% in every scenario", bool(rates) and min(rates) == 1.0,
        f"min {_n(min(rates)) if rates else None} over {len(rates)} scenario(s)",
        _merge([lab_evidence(k, r, samples=r["summary"]["blocks"], sampled=False)
                for k, r in ran.items()]), LAB))
    timeouts = {k: healthy_send_timeouts(r) for k, r in results.items()}
    ev = _merge([lab_evidence(k, r, metrics=("send_timeout_errors_total",))
                 for k, r in results.items()])
    unmeasured = [k for k, t in timeouts.items() if t is None]
    if unmeasured:
        ev = ev.with_gaps("send timeouts not measured in " + ", ".join(unmeasured))
    total = sum(t for t in timeouts.values() if t is not None)
    stuck = sum(r["extra"].get("stuck_link_send_timeouts") or 0 for r in results.values())
    g.append(Verdict.judge("send timeouts", "0 on healthy links (timeout rate 0%)", total == 0,
                           f"{total:g}" + (f" (missing in {', '.join(unmeasured)})"
                                           if unmeasured else "")
                           + (f"; {stuck:g} on slow-peer's stuck links, expected there"
                              if stuck else ""), ev, LAB))
    g += [_scenario_gate(sc, results.get(sc)) for sc in FAILURE_SCENARIOS]
    g += _load_gates(results.get("load"))
    g += fault_gates(results)
    scenario_lines = {x.name: x for x in g if x.name.startswith("scenario ")}
    behind = [sc for sc in FAILURE_SCENARIOS if scenario_lines[f"scenario {sc}"].verdict != "PASS"]
    g.append(Verdict.judge(
        "all failure scenarios tested", "each runs and passes, with evidence", not behind,
        "all pass" if not behind else "not passing: " + ", ".join(behind),
        _merge([lab_evidence(sc, results[sc]) for sc in FAILURE_SCENARIOS if sc in results]), LAB))
    for name, crit, why in NETWORK_ONLY:
        g.append(Verdict.not_run(name, crit, why, NETWORK))
    g.append(Verdict.manual("on-call engineer 24/7", "a rota"))
    for need, stage in ROLLOUT_BLOCKS:
        g.append(Verdict.not_run(f"{need}+ blocks propagated ({stage})",
                                 f">= {need} blocks reached every node of the network",
                                 LAB_BLOCKS_ARE_NOT_ROLLOUT, NETWORK))
    return g


def format_gates(gates: list[Verdict]) -> str:
    width = max(len(x.name) for x in gates)
    return "\n".join(x.line(width) for x in gates)


def failed(gates: list[Verdict]) -> bool:
    return any(x.verdict == FAIL for x in gates)
