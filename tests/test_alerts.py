"""The Prometheus alert rules: valid, unit-tested by promtool, and using only metric
names the node really exports (a renamed metric would silently disable an alert)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dilithion.node.metrics import NodeMetrics

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "contrib" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "contrib" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "dilithion.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

#: Every alert the operations plan asks for.
EXPECTED_ALERTS = {
    "DilithionBlockBroadcastFailureRateHigh": "critical",
    "DilithionSendTimeoutRateCritical": "critical",
    "DilithionSendTimeoutRateWarning": "warning",
    "DilithionNoBlockPropagated": "critical",
    "DilithionBlockPropagationSlow": "warning",
    "DilithionNoPeers": "critical",
    "DilithionFewPeers": "warning",
    "DilithionSocketErrorsRising": "warning",
}
PROMQL_WORDS = {"avg_over_time", "max_over_time", "increase", "rate", "clamp_min", "sum",
                "without", "by", "and", "offset", "histogram_quantile", "role", "le",
                "instance", "job", "m", "h"}


def _rules() -> list[dict]:
    """alert, expr and severity of every rule (a small reader: no YAML library in the venv)."""
    rules: list[dict] = []
    in_expr = False
    for line in RULES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            rules.append({"alert": stripped.split(":", 1)[1].strip(), "expr": "", "labels": {}})
            in_expr = False
        elif not rules or stripped.startswith("#"):
            continue
        elif stripped.startswith("expr:"):
            rules[-1]["expr"] = stripped[5:].strip(" |")
            in_expr = True
        elif re.match(r"(for|labels|annotations):", stripped):
            in_expr = False
        elif in_expr:
            rules[-1]["expr"] += " " + stripped
        elif stripped.startswith("severity:"):
            rules[-1]["labels"]["severity"] = stripped.split(":", 1)[1].strip()
    return rules


def _exported_names() -> set[str]:
    """Sample names the node can expose, including labelled families with no child yet."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    registry = NodeMetrics(process_metrics=False).registry
    return {family.name + suffix for family in registry.collect()
            for suffix in suffixes.get(family.type, [""])}


def _metric_names(expr: str) -> set[str]:
    words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", re.sub(r'"[^"]*"', "", expr)))
    return {w for w in words - PROMQL_WORDS if "_" in w}


def test_every_planned_alert_exists_with_its_severity():
    found = {rule["alert"]: rule["labels"]["severity"] for rule in _rules()}
    assert found == EXPECTED_ALERTS


def test_alert_expressions_use_only_exported_metric_names():
    exported = _exported_names()
    for rule in _rules():
        names = _metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)


def test_dashboard_queries_use_only_exported_metric_names():
    import json
    exported = _exported_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        names = _metric_names(expr)
        assert names <= exported, (expr, names - exported)


@needs_promtool
def test_promtool_check_rules():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(EXPECTED_ALERTS)} rules found" in out.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass_and_cover_every_alert():
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(EXPECTED_ALERTS)
    out = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True,
                         text=True, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_rule_tests_can_fail(tmp_path):
    """A wrong expectation (no peers alert on a node with 8 peers) must be reported."""
    shutil.copy(RULES, tmp_path / "alerts.yml")
    (tmp_path / "wrong_test.yml").write_text("""
rule_files: [alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'connected_peers_count{instance="n3",job="dilithion"}'
        values: '8x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: DilithionNoPeers
        exp_alerts:
          - exp_labels: {severity: critical, instance: n3, job: dilithion}
""")
    out = subprocess.run([PROMTOOL, "test", "rules", "wrong_test.yml"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(\n")
    out = subprocess.run([PROMTOOL, "check", "rules", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
