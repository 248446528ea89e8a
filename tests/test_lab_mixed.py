"""``dilithion-lab run mixed --short`` with a real C++ node: the Python-only path
gets every block and results.json holds the side-by-side table.

Runs only when ``DILITHION_CPP_NODE`` names a built ``dilithion-node`` binary;
without it the scenario's SKIPPED line is tested in ``tests/test_lab.py``.
"""
from __future__ import annotations

import json
import os

import pytest

from dilithion.tools.lab.runner import run_scenario, scenario_options

CPP_NODE = os.environ.get("DILITHION_CPP_NODE", "")
if not CPP_NODE or not os.access(CPP_NODE, os.X_OK):
    pytest.skip("DILITHION_CPP_NODE does not name a built C++ dilithion-node binary",
                allow_module_level=True)

pytestmark = pytest.mark.cpp


def test_mixed_short_python_path_gets_every_block_side_by_side_recorded(tmp_path):
    results = run_scenario("mixed", tmp_path, scenario_options("mixed", short=True), progress=False)
    assert results["status"] == "finished" and results["network"] == "testnet"
    assert results["verdict"] == "PASS", results["criteria"]
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = {r["node"]: r for r in saved["extra"]["side_by_side"]}
    blocks = saved["summary"]["blocks"]
    assert blocks == 6 and saved["summary"]["success_rate"] == 1.0
    # n0 is the origin, n1 and n2 the Python-only line, cpp0 the C++ node, n3 behind it.
    assert {n: (r["kind"], r["hops"]) for n, r in rows.items()} == {
        "n0": ("python", 0), "n1": ("python", 1), "n2": ("python", 2),
        "cpp0": ("cpp", 1), "n3": ("python", 2)}
    assert rows["n2"]["path"] == "n0 -> n1 -> n2" and rows["n3"]["path"] == "n0 -> cpp0 -> n3"
    for name in ("n1", "n2"):
        assert rows[name]["received"] == blocks and rows[name]["p50_s"] is not None
    # What the Python nodes relay: the origin and the middle of the line send every block on.
    assert rows["n0"]["sent_on"] == blocks and rows["n1"]["sent_on"] == blocks
    # Our origin node relays to its C++ peer too; the C++ node's own relay is observed only.
    assert rows["cpp0"]["received"] == blocks
    verdicts = {c["name"]: c["verdict"] for c in saved["criteria"]}
    assert sum(v == "PASS" for v in verdicts.values()) == 2
    observed = [n for n, v in verdicts.items() if v == "OBSERVED"]
    assert len(observed) == 2 and all("net D-17" in n for n in observed)
    report = (tmp_path / "report.md").read_text()
    assert "## Side by side" in report and "| cpp0 | cpp | 1 | n0 -> cpp0 |" in report
