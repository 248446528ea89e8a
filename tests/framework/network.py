"""Groups of nodes for one test: who gets built, how they are wired, and clean-up.

``Nodes`` is the per-test registry behind the ``process_node`` and ``network``
fixtures: every node it made is stopped (killed if it hangs) at the end, also
when the test failed half-way.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from .inprocess import InProcessNode
from .node import TestNode
from .process_node import ProcessNode

#: Node flags unless the caller gives its own: dial nobody on its own, so the
#: topology is exactly the edges the test asked for.
ISOLATED = ("--connect=none",)


def line_edges(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def ring_edges(n: int) -> list[tuple[int, int]]:
    return line_edges(n) + ([(n - 1, 0)] if n > 2 else [])


def star_edges(n: int) -> list[tuple[int, int]]:
    return [(i, 0) for i in range(1, n)]          # the leaves dial the hub, node 0


def mesh_edges(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


#: ``(i, j)``: node ``i`` dials node ``j`` (``nodes[i].connect_to(nodes[j])``)
TOPOLOGIES = {"line": line_edges, "ring": ring_edges, "star": star_edges, "mesh": mesh_edges}


def connect_topology(nodes: list[TestNode], topology: str = "line") -> None:
    try:
        edges = TOPOLOGIES[topology](len(nodes))
    except KeyError:
        raise ValueError(f"unknown topology {topology!r}; one of {sorted(TOPOLOGIES)}") from None
    for i, j in edges:
        nodes[i].connect_to(nodes[j])


class Nodes:
    """Builds nodes in one work directory and shuts every one of them down in ``close``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.made: list[TestNode] = []

    def _name(self, name: str | None) -> str:
        return name or f"node{len(self.made)}"

    def process_node(self, name: str | None = None, extra_args=(), start: bool = False,
                     cls: type[ProcessNode] = ProcessNode, **kw) -> ProcessNode:
        """A ``ProcessNode`` (or subclass ``cls``; not started unless ``start``); kw go to
        its constructor."""
        node = cls(self.workdir, self._name(name), list(extra_args), **kw)
        self.made.append(node)
        return node.start() if start else node

    def inprocess_node(self, name: str | None = None, extra_args=(), start: bool = False,
                       **kw) -> InProcessNode:
        node = InProcessNode(self.workdir, self._name(name), list(extra_args), **kw)
        self.made.append(node)
        return node.start() if start else node

    def network(self, n: int, topology: str = "line", kind: str = "process",
                extra_args=ISOLATED, **node_kw) -> list[TestNode]:
        """``n`` started nodes wired as ``topology`` (handshakes done on every edge)."""
        make = {"process": self.process_node, "inprocess": self.inprocess_node}.get(kind)
        if make is None:
            raise ValueError(f"unknown node kind {kind!r}; 'process' or 'inprocess'")
        nodes = [make(extra_args=extra_args, **node_kw) for _ in range(n)]
        for node in nodes:
            node.start()
        connect_topology(nodes, topology)
        return nodes

    def close(self) -> None:
        """Stop every node; one that ignores the clean stop is killed. Errors are
        collected so one broken node does not leave the others running."""
        failures = []
        for node in reversed(self.made):
            try:
                node.close()
            except Exception as exc:            # noqa: BLE001 - reported below
                failures.append(f"{node.name}: {exc}")
                try:
                    node.kill()
                except Exception as kill_exc:   # noqa: BLE001
                    failures.append(f"{node.name} kill: {kill_exc}")
        self.made.clear()
        if failures:
            raise AssertionError("nodes did not stop cleanly:\n" + "\n".join(failures))
