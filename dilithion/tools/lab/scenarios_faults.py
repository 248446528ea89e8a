"""Scenarios with failures and load: ``peer-kill``, ``partition``, ``load``."""
from __future__ import annotations

import time

from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.leaks import LEAK_LIMITS_TEXT, leak_criteria, leak_figures
from dilithion.tools.lab.measure import criterion
from dilithion.tools.lab.scenario import (Run, line_topology, no_timeouts_criterion,
                                          propagation_criteria, register, star_topology)

CATCH_UP_TIMEOUT_S = 120.0


def catch_up_timeout(run: Run) -> float:
    """The catch-up wait: option ``catch_up_timeout`` (the defect tests shorten it:
    a node that never catches up needs no 120 s to show it), else the default."""
    return float(run.opts.get("catch_up_timeout", CATCH_UP_TIMEOUT_S))


def waited_criterion(name: str, took_s: float | None, waited_s: float) -> dict:
    """A bounded wait as a criterion: the seconds it took, or, when it never
    happened, what was measured instead ("not within N s"): a figure that fails,
    not a criterion that measured nothing."""
    if took_s is None:
        return criterion(name, f"not within {waited_s:g} s", f"<= {waited_s:g} s", False)
    return criterion(name, took_s, f"<= {waited_s:g} s", True, "s")


@register("peer-kill", "the miner broadcasts a burst of blocks; one peer is SIGKILLed a third of"
          " the way in and restarted at the end",
          "the other peers get every block; the miner carries on; the killed peer restarts and"
          " catches up to the miner's tip (within 120 s)",
          full={"nodes": 3, "blocks": 20}, short={"blocks": 6})
def run_peer_kill(run: Run) -> None:
    lab = run.lab
    miner, peers = star_topology(run, run.opts["nodes"])
    victim, survivors = peers[-1], [miner, *peers[:-1]]
    run.measured = [n.name for n in survivors]      # the victim is judged by its catch-up
    kill_at = max(1, run.opts["blocks"] // 3)
    for i in range(run.opts["blocks"]):
        if i == kill_at:
            victim.kill()
            run.event(f"{victim.name} SIGKILLed")
        run.blocks.extend(lab.mine(miner))
        run.step(note=f"block {i + 1}")
    lab.collect(run.blocks, timeout=60, nodes=survivors)
    data = run.blocks_json()
    ok = sum(1 for b in data if b["complete"])
    run.criteria.append(criterion("surviving peers got every block", f"{ok}/{len(data)}",
                                  f"{len(data)}/{len(data)}", ok == len(data)))
    victim.launch()
    victim.wait_running(time.monotonic() + 60)
    run.event(f"{victim.name} restarted")
    t0 = time.monotonic()
    tip = miner.rpc("getbestblockhash")
    try:
        lab.wait_for(lambda: victim.rpc("getbestblockhash") == tip, catch_up_timeout(run),
                     "the restarted peer did not catch up")
        caught = round(time.monotonic() - t0, 2)
    except LabError:
        caught = None
    run.extra["catch_up_s"] = caught
    run.criteria.append(waited_criterion("restarted peer caught up to the miner's tip", caught,
                                         catch_up_timeout(run)))
    run.criteria.append(criterion("miner mined every block of the burst", len(run.blocks),
                                  f"== {run.opts['blocks']}", len(run.blocks) == run.opts["blocks"]))


@register("partition", "N nodes (4) in a line; the middle link is cut, both sides mine, the"
          " link heals",
          "after the heal every node converges on the most-work tip (within 120 s)",
          full={"nodes": 4, "blocks": 6}, short={"blocks": 3}, min_nodes=4)
def run_partition(run: Run) -> None:
    lab = run.lab
    nodes = line_topology(run, run.opts["nodes"])
    mid = len(nodes) // 2
    left, right = nodes[:mid], nodes[mid:]
    common = lab.mine(left[0], 2)
    run.blocks.extend(common)
    lab.collect(common, 60)
    cut = lab.proxy(nodes[mid], nodes[mid - 1])
    cut.set(partitioned=True)
    run.event(f"link {nodes[mid - 1].name}-{nodes[mid].name} cut")
    heavy = lab.mine(left[0], run.opts["blocks"])
    light = lab.mine(right[-1], max(1, run.opts["blocks"] // 2))
    run.step(len(common) + len(heavy) + len(light))
    lab.collect(heavy, 60, nodes=left)
    lab.collect(light, 60, nodes=right)
    cut.set(partitioned=False)
    run.event("link healed")
    t0 = time.monotonic()
    target = heavy[-1].hash
    try:
        lab.wait_for(lambda: set(lab.tips().values()) == {target}, catch_up_timeout(run),
                     "the nodes did not converge")
        healed = round(time.monotonic() - t0, 2)
    except LabError:
        healed = None
    run.extra.update(heal_to_converged_s=healed, heavy_tip=target, light_tip=light[-1].hash)
    run.criteria.append(waited_criterion("all nodes on the most-work tip after the heal", healed,
                                         catch_up_timeout(run)))
    run.blocks = common + heavy       # the light branch is reorganised away by design
    lab.collect(run.blocks, 30)
    propagation_criteria(run, max_s=None, mean_s=None)


@register("load", "N nodes (3) in a line plus scripted peers (50+ connections in all); a block"
          " every few seconds on a rotating miner; RSS, descriptors, threads and CPU sampled",
          "100% of blocks reach every node; 50+ concurrent peers; 0 send timeouts; no leak: "
          + LEAK_LIMITS_TEXT,
          full={"nodes": 3, "duration": 600.0, "interval": 5.0, "peers": 50, "sample": 5.0},
          short={"duration": 10.0, "interval": 2.0, "sample": 1.0})
def run_load(run: Run) -> None:
    lab = run.lab
    lab.sample_interval = run.opts["sample"]
    nodes = line_topology(run, run.opts["nodes"])
    links = 2 * len(lab.proxies)
    swarm = lab.add_light_peers(max(0, run.opts["peers"] - links))
    try:
        lab.wait_for(lambda: swarm.handshaken >= swarm.count, 60,
                     "the scripted peers did not connect")
    except LabError as exc:           # measured below: the count is the criterion's figure
        run.event(f"{exc}: {swarm.handshaken} of {swarm.count} handshaken")
    peers = sum(lab.peer_count(n) for n in nodes)
    run.extra["concurrent_peers"] = peers
    run.event(f"{peers} peer connections")
    end = time.monotonic() + run.opts["duration"]
    i = 0
    while time.monotonic() < end:
        started = time.monotonic()
        blocks = lab.mine(nodes[i % len(nodes)])
        run.blocks.extend(blocks)
        lab.collect(blocks, timeout=60)
        i += 1
        run.step(note=f"block {i}")
        time.sleep(max(0.0, min(run.opts["interval"] - (time.monotonic() - started),
                                end - time.monotonic())))
    run.extra["light_peer_invs"] = swarm.invs_received
    propagation_criteria(run, max_s=None, mean_s=None)
    run.criteria.append(criterion("concurrent peers", peers, ">= 50", peers >= 50))
    no_timeouts_criterion(run)
    figures = leak_figures(lab.samples)
    run.extra["leaks"] = figures
    run.criteria.extend(leak_criteria(figures))
