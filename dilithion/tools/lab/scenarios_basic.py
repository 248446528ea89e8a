"""Scenarios on healthy or slow links: ``line``, ``latency``, ``burst`` (``slow-peer``, a
peer that stops reading, is in ``scenarios_checklist``)."""
from __future__ import annotations

import time

from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.measure import criterion
from dilithion.tools.lab.scenario import (Run, block_timeout, collect_burst, line_topology,
                                          mine_and_measure, no_timeouts_criterion,
                                          propagation_criteria, register)

#: The window over which a relaying node's CPU use per block is measured.
CPU_WINDOW_S = 2.0


@register("line", "N nodes (3) in a line, the head mines blocks one at a time (10)",
          "100% of blocks reach every node; each within 10 s, 5 s on average; 0 send timeouts;"
          " relaying nodes' CPU during a broadcast < 10% of a core",
          full={"nodes": 3, "blocks": 10}, short={"blocks": 3})
def run_line(run: Run) -> None:
    nodes = line_topology(run, run.opts["nodes"])
    cpu = []
    for i in range(run.opts["blocks"]):
        before = {n.name: n.resources()["cpu_s"] for n in nodes[1:]}
        t0 = time.monotonic()
        mine_and_measure(run, nodes[0], 1, timeout=block_timeout(run, 60))
        time.sleep(max(0.0, CPU_WINDOW_S - (time.monotonic() - t0)))
        window = time.monotonic() - t0
        cpu.append(max(100 * (n.resources()["cpu_s"] - before[n.name]) / window for n in nodes[1:]))
    run.extra["cpu_pct_per_block"] = [round(c, 2) for c in cpu]
    propagation_criteria(run)
    no_timeouts_criterion(run)
    worst = sorted(cpu)[len(cpu) // 2] if cpu else None
    run.criteria.append(criterion("relaying node CPU over a broadcast window (median block)", worst,
                                  "< 10 %", worst is not None and worst < 10, "%"))


@register("latency", "N nodes (3) in a line with 2 s of latency each way on every link",
          "every block reaches every node (within 60 s); 0 send timeouts; 0 socket errors",
          full={"nodes": 3, "blocks": 5, "delay_s": 2.0}, short={"blocks": 2})
def run_latency(run: Run) -> None:
    lab = run.lab
    nodes = line_topology(run, run.opts["nodes"])
    for proxy in lab.proxies.values():
        proxy.set(delay_s=run.opts["delay_s"])
    run.event(f"every link delayed {run.opts['delay_s']:g} s each way")
    blocks = [b for _ in range(run.opts["blocks"]) for b in lab.mine(nodes[0])]
    collect_burst(run, blocks, timeout=block_timeout(run, 60))
    propagation_criteria(run, max_s=60.0, mean_s=None)
    run.extra["expected_min_s"] = 3 * run.opts["delay_s"] * (len(nodes) - 1)
    no_timeouts_criterion(run)
    errors = run.counters_total("socket_errors")
    run.criteria.append(criterion("socket errors", errors, "== 0", errors == 0))


@register("burst", "the head of a line of N nodes (3) mines 50 blocks as fast as it can",
          "every node gets all 50; every broadcast queue drains to 0; no announcement given up",
          full={"nodes": 3, "blocks": 50, "sample": 0.2}, short={"blocks": 20})
def run_burst(run: Run) -> None:
    lab = run.lab
    nodes = line_topology(run, run.opts["nodes"])
    t0 = time.monotonic()
    blocks = lab.mine(nodes[0], run.opts["blocks"])
    run.extra["mining_s"] = round(time.monotonic() - t0, 3)
    run.event(f"{len(blocks)} blocks mined in {run.extra['mining_s']:g} s")
    collect_burst(run, blocks, timeout=block_timeout(run, 120))
    propagation_criteria(run, max_s=None, mean_s=None)
    try:
        lab.wait_for(lambda: all(n.metrics().get("message_queue_depth", 1) == 0 for n in nodes),
                     30, "the broadcast queues did not drain")
    except LabError:
        pass                       # recorded as a failed criterion below
    lab.sample_now()
    depths = [v["queue_depth"] for v in lab.counters().values()]
    depth = None if not depths or None in depths else max(depths)
    run.criteria.append(criterion("broadcast queue depth after the burst", depth, "== 0", depth == 0))
    failures = run.counters_total("broadcast_failures")
    run.criteria.append(criterion("announcements given up", failures, "== 0", failures == 0))
    no_timeouts_criterion(run)
