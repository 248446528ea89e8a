"""Running a lab scenario on a defective node and reading its gate lines: what the
defect tests (``tests/test_lab_defects*.py``) share.  Not imported by the node
process (only the registry and the defect modules are)."""
from __future__ import annotations

import copy

from dilithion.tools.lab.gate import evaluate_results
from dilithion.tools.lab.runner import run_scenario, scenario_options

from defects import defective_program

__all__ = ["run_defective", "gate_lines", "assert_measured_fail"]


def run_defective(name: str, defect: str | None, tmp_path, *, short: bool = False,
                  **overrides) -> dict:
    """Scenario ``name`` on the node with ``defect`` (None: the real node): its full
    options (or ``short`` ones) with ``overrides``; a run the scenario aborts still
    returns what it wrote.  The build recorded names the defective program."""
    opts = {**scenario_options(name, short=short), **overrides}
    program = defective_program(defect) if defect else None
    results = run_scenario(name, tmp_path, opts, progress=False, node_program=program)
    if defect:
        assert f"defective_node.py {defect}" in results["evidence"]["build"]
    return results


def gate_lines(results: dict[str, dict], *, lift_short: bool = False) -> dict[str, object]:
    """The gate lines over ``results``.  ``lift_short``: as a full-length run with these
    figures would get them (a ``--short`` run is "no evidence" on every line; lifting
    the label shows that the line FAILs on what was measured, its reason empty)."""
    if lift_short:
        results = copy.deepcopy(results)
        for r in results.values():
            r["options"]["short"] = False
    return {g.name: g for g in evaluate_results(results)}


def assert_measured_fail(line, *fragments: str) -> None:
    """FAIL on the figure: no evidence gap, and the measured text says why."""
    print(line.line())                       # the figure, in the test's output (-s)
    assert line.verdict == "FAIL", line.line()
    assert line.reason == "", line.line()
    for f in fragments:
        assert f in str(line.measured), (f, line.line())
