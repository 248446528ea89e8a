"""Scenarios with failures and load: ``peer-kill`` (a SIGKILL in the middle of a
``block`` frame), ``partition`` (a silent one: packets dropped, no FIN/RST, so
only the nodes' ping/inactivity timeouts find the dead link), ``load`` (a
block a minute by default, 50+ peers per node that fetch every block)."""
from __future__ import annotations

import time

from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.leaks import LEAK_LIMITS_TEXT, leak_criteria, leak_figures
from dilithion.tools.lab.measure import criterion
from dilithion.tools.lab.scenario import (Run, line_topology, no_timeouts_criterion,
                                          propagation_criteria, register, star_topology)

CATCH_UP_TIMEOUT_S = 120.0
#: What a node logs when its ping or inactivity timeout closes a dead link.
DEAD_LINK_LINE = r"disconnected: (ping|inactivity) timeout"
#: The checklist's testnet rate: one block a minute (``load``'s default interval).
LOAD_INTERVAL_S = 60.0
#: Fetching peers per node in ``load`` (the checklist's "50+ peers", per node).
PEERS_PER_NODE = 50


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


@register("peer-kill", "the miner broadcasts a burst of blocks; a third of the way in one peer is"
          " SIGKILLed in the middle of receiving a block (its link forwards part of a block"
          " frame, then the kill), and restarted at the end",
          "the kill lands mid-block; the other peers get every block; the miner carries on; the"
          " killed peer restarts and catches up to the miner's tip (within 120 s)",
          full={"nodes": 3, "blocks": 20, "catch_up_timeout": CATCH_UP_TIMEOUT_S},
          short={"blocks": 6})
