"""Every gate of ``dilithion-lab`` on a defective node: FAIL, where the real node PASSes.

A gate that cannot fail is a defect (issue 23, item 4).  Each test here runs a
gate's scenario on a node with one known defect (``tests/defective_node.py``,
the registry in ``tests/defects/``) and asserts that the gate line comes out
FAIL because of what was measured; the same scenario on the real node passes
in ``tests/test_lab.py``.
"""
from __future__ import annotations

import pytest

from dilithion.tools.lab.gate import evaluate_results
from dilithion.tools.lab.runner import run_scenario, scenario_options

from defects import DEFECTS, defective_program


def gate_lines(results: dict[str, dict]) -> dict[str, object]:
    return {g.name: g for g in evaluate_results(results)}


def run_defective(name: str, defect: str, tmp_path, **overrides) -> dict:
    opts = {**scenario_options(name, short=True), **overrides}
    return run_scenario(name, tmp_path, opts, progress=False, node_program=defective_program(defect))


def test_every_defect_is_documented():
    assert DEFECTS and all(what for what, _ in DEFECTS.values())


def test_no_relay_fails_the_line_gates(tmp_path):
    results = run_defective("line", "no-relay", tmp_path)
    assert results["verdict"] == "FAIL"
    assert "defective_node.py no-relay" in results["evidence"]["build"]
    gates = gate_lines({"line": results})
    for name in ("every block to every node", "average propagation",
                 "block propagation success rate"):
        assert gates[name].verdict == "FAIL", gates[name].line()
