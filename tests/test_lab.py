"""``dilithion-lab``: every scenario's short version on real nodes (full versions
``slow``), the fault proxy on real sockets, the gates on recorded results, and
every bad-input path of the command (one ``error:`` line, non-zero exit).

The gates on recorded results are in ``tests/test_lab_gate.py``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from dilithion.tools.lab.gate import evaluate_results
from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.proxy import FaultProxy
from dilithion.tools.lab.runner import run_scenario, scenario_options
from dilithion.tools.lab.scenario import SCENARIOS
from dilithion.tools.lab.scenarios_mixed import premined_chain, side_by_side

from framework import LoopbackServer, free_port, wait_until
from lab_records import full_set

LAB = Path(sys.executable).parent / "dilithion-lab"
DATA = Path(__file__).parent / "data" / "lab"
MEASURED = [n for n in SCENARIOS if n != "mixed"]


def lab(*args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def assert_one_error_line(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ---------------------------------------------------------------------------
# scenarios: short versions (default suite) and full versions (slow)
# ---------------------------------------------------------------------------
def _check_run(results: dict, out: Path) -> None:
    assert results["status"] == "finished"
    for c in results["criteria"]:
        assert c["verdict"] in ("PASS", "N/A"), (c, results["extra"], results["events"])
    assert results["verdict"] == "PASS", results["criteria"]
    assert json.loads((out / "results.json").read_text())["verdict"] == "PASS"
    assert "| criterion |" in (out / "report.md").read_text()
    for png in ("propagation_cdf", "hop_latency", "resources", "queue_depth"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", MEASURED)
def test_scenario_short(name, tmp_path):
    results = run_scenario(name, tmp_path, scenario_options(name, short=True), progress=False)
    _check_run(results, tmp_path)
    assert results["summary"]["blocks"] >= 2
    if "duration" in results["options"]:      # the span sampled covers the duration asked
        assert results["evidence"]["sampled_span_s"] >= results["options"]["duration"]


@pytest.mark.slow
@pytest.mark.timeout(1200)               # load runs 10 minutes
@pytest.mark.parametrize("name", MEASURED)
def test_scenario_full(name, tmp_path):
    results = run_scenario(name, tmp_path, scenario_options(name), progress=False)
    _check_run(results, tmp_path)


def test_mixed_is_skipped_without_a_cpp_node(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DILITHION_CPP_NODE"}
    out = lab("run", "mixed", "--short", "--no-progress", "--out", tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    skip_lines = [ln for ln in out.stdout.splitlines() if "SKIPPED" in ln and "|" not in ln]
    assert skip_lines == ["mixed: SKIPPED (DILITHION_CPP_NODE is not set (it names the C++"
                          " dilithion-node))"], out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["verdict"] == "SKIPPED" and results["nodes"] == []   # nothing was started
    # The gate counts a skipped run as not run: the same gates as without it.
    recorded = full_set()
    recorded["mixed"] = results
    without = {k: v for k, v in recorded.items() if k != "mixed"}
    assert ([g.line() for g in evaluate_results(recorded)]
            == [g.line() for g in evaluate_results(without)])


def test_mixed_with_an_unusable_cpp_node_is_one_error_line(tmp_path):
    out = lab("run", "mixed", "--short", "--no-progress", "--out", tmp_path,
              env={**os.environ, "DILITHION_CPP_NODE": str(tmp_path / "no-such-node")})
    assert_one_error_line(out, "DILITHION_CPP_NODE", "no such file")


def test_mixed_block_source_and_side_by_side_table(tmp_path):
    chain = premined_chain(6)
    assert [name for name, _, _ in chain] == ["V1", "V2", "V3", "V4", "V5", "V6"]
    assert all(b.header.hash_prev_block.get_hex() == p[2] for (_, b, _), p in zip(chain[1:], chain))
    with pytest.raises(LabError, match="vector chain"):
        premined_chain(6, vectors=tmp_path / "missing.json")
    blocks = [{"propagation_s": {"n1": 1.0, "cpp0": 0.5}}, {"propagation_s": {"n1": 3.0}}]
    rows = side_by_side(blocks, [("n0", "python"), ("n1", "python"), ("cpp0", "cpp"),
                                 ("n2", "python")], {"n1": "n0", "cpp0": "n0", "n2": "cpp0"}, "n0")
    assert [(r["node"], r["hops"], r["path"], r["received"], r["p50_s"]) for r in rows] == [
        ("n0", 0, "n0", 2, 0.0), ("n1", 1, "n0 -> n1", 2, 2.0), ("cpp0", 1, "n0 -> cpp0", 1, 0.5),
        ("n2", 2, "n0 -> cpp0 -> n2", 0, None)]


# ---------------------------------------------------------------------------
# the fault proxy, on real sockets
# ---------------------------------------------------------------------------
class _Echo(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(threaded=True)

    def handle(self, conn) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def test_proxy_delays_stalls_and_partitions():
    echo = _Echo()
    proxy = FaultProxy(("127.0.0.1", echo.port))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            c.sendall(b"a")
            assert c.recv(1) == b"a"
            proxy.set(delay_s=0.3)
            t0 = time.monotonic()
            c.sendall(b"b")
            assert c.recv(1) == b"b"
            assert time.monotonic() - t0 >= 0.6          # 0.3 s each way
            proxy.set(delay_s=0.0, stalled=True)
            c.sendall(b"c")
            c.settimeout(0.5)
            with pytest.raises(socket.timeout):
                c.recv(1)                                 # held at the proxy
            proxy.set(stalled=False)
            c.settimeout(10)
            assert c.recv(1) == b"c"
            proxy.set(partitioned=True)
            assert c.recv(1) == b""                       # the link was cut
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c2:
            c2.settimeout(10)
            assert c2.recv(1) == b""                      # new connections closed at once
        proxy.set(partitioned=False)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c3:
            c3.sendall(b"d")
            assert c3.recv(1) == b"d"
        with pytest.raises(ValueError):
            proxy.set(nonsense=1)
    finally:
        proxy.stop()
        echo.close()


# ---------------------------------------------------------------------------
# bad input: one line, non-zero exit
# ---------------------------------------------------------------------------
def test_unknown_scenario():
    assert_one_error_line(lab("run", "no-such-scenario"), "unknown scenario", "line")


def test_gate_missing_and_half_written_folders(tmp_path):
    assert_one_error_line(lab("gate", tmp_path / "absent"), "no such results folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(lab("gate", empty), "no lab results")
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.json").write_text("{}")
    assert_one_error_line(lab("gate", killed), "did not finish")
    half = tmp_path / "half"
    half.mkdir()
    text = (DATA / "line.json").read_text()
    (half / "results.json").write_text(text[: len(text) // 2])
    assert_one_error_line(lab("gate", half), "half-written")
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    data = json.loads(text)
    data["status"] = "interrupted"
    (interrupted / "results.json").write_text(json.dumps(data))
    assert_one_error_line(lab("gate", interrupted), "interrupted")
    assert_one_error_line(lab("gate"), "one of the two")


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = lab("run", "line", "--short", "--no-progress", "--out", tmp_path, "--base-port", port)
    assert_one_error_line(out, f"port 127.0.0.1:{port} is already in use")


def test_node_that_fails_to_start_shows_its_log_tail(tmp_path):
    out = lab("run", "line", "--short", "--no-progress", "--out", tmp_path,
              "--node-arg=--no-such-flag")
    assert_one_error_line(out, "node n0 failed to start", "log tail", "no-such-flag")
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "error"
    assert_one_error_line(lab("gate", tmp_path), "ended with an error")


def test_unreachable_prometheus():
    with socket.socket() as s:                      # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_one_error_line(lab("gate", "--prometheus", f"http://127.0.0.1:{port}"),
                          "cannot reach Prometheus")


def test_ctrl_c_stops_every_node_and_writes_partial_results(tmp_path):
    # A suite started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python keeps an ignored SIGINT: give the lab the default, as a
    # terminal's Ctrl+C would find it.
    proc = subprocess.Popen([str(LAB), "run", "load", "--short", "--duration", "600",
                             "--no-progress", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: len(list((tmp_path / "nodes").glob("*.log"))) == 3
                   and all("Node Status: RUNNING" in p.read_text()
                           for p in (tmp_path / "nodes").glob("*.log")), timeout=180)
        node_pids = [c.pid for c in psutil.Process(proc.pid).children()]
        assert len(node_pids) == 3
        proc.send_signal(signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=300)     # a liveness guard: 7-10 s here
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)              # the lab prints every thread's stack
            time.sleep(2)
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"the lab did not stop within 300 s of Ctrl+C; its stderr:\n{err[-8000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "interrupted" and data["verdict"] == "INCOMPLETE"
    assert not [p for p in node_pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif(not shutil.which("prometheus"), reason="needs the prometheus server binary")
def test_gate_from_a_real_prometheus_scraping_a_real_node(process_node, tmp_path):
    node = process_node("P").start()
    node.mine(3)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: dilithion\n"
                      f"    static_configs: [{{targets: ['127.0.0.1:{node.metrics_port}']}}]\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def scraped() -> bool:
            q = urllib.request.urlopen(f"{url}/api/v1/query?query=count_over_time(chain_height[1m])",
                                       timeout=5)
            result = json.loads(q.read())["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) >= 3
        wait_until(scraped, timeout=90)
        out = lab("gate", "--prometheus", url, "--window", "1m")
        assert out.returncode == 1, out.stderr          # one node: "nodes scraped" fails
        gates = {m.group(2): m.group(1) for m in (
            re.match(r"^(PASS|FAIL|NOT RUN|MANUAL)\s+(.*?)\s+measured: ", line)
            for line in out.stdout.strip().splitlines())}
        assert gates["nodes scraped"] == "FAIL"
        assert gates["send timeouts"] == "PASS" and gates["announcements given up"] == "PASS"
        assert gates["descriptor growth (worst node)"] in ("PASS", "FAIL")
        assert gates["on-call engineer 24/7"] == "MANUAL"
        assert gates["24-hour run"] == "FAIL"           # a minute of data: no evidence of a day
        assert "evidence: network: prometheus" in out.stdout
        assert "error" not in out.stderr
    finally:
        prom.terminate()
        prom.wait(timeout=30)


class _GarbageAfterConnect(LoopbackServer):
    """Answers a scripted peer with bytes under the wrong magic: a fatal framing fault."""

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)                                   # its version
        conn.sendall(b"\x00" * 24 + b"tail")
        self.conns = getattr(self, "conns", []) + [conn]  # keep it open: only the peer may drop it


def test_a_scripted_peer_drops_a_connection_whose_framing_is_lost():
    """A fatal frame error (wrong magic) makes the light peer forget that socket instead
    of asking the reader for the next message for ever."""
    from dilithion.core.chainparams import REGTEST_MAGIC
    from dilithion.testing.swarm import PeerSwarm

    server = _GarbageAfterConnect()
    peers = PeerSwarm(REGTEST_MAGIC, [("127.0.0.1", server.port)], count=1).start()
    try:
        assert wait_until(lambda: peers.connected() == 0, timeout=10)
    finally:
        peers.stop()
        server.close()
