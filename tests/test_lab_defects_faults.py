"""The gate lines the checklist's faults make decidable, on defective nodes: FAIL,
where the real node PASSes (``tests/test_lab.py::test_scenario_short`` runs the
same short scenarios on the real node; ``tests/test_lab_faults.py`` checks each
line both ways on recorded results).

Each test runs one short scenario on a node with one known defect
(``tests/defects/faults.py``) and asserts the gate line FAILs because of what was
measured (never the build label).  Runs that wait out a timeout are ``slow``.
"""
from __future__ import annotations

import pytest

from defects.lab import assert_measured_fail
from defects.lab import gate_lines as _gate_lines, run_defective as _run_defective
from lab_records import recorded


def gate_lines(results: dict[str, dict]) -> dict[str, object]:
    return _gate_lines(results, lift_short=True)


def run_defective(name: str, defect: str, tmp_path, **overrides) -> dict:
    return _run_defective(name, defect, tmp_path, short=True, **overrides)


def _criterion(results: dict, prefix: str) -> dict:
    return next(c for c in results["criteria"] if c["name"].startswith(prefix))


@pytest.mark.slow                       # 26-33 s: the stuck peer's send timeout is waited out
def test_a_synchronous_broadcaster_fails_asynchronous_broadcasting(tmp_path):
    """The stuck peer's link holds the mining thread until its send timeout."""
    results = run_defective("slow-peer", "sync-broadcast", tmp_path)
    assert _criterion(results, "stuck links closed")["verdict"] == "PASS"   # the fault bit
    held = _criterion(results, "miner: generatetoaddress back")
    assert held["verdict"] == "FAIL" and held["measured"] >= 1, held
    line = gate_lines({"slow-peer": results})["asynchronous broadcasting"]
    assert_measured_fail(line)


@pytest.mark.slow
def test_serving_a_block_to_few_peers_fails_the_fetching_peers_line(tmp_path):
    results = run_defective("load", "serve-few", tmp_path)
    got = _criterion(results, "fetching peers that got every block")
    assert got["verdict"] == "FAIL", got
    line = gate_lines({"load": results})["50+ fetching peers per node"]
    assert_measured_fail(line)


@pytest.mark.slow
def test_a_node_without_catch_up_fails_the_kill_mid_send_line(tmp_path):
    results = run_defective("peer-kill", "no-catch-up", tmp_path, catch_up_timeout=20.0)
    assert _criterion(results, "victim SIGKILLed in the middle")["verdict"] == "PASS"
    assert _criterion(results, "restarted peer caught up")["verdict"] == "FAIL"
    line = gate_lines({"peer-kill": results})["peer killed mid-block catches up"]
    assert_measured_fail(line)


@pytest.mark.slow
def test_a_node_without_a_dead_peer_check_fails_the_dead_link_line(tmp_path):
    results = run_defective("partition", "no-dead-peer-check", tmp_path)
    found = _criterion(results, "both ends closed the dead link")
    assert found["verdict"] == "FAIL" and found["measured"] is None, found
    line = gate_lines({"partition": results})["dead link found (silent partition)"]
    assert_measured_fail(line)


@pytest.mark.slow
def test_a_late_relay_fails_the_regions_and_p95_lines(tmp_path):
    results = run_defective("regions", "relay-delay-12s", tmp_path)
    # the p95 line reads line and regions: the real node's recorded line run beside it
    lines = gate_lines({"regions": results, "line": recorded()["line"]})
    for name in ("regions: every block to every node", "regions: average propagation",
                 "mined -> connected at every node (p50/p95/max)"):
        assert_measured_fail(lines[name])
