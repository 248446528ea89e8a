"""The gate lines of the checklist's faults (``scenarios_checklist``,
``scenarios_faults``): asynchronous broadcasting against a peer that stops
reading, a silent partition found by the nodes' own timeouts, a kill in the
middle of a block, peers that fetch every block, the three regions, and the
p50/p95/max of "mined -> connected at every node".

A line whose fault did not bite (the stuck link never timed out, the kill did
not land mid-block) is FAIL "no evidence": the run could not have shown the
failure the line is about.
"""
from __future__ import annotations

from dilithion.tools.lab.gate_evidence import _crit, _merge, _n, _not_run, lab_evidence
from dilithion.tools.lab.measure import percentile
from dilithion.tools.lab.verdict import LAB, Verdict

__all__ = ["fault_gates", "healthy_send_timeouts", "PERCENTILE_SCENARIOS", "P95_LIMIT_S"]

#: Where "mined -> connected at every node" means propagation over healthy links.
PERCENTILE_SCENARIOS = ("line", "regions")
#: The checklist's phase 1: every block to every node within 10 s, so its p95 too.
P95_LIMIT_S = 10.0


def healthy_send_timeouts(r: dict) -> float | None:
    """Send timeouts of a run less the ones its stuck links were built to cause
    (``slow-peer`` records them, counted from the miner's log, per stuck peer)."""
    total = r["summary"].get("send_timeouts")
    if total is None:
        return None
    return total - (r["extra"].get("stuck_link_send_timeouts") or 0)


def _passed(r: dict, prefix: str) -> tuple[bool, object]:
    c = _crit(r, prefix)
    return (c is not None and c["verdict"] == "PASS"), (c["measured"] if c else None)


def _async(r: dict | None) -> Verdict:
    name, crit = ("asynchronous broadcasting",
                  "the miner never waits for a peer that stopped reading (its TCP window closed)")
    if r is None:
        return _not_run(name, crit, "slow-peer")
    ev = lab_evidence("slow-peer", r, samples=len(r["blocks"]), sampled=False)
    bit, stuck = _passed(r, "stuck links closed by the miner's send timeout")
    if not bit:
        ev = ev.with_gaps(f"slow-peer: no stuck link timed out ({stuck}): the miner's send queue"
                          " never held bytes, so waiting could not show")
    inv_ok, inv = _passed(r, "miner: slowest inv queued")
    held_ok, held = _passed(r, "miner: generatetoaddress back")
    if inv is None or held is None:
        ev = ev.with_gaps("slow-peer: no inv-queued or mining-thread figure recorded")
    return Verdict.judge(name, crit, inv_ok and held_ok,
                         f"mining thread held {_n(held)} s, slowest healthy inv {_n(inv)} ms,"
                         f" {stuck} stuck link(s) closed by send timeout", ev, LAB)


def _dead_link(r: dict | None) -> Verdict:
    name, crit = ("dead link found (silent partition)",
                  "both ends close it by ping/inactivity timeout; the nodes converge after")
    if r is None:
        return _not_run(name, crit, "partition")
    ev = lab_evidence("partition", r, samples=len(r["blocks"]), sampled=False)
    found_ok, found = _passed(r, "both ends closed the dead link")
    conv_ok, conv = _passed(r, "all nodes on the most-work tip")
    return Verdict.judge(name, crit, found_ok and conv_ok,
                         f"found after {_n(found)} s, converged {_n(conv)} s after the heal",
                         ev, LAB)


def _kill_mid_send(r: dict | None) -> Verdict:
    name, crit = ("peer killed mid-block catches up",
                  "SIGKILL inside a block frame; the others get every block; it catches up")
    if r is None:
        return _not_run(name, crit, "peer-kill")
    ev = lab_evidence("peer-kill", r, samples=len(r["blocks"]), sampled=False)
    cut_ok, cuts = _passed(r, "victim SIGKILLed in the middle of a block frame")
    if not cut_ok:
        ev = ev.with_gaps(f"peer-kill: the kill did not land inside a block frame ({cuts})")
    others_ok, others = _passed(r, "surviving peers got every block")
    caught_ok, caught = _passed(r, "restarted peer caught up")
    return Verdict.judge(name, crit, others_ok and caught_ok,
                         f"survivors {others}, caught up in {_n(caught)} s", ev, LAB)


