"""What every scenario shares: its registry entry, the run state it fills (so a
Ctrl+C still leaves everything measured so far), and the common measurement
steps (mine-and-measure, the standard propagation criteria)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from dilithion.tools.lab.lab import BlockRecord, Lab, total
from dilithion.tools.lab.labnode import LabNode
from dilithion.tools.lab.measure import block_summary, criterion

__all__ = ["Scenario", "Run", "SCENARIOS", "register", "mine_and_measure", "line_topology",
           "star_topology",
           "propagation_criteria", "no_timeouts_criterion", "block_timeout"]


@dataclass
class Scenario:
    name: str
    summary: str
    criteria: str
    run: Callable[["Run"], None]
    full: dict                     # default options
    short: dict                    # the short (test-suite) version's overrides
    min_nodes: int = 3
    network: str = "regtest"


SCENARIOS: dict[str, Scenario] = {}


def register(name: str, summary: str, criteria: str, full: dict, short: dict, min_nodes: int = 3,
             network: str = "regtest"):
    def wrap(func):
        SCENARIOS[name] = Scenario(name, summary, criteria, func, full, short, min_nodes, network)
        return func
    return wrap


@dataclass
class Run:
    """One scenario run's lab, options and everything measured so far."""

    lab: Lab
    opts: dict
    bar: tqdm
    blocks: list[BlockRecord] = field(default_factory=list)
    parents: dict[str, str] = field(default_factory=dict)     # node -> upstream (per-hop latency)
    extra: dict = field(default_factory=dict)
    criteria: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    #: Nodes whose connect times count for "to all nodes" (None: every node).
    measured: list[str] | None = None

    def step(self, n: int = 1, note: str | None = None) -> None:
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(n)

    def event(self, what: str) -> None:
        self.events.append({"t": time.time(), "event": what})
        self.bar.set_postfix_str(what)

    def blocks_json(self, nodes: list[str] | None = None) -> list[dict]:
        names = nodes or self.measured or [n.name for n in self.lab.nodes]
        return [b.to_json(names, self.parents) for b in self.blocks]

    def counters_total(self, key: str, nodes: list[str] | None = None) -> float | None:
        """The sum over the nodes sampled; None when one did not export it (missing)."""
        return total(v[key] for n, v in self.lab.counters().items() if nodes is None or n in nodes)


def _start(run: Run) -> None:
    """Start every node of the topology and wait until each link is up."""
    run.lab.start()
    run.lab.wait_connected()


def line_topology(run: Run, n: int) -> list[LabNode]:
    """``n`` started nodes in a line, each dialling the previous one through a proxy."""
    lab = run.lab
    nodes = [lab.add_node() for _ in range(n)]
    for a, b in zip(nodes[1:], nodes):
        lab.link(a, b)
        run.parents[a.name] = b.name
    _start(run)
    return nodes


def star_topology(run: Run, n: int) -> tuple[LabNode, list[LabNode]]:
    """A started hub (the miner) and ``n - 1`` peers, each dialling the hub through a proxy."""
    lab = run.lab
    hub, *peers = [lab.add_node() for _ in range(n)]
    for p in peers:
        lab.link(p, hub)
        run.parents[p.name] = hub.name
    _start(run)
    return hub, peers


def block_timeout(run: Run, default: float) -> float:
    """How long a scenario waits for its blocks to reach every node: option
    ``block_timeout`` when given, else the scenario's ``default``.  A node that
    never relays waits this out for every block; the defect tests shorten it."""
    return float(run.opts.get("block_timeout", default))


def collect_burst(run: Run, blocks: list[BlockRecord], timeout: float) -> None:
    """Record ``blocks`` mined in one go and wait until every node has them (or ``timeout``)."""
    run.blocks.extend(blocks)
    run.lab.collect(blocks, timeout=timeout, tick=lambda: run.step(0))
    run.step(len(blocks))


def mine_and_measure(run: Run, miner: LabNode, count: int, timeout: float,
                     spacing: float = 0.0, nodes: list[LabNode] | None = None) -> list[BlockRecord]:
    """Mine ``count`` blocks one at a time, each measured at every node before the next."""
    out = []
    for i in range(count):
        blocks = run.lab.mine(miner)
        run.blocks.extend(blocks)
        run.lab.collect(blocks, timeout, nodes)
        out.extend(blocks)
        run.step(note=f"block {len(run.blocks)}")
        if spacing:
            time.sleep(spacing)
    return out


def _or(value, instead):
    return instead if value is None else value


def propagation_criteria(run: Run, max_s: float | None = 10.0, mean_s: float | None = 5.0) -> dict:
    """Success rate 100%, and optionally every block to all nodes within ``max_s``
    and on average within ``mean_s`` (the checklist's phase-1 criteria)."""
    s = block_summary(run.blocks_json())
    run.criteria.append(criterion("block propagation success rate", s["success_rate"], "== 1.0",
                                  s["blocks"] > 0 and s["success_rate"] == 1.0))
    # blocks measured of which none reached every node: that is the figure, not "nothing measured"
    never = "no block reached every node" if s["blocks"] else None
    if max_s is not None:
        run.criteria.append(criterion("slowest block to all nodes", _or(s["max_s"], never),
                                      f"<= {max_s:g} s",
                                      s["max_s"] is not None and s["max_s"] <= max_s, "s"))
    if mean_s is not None:
        run.criteria.append(criterion("mean propagation to all nodes", _or(s["mean_s"], never),
                                      f"< {mean_s:g} s",
                                      s["mean_s"] is not None and s["mean_s"] < mean_s, "s"))
    return s


def no_timeouts_criterion(run: Run) -> None:
    run.lab.sample_now()
    timeouts = run.counters_total("send_timeouts")
    run.criteria.append(criterion("send timeouts (all nodes)", timeouts, "== 0", timeouts == 0))
