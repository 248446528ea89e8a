"""Every gate of ``dilithion-lab`` on a defective node: FAIL, where the real node PASSes.

A gate that cannot fail is a defect (issue 23, item 4).  Each test here runs a
gate's scenario on a node with one known defect (``tests/defective_node.py``,
the registry in ``tests/defects/``) and asserts that the gate line comes out
FAIL *because of what was measured*: the line's own figure shows the defect and
it carries no "no evidence" reason (the one exception is the missing-metric
test, whose point is that reason).  The gate never reads the build label, so
the FAIL can only come from the figures.

The runs take the scenario's full options (not ``--short``, so the evidence is
complete and only the figure can fail the line) with the counts cut to what
shows the defect, and the waits for blocks that never come shortened
(``block_timeout``, ``catch_up_timeout``).  The real node's PASS of the same
lines: ``test_real_node_passes_the_line_gates`` here, the scenario criteria in
``tests/test_lab.py`` (short runs in the default suite, full runs ``slow``), and
the gate on a complete recorded set in ``tests/test_lab_gate.py``.  The table
gate -> defect -> test is in ``docs/LAB.md``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dilithion.tools.lab.leaks import MIN_LEAK_RUN_S

from defects import DEFECTS
from defects.lab import assert_measured_fail, gate_lines, run_defective
from lab_records import full_set

ROOT = Path(__file__).resolve().parent.parent


def test_every_defect_is_documented():
    assert DEFECTS and all(what for what, _ in DEFECTS.values())


def _defect_table() -> list[list[str]]:
    text = (ROOT / "docs" / "LAB.md").read_text()
    section = text.split("### Every gate can fail", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    rows: list[list[str]] = []
    for ln in lines[1:]:                      # "same": the cell of the row above
        cells = [c.strip() for c in ln.strip("|").split(" | ")]
        rows.append([rows[-1][i] if c == "same" and rows else c for i, c in enumerate(cells)])
    return rows


def test_every_gate_line_has_a_defect_row():
    """docs/LAB.md's gate -> defect -> test table has exactly one row per gate line the
    gate prints, every defect it names is registered, and every test it names
    exists: a gate added without a way to fail it shows here."""
    rows = _defect_table()
    names = [r[0] for r in rows]
    assert sorted(names) == sorted(g for g in gate_lines(full_set())), names
    for row in rows:
        for name in re.findall(r"`([a-z0-9]+(?:-[a-z0-9]+)+)`", row[1]):
            assert name in DEFECTS, (row[0], name)
        for path, test in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", " ".join(row[3:])):
            assert re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.M), (path, test)
    assert all(re.search(r"::test_\w+", r[3]) for r in rows), "a row without a test"


# ---------------------------------------------------------------------------
# line: the propagation, CPU and send-timeout gates (quick ones in the default suite)
# ---------------------------------------------------------------------------
def test_cpu_spike_fails_the_cpu_gate(tmp_path):
    results = run_defective("line", "broadcast-cpu-spike", tmp_path, blocks=1)
    line = gate_lines({"line": results})["CPU spike during broadcast"]
    assert_measured_fail(line)
    assert results["extra"]["cpu_pct_per_block"][0] >= 10, results["extra"]
    # the blocks themselves still went through: only the CPU line fails
    assert gate_lines({"line": results})["block propagation success rate"].verdict == "PASS"


def test_a_metric_not_exported_fails_send_timeouts_for_want_of_evidence(tmp_path):
    results = run_defective("line", "no-send-timeout-metric", tmp_path, blocks=1)
    assert results["summary"]["send_timeouts"] is None
    line = gate_lines({"line": results})["send timeouts"]
    assert line.verdict == "FAIL", line.line()
    assert line.reason.startswith("no evidence"), line.line()
    assert "not exported: send_timeout_errors_total" in line.reason, line.line()
    assert "missing in line" in line.measured


def test_a_send_path_that_stalls_fails_send_timeouts(tmp_path):
    results = run_defective("line", "block-send-stalls", tmp_path, blocks=1, block_timeout=10)
    assert results["summary"]["send_timeouts"] >= 1, results["counters"]
    assert_measured_fail(gate_lines({"line": results})["send timeouts"])


@pytest.mark.slow
def test_a_late_relay_fails_every_block_and_average_propagation(tmp_path):
    results = run_defective("line", "relay-delay-12s", tmp_path, blocks=1)
    gates = gate_lines({"line": results})
    assert results["summary"]["max_s"] > 10 and results["summary"]["mean_s"] > 10
    assert_measured_fail(gates["every block to every node"], "max ")
    assert_measured_fail(gates["average propagation"], "mean ")
    assert gates["block propagation success rate"].verdict == "PASS"


@pytest.mark.slow
def test_no_relay_fails_blocks_across_3_nodes_and_the_success_rate(tmp_path):
    results = run_defective("line", "no-relay", tmp_path, block_timeout=2)
    assert results["verdict"] == "FAIL"
    assert "defective_node.py no-relay" in results["evidence"]["build"]
    gates = gate_lines({"line": results})
    assert_measured_fail(gates["blocks across 3 nodes"], "0 blocks over 3 nodes")
    assert_measured_fail(gates["block propagation success rate"], "min 0 ")
    for name in ("every block to every node", "average propagation"):
        assert_measured_fail(gates[name], "None")       # no block reached every node


@pytest.mark.slow
def test_real_node_passes_the_line_gates(tmp_path):
    """The PASS side of the line tests above: a full line run (10 blocks) of the real node."""
    gates = gate_lines({"line": run_defective("line", None, tmp_path)})
    for name in ("blocks across 3 nodes", "every block to every node", "average propagation",
                 "CPU spike during broadcast", "block propagation success rate", "send timeouts"):
        assert gates[name].verdict == "PASS", gates[name].line()


# ---------------------------------------------------------------------------
# the failure scenarios
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_late_relay_fails_scenario_slow_peer_and_asynchronous_broadcasting(tmp_path):
    """A miner that holds its announcements back 12 s: the healthy peer is late and the
    inv is queued 12 s after the block connected.  (The broadcaster the async line
    exists for, one blocked by a peer that stops reading, is ``sync-broadcast`` in
    ``tests/test_lab_defects_faults.py``.)"""
    results = run_defective("slow-peer", "relay-delay-12s", tmp_path, blocks=2)
    gates = gate_lines({"slow-peer": results})
    assert_measured_fail(gates["scenario slow-peer"], "healthy peers: slowest block")
    assert_measured_fail(gates["asynchronous broadcasting"], "slowest healthy inv")
    queued = next(c for c in results["criteria"] if c["name"].startswith("miner: slowest inv"))
    assert queued["measured"] >= 10_000, queued


@pytest.mark.slow
def test_no_catch_up_fails_scenario_peer_kill(tmp_path):
    results = run_defective("peer-kill", "no-catch-up", tmp_path, blocks=6, catch_up_timeout=10)
    assert results["extra"]["catch_up_s"] is None
    assert_measured_fail(gate_lines({"peer-kill": results})["scenario peer-kill"],
                         "restarted peer caught up")


@pytest.mark.slow
def test_no_catch_up_fails_scenario_partition_and_all_failure_scenarios(tmp_path):
    """Also the line "all failure scenarios tested": the recorded real-node runs
    (``full_set``, which passes it in tests/test_lab_gate.py) with partition
    replaced by this run."""
    results = run_defective("partition", "no-catch-up", tmp_path, blocks=3, catch_up_timeout=10)
    assert results["extra"]["heal_to_converged_s"] is None
    assert_measured_fail(gate_lines({"partition": results})["scenario partition"],
                         "all nodes on the most-work tip")
    mixed = {**full_set(), "partition": results}
    assert_measured_fail(gate_lines(mixed)["all failure scenarios tested"],
                         "not passing: partition")
    assert gate_lines(full_set())["all failure scenarios tested"].verdict == "PASS"


@pytest.mark.slow
def test_a_dead_peer_check_tuned_for_loopback_fails_scenario_latency(tmp_path):
    results = run_defective("latency", "pong-deadline-1s", tmp_path, blocks=2, block_timeout=20)
    assert results["summary"]["success_rate"] < 1.0, results["summary"]
    assert_measured_fail(gate_lines({"latency": results})["scenario latency"],
                         "block propagation success rate")


@pytest.mark.slow
def test_a_broadcast_queue_that_never_drains_fails_scenario_burst(tmp_path):
    results = run_defective("burst", "broadcast-stalled", tmp_path, blocks=20, block_timeout=5)
    depth = next(c for c in results["criteria"] if c["name"].startswith("broadcast queue depth"))
    assert depth["measured"] >= 20, depth
    assert_measured_fail(gate_lines({"burst": results})["scenario burst"],
                         "broadcast queue depth after the burst")


# ---------------------------------------------------------------------------
# load: peers, leaks, the one-hour run
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_an_inbound_limit_of_a_handful_fails_50_concurrent_peers(tmp_path):
    results = run_defective("load", "inbound-limit-6", tmp_path, duration=10.0, interval=2.0,
                            sample=1.0)
    peers = results["extra"]["concurrent_peers"]
    assert peers < 50, peers
    assert_measured_fail(gate_lines({"load": results})["50+ concurrent peers"], str(peers))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_leak_fails_the_leak_gate(tmp_path):
    """144 MB/h for the shortest run the leak verdict decides (MIN_LEAK_RUN_S, 5 min):
    its RSS limit there is ~37 MB/h (tools/lab/leaks.py; see tests/defects/leak.py)."""
    results = run_defective("load", "leak-144mb-per-h", tmp_path, duration=MIN_LEAK_RUN_S + 5)
    rss = next(c for c in results["criteria"] if c["name"].startswith("worst node RSS"))
    assert rss["verdict"] == "FAIL" and rss["measured"] > 72, rss
    assert_measured_fail(gate_lines({"load": results})["no memory, CPU or descriptor leaks"],
                         "RSS slope", "(FAIL)")


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_a_leak_fails_the_one_hour_load_run(tmp_path):
    """``run load --duration 3600`` on a node leaking 16 MB/h (four times the hour's limit)."""
    results = run_defective("load", "leak-16mb-per-h", tmp_path, duration=3600.0)
    assert_measured_fail(gate_lines({"load": results})["1-hour load run (lab)"],
                         "failed: worst node RSS")