def _fetching(r: dict | None) -> Verdict:
    name, crit = ("50+ fetching peers per node", "each node has 50+ peers; every one that fetches"
                  " blocks got every block")
    if r is None:
        return _not_run(name, crit, "load")
    per_node_ok, per_node = _passed(r, "concurrent peers per node")
    got_ok, got = _passed(r, "fetching peers that got every block")
    ev = lab_evidence("load", r, samples=len(r["blocks"]), sampled=False)
    if per_node is None or got is None:
        ev = ev.with_gaps("load: no per-node peer count or fetch count recorded")
    return Verdict.judge(name, crit, per_node_ok and got_ok,
                         f"fewest per node {per_node}, fetched all {got}", ev, LAB)


def _regions(r: dict | None) -> list[Verdict]:
    lines = (("regions: every block to every node", "<= 10 s (NYC, London, Singapore RTTs)"),
             ("regions: average propagation", "< 5 s (NYC, London, Singapore RTTs)"))
    if r is None:
        return [_not_run(name, crit, "regions") for name, crit in lines]
    s = r["summary"]
    ev = lab_evidence("regions", r, samples=s["complete"], sampled=False)
    if s["complete"] < s["blocks"]:
        ev = ev.with_gaps(f"regions: {s['blocks'] - s['complete']} block(s) never reached"
                          " every node")
    return [Verdict.judge(lines[0][0], lines[0][1], s["max_s"] is not None and s["max_s"] <= 10,
                          f"max {_n(s['max_s'])} s", ev, LAB),
            Verdict.judge(lines[1][0], lines[1][1], s["mean_s"] is not None and s["mean_s"] < 5,
                          f"mean {_n(s['mean_s'])} s", ev, LAB)]


def _percentiles(results: dict[str, dict]) -> Verdict:
    name = "mined -> connected at every node (p50/p95/max)"
    crit = f"p95 and max <= {P95_LIMIT_S:g} s over {', '.join(PERCENTILE_SCENARIOS)}"
    present = {k: results[k] for k in PERCENTILE_SCENARIOS if k in results}
    if not present:
        return _not_run(name, crit, " and ".join(PERCENTILE_SCENARIOS))
    values = [b["to_all_s"] for r in present.values() for b in r["blocks"]]
    done = [v for v in values if v is not None]
    ev = _merge([lab_evidence(k, r, samples=sum(1 for b in r["blocks"] if b["to_all_s"]
                                                is not None), sampled=False)
                 for k, r in present.items()])
    missing = [k for k in PERCENTILE_SCENARIOS if k not in results]
    if missing:
        ev = ev.with_gaps("not run: " + ", ".join(missing))
    if len(done) < len(values):
        ev = ev.with_gaps(f"{len(values) - len(done)} block(s) never reached every node")
    p50, p95 = percentile(done, 50), percentile(done, 95)
    worst = max(done) if done else None
    return Verdict.judge(name, crit, p95 is not None and p95 <= P95_LIMIT_S
                         and worst <= P95_LIMIT_S,
                         f"p50 {_n(p50)} s, p95 {_n(p95)} s, max {_n(worst)} s"
                         f" over {len(done)} block(s)", ev, LAB)


def fault_gates(results: dict[str, dict]) -> list[Verdict]:
    return [_async(results.get("slow-peer")), _dead_link(results.get("partition")),
            _kill_mid_send(results.get("peer-kill")), _fetching(results.get("load")),
            *_regions(results.get("regions")), _percentiles(results)]