def run_peer_kill(run: Run) -> None:
    lab = run.lab
    miner, peers = star_topology(run, run.opts["nodes"])
    victim, survivors = peers[-1], [miner, *peers[:-1]]
    run.measured = [n.name for n in survivors]      # the victim is judged by its catch-up
    link = lab.proxy(victim, miner)
    kill_at = max(1, run.opts["blocks"] // 3)
    for i in range(run.opts["blocks"]):
        if i == kill_at:
            link.set(cut_at_block=victim.kill)
            run.event(f"{victim.name}'s link armed: SIGKILL in the next block frame")
        run.blocks.extend(lab.mine(miner))
        run.step(note=f"block {i + 1}")
    lab.collect(run.blocks, timeout=60, nodes=survivors)
    try:
        lab.wait_for(lambda: not victim.is_running(), 30, "the victim was not killed")
    except LabError:
        pass
    killed = link.cuts == 1 and not victim.is_running()
    run.extra["killed_mid_block"] = killed
    run.criteria.append(criterion("victim SIGKILLed in the middle of a block frame",
                                  link.cuts, "== 1", killed))
    data = run.blocks_json()
    ok = sum(1 for b in data if b["complete"])
    run.criteria.append(criterion("surviving peers got every block", f"{ok}/{len(data)}",
                                  f"{len(data)}/{len(data)}", ok == len(data)))
    link.set(cut_at_block=None)
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


def dead_link_lines(node) -> int:
    return len(node.log_lines(DEAD_LINK_LINE, all_runs=True))


@register("partition", "N nodes (4) in a line; the middle link goes silent (every packet dropped,"
          " no FIN/RST), both sides mine, the link heals",
          "both ends of the dead link close it by their ping/inactivity timeout; after the heal"
          " every node converges on the most-work tip (within 120 s)",
          full={"nodes": 4, "blocks": 6, "pingtimeout": None, "catch_up_timeout": 120.0},
          short={"blocks": 3, "pingtimeout": 5}, min_nodes=4)
def run_partition(run: Run) -> None:
    lab = run.lab
    if run.opts.get("pingtimeout"):
        lab.node_args.append(f"--pingtimeout={run.opts['pingtimeout']}")
    nodes = line_topology(run, run.opts["nodes"])
    mid = len(nodes) // 2
    left, right = nodes[:mid], nodes[mid:]
    ends = (nodes[mid - 1], nodes[mid])
    common = lab.mine(left[0], 2)
    run.blocks.extend(common)
    lab.collect(common, 60)
    cut = lab.proxy(nodes[mid], nodes[mid - 1])
    before = {n.name: dead_link_lines(n) for n in ends}
    cut.set(blackhole=True)
    t_cut = time.monotonic()
    run.event(f"link {nodes[mid - 1].name}-{nodes[mid].name} silent (packets dropped)")
    heavy = lab.mine(left[0], run.opts["blocks"])
    light = lab.mine(right[-1], max(1, run.opts["blocks"] // 2))
    run.step(len(common) + len(heavy) + len(light))
    lab.collect(heavy, 60, nodes=left)
    lab.collect(light, 60, nodes=right)
    ping_timeout = float(run.opts.get("pingtimeout") or 30)
    detect_limit = 30.0 + ping_timeout + 30.0       # ping interval + timeout + ticks
    try:
        lab.wait_for(lambda: all(dead_link_lines(n) > before[n.name] for n in ends),
                     detect_limit, "the dead link was not found")
        found = round(time.monotonic() - t_cut, 2)
    except LabError:
        found = None
    run.extra.update(dead_link_found_s=found,
                     dead_link_closed_by={n.name: dead_link_lines(n) - before[n.name]
                                          for n in ends})
    run.criteria.append(criterion("both ends closed the dead link by ping/inactivity timeout",
                                  found, f"<= {detect_limit:g} s", found is not None, "s"))
    cut.set(blackhole=False)
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


@register("load", "N nodes (3) in a line, each with 50 scripted peers (from their own loopback"
          " addresses) that fetch every block; a block a minute (--interval) on a rotating miner;"
          " RSS, descriptors, threads and CPU sampled",
          "100% of blocks reach every node; 50+ concurrent peers per node; every fetching peer"
          " got every block; 0 send timeouts; no leak: " + LEAK_LIMITS_TEXT,
          full={"nodes": 3, "duration": 600.0, "interval": LOAD_INTERVAL_S,
                "peers": PEERS_PER_NODE, "sample": 5.0},
          short={"duration": 10.0, "interval": 2.0, "sample": 1.0})
def run_load(run: Run) -> None:
    lab = run.lab
    lab.sample_interval = run.opts["sample"]
    nodes = line_topology(run, run.opts["nodes"])
    swarm = lab.add_fetching_peers(run.opts["peers"])
    try:
        lab.wait_for(lambda: swarm.handshaken >= swarm.count, 60,
                     "the scripted peers did not connect")
    except LabError as exc:           # measured below: the count is the criterion's figure
        run.event(f"{exc}: {swarm.handshaken} of {swarm.count} handshaken")
    per_node = {n.name: lab.peer_count(n) for n in nodes}
    peers = min(per_node.values())
    run.extra.update(concurrent_peers=peers, concurrent_peers_by_node=per_node,
                     concurrent_peers_total=sum(per_node.values()))
    run.event(f"{sum(per_node.values())} peer connections ({peers}+ per node)")
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
    hashes = [b.hash for b in run.blocks]
    try:
        lab.wait_for(lambda: swarm.peers_missing(hashes) == 0, 30,
                     "a fetching peer is missing blocks")
    except LabError:
        pass                           # recorded below
    missing = swarm.peers_missing(hashes)
    run.extra.update(light_peer_invs=swarm.invs_received, fetched_blocks=swarm.blocks_received,
                     fetching_peers=swarm.count, fetching_peers_missing_blocks=missing)
    propagation_criteria(run, max_s=None, mean_s=None)
    run.criteria.append(criterion("concurrent peers per node (fewest)", peers, ">= 50",
                                  peers >= 50))
    run.criteria.append(criterion("fetching peers that got every block",
                                  f"{swarm.count - missing}/{swarm.count}", f"{swarm.count}/"
                                  f"{swarm.count}", bool(hashes) and missing == 0))
    no_timeouts_criterion(run)
    figures = leak_figures(lab.samples)
    run.extra["leaks"] = figures
    run.criteria.extend(leak_criteria(figures))
