"""Metric names are checked, not looked up by string, and no component tests for missing metrics.

Every component gets a metrics collaborator: the node's ``NodeMetrics``, or
``NULL_METRICS`` when it runs without a node.  The code reads metrics only as
``<...>.metrics.<name>`` (or ``_metrics``), so this test can find every name the
package updates and check that

* ``NodeMetrics`` has it and its registry exports it (a renamed or forgotten
  metric fails here, not as an ``AttributeError`` on a peer's thread);
* ``NullMetrics`` has exactly the names and methods of ``NodeMetrics``, and
  accepts every update the real metric accepts;
* no module tests a metrics collaborator against ``None``, looks a metric up
  with ``getattr``, or copies the collaborator into another name (which would
  hide its uses from this scan).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from dilithion.node.metrics import NULL_METRICS, NodeMetrics, NullMetrics

PACKAGE = Path(__file__).resolve().parent.parent / "dilithion"
#: The names a metrics collaborator is held under.
HOLDERS = {"metrics", "_metrics"}
#: ``NodeMetrics`` attributes that are not part of the shared interface: the
#: registry is what the node exports, which a component never touches.
NODE_ONLY = {"registry"}
#: The update methods of prometheus metrics that components call.
UPDATES = ("labels", "inc", "dec", "set", "observe", "set_function")


def _is_holder(node: ast.AST) -> bool:
    """``metrics``, ``_metrics``, ``<expr>.metrics`` or ``<expr>._metrics``."""
    return (isinstance(node, ast.Name) and node.id in HOLDERS) or \
        (isinstance(node, ast.Attribute) and node.attr in HOLDERS)


def scan(source: str, where: str) -> tuple[set[str], list[str]]:
    """The metric attributes ``source`` reads, and what it does that hides them."""
    used: set[str] = set()
    offences: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and _is_holder(node.value):
            used.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr") and node.args and _is_holder(node.args[0]):
            offences.append(f"{line}: {node.func.id}() on metrics (name them as attributes)")
        elif isinstance(node, ast.Compare) and _is_holder(node.left) and any(
                isinstance(c, ast.Constant) and c.value is None for c in node.comparators):
            offences.append(f"{line}: metrics compared with None (default to NULL_METRICS)")
        elif isinstance(node, ast.Assign) and _is_holder(node.value) and any(
                isinstance(t, ast.Name) and t.id not in HOLDERS for t in node.targets):
            offences.append(f"{line}: metrics copied into another name (use .metrics directly)")
    return used, offences


@pytest.fixture(scope="module")
def package_scan() -> tuple[dict[str, list[str]], list[str]]:
    """Metric attribute -> modules that read it, and every offence, over the package."""
    used: dict[str, list[str]] = {}
    offences: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE.parent))
        names, bad = scan(path.read_text(encoding="utf-8"), where)
        for name in names:
            used.setdefault(name, []).append(where)
        offences += bad
    return used, offences


@pytest.fixture(scope="module")
def node_metrics() -> NodeMetrics:
    return NodeMetrics(process_metrics=False)


def public_names(obj) -> set[str]:
    names = set(dir(obj))
    if not isinstance(obj, type):
        names |= set(vars(obj))
    return {n for n in names if not n.startswith("_")}


def exported_families(metrics: NodeMetrics) -> set[str]:
    return {family.name for family in metrics.registry.collect()}


def test_the_scan_sees_the_network_and_rpc_metrics(package_scan):
    """The scan is not vacuous: it finds metrics updated by the transport, relay and RPC."""
    used, _ = package_scan
    for name in ("bytes_sent", "socket_errors", "peer_disconnections", "block_propagation_time",
                 "rpc_requests", "misbehaviour_events"):
        assert name in used, f"the scan no longer finds {name}: is the pattern intact?"


def test_every_metric_the_code_updates_exists_and_is_exported(package_scan, node_metrics):
    used, _ = package_scan
    node_names = public_names(node_metrics)
    missing = {n: where for n, where in used.items() if n not in node_names}
    assert not missing, f"metrics read by the code that NodeMetrics lacks: {missing}"
    families = exported_families(node_metrics)
    unexported = [n for n in used if isinstance(getattr(node_metrics, n), MetricWrapperBase)
                  and getattr(node_metrics, n).describe()[0].name not in families]
    assert not unexported, f"metrics the node does not export: {unexported}"


def test_every_exported_metric_family_is_reachable_as_an_attribute(node_metrics):
    """The other direction: each family of the registry is one attribute of both classes."""
    families = exported_families(node_metrics)
    by_attribute = {getattr(node_metrics, n).describe()[0].name
                    for n in public_names(node_metrics)
                    if isinstance(getattr(node_metrics, n), MetricWrapperBase)}
    assert by_attribute == families


def test_null_metrics_has_the_names_of_node_metrics(node_metrics):
    node_names = public_names(node_metrics) - NODE_ONLY
    null_names = public_names(NullMetrics)
    assert null_names == node_names, (
        f"only in NodeMetrics: {sorted(node_names - null_names)}; "
        f"only in NullMetrics: {sorted(null_names - node_names)}")


def test_null_metrics_accept_every_update_the_real_ones_accept(node_metrics):
    for name in public_names(node_metrics):
        real = getattr(node_metrics, name)
        if not isinstance(real, MetricWrapperBase):
            continue
        null = getattr(NULL_METRICS, name)
        for update in UPDATES:
            if hasattr(real, update):
                assert callable(getattr(null, update, None)), f"NullMetrics.{name}.{update}"
    NULL_METRICS.peer_disconnections.labels(reason="closed").inc()
    NULL_METRICS.block_propagation_time.labels(role="receive").observe(0.5)
    NULL_METRICS.send_buffer_bytes.set_function(lambda: 1.0)
    NULL_METRICS.on_tip_changed(None, [], [])


def test_no_component_tests_for_missing_metrics(package_scan):
    _, offences = package_scan
    assert not offences, "\n".join(offences)


def test_the_scan_catches_what_it_forbids():
    """Each forbidden pattern is reported (the old transport's ``_metric`` helper among them)."""
    source = (
        "def _metric(self, name, amount=1):\n"
        "    if self.metrics is not None:\n"
        "        getattr(self.metrics, name).inc(amount)\n"
        "def close(self):\n"
        "    m = self.metrics\n"
        "    m.peer_disconnections.inc()\n"
    )
    _, offences = scan(source, "old.py")
    assert sorted(o.split(": ", 1)[1].split(" (")[0] for o in offences) == [
        "getattr() on metrics", "metrics compared with None", "metrics copied into another name"]
