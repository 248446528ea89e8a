"""End-to-end: real ``dilithion-node`` processes on loopback.

A module-wide line of three regtest nodes (A mines; B dials A; C dials B) is
started once; the tests then check agreement, metrics, start-up failures against
it, and finally shut the line down by RPC ``stop``, SIGTERM and SIGINT and
restart one node on its datadir.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from dilithion.node.metrics import NodeMetrics
from dilithion.node.wallet_key import MINING_KEY_FILE

from framework import ProcessNode, port_is_free, run_node, wait_until

SHUTDOWN_SECONDS = 8


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    work = tmp_path_factory.mktemp("line")
    a = ProcessNode(work, "A", ["--mine", "--threads=1", "--connect=none"])
    b = ProcessNode(work, "B")
    c = ProcessNode(work, "C")
    b.extra_args = [f"--connect=127.0.0.1:{a.p2p_port}"]
    c.extra_args = [f"--addnode=localhost:{b.p2p_port}"]     # host name, resolved
    nodes = {"A": a, "B": b, "C": c}
    try:
        a.start()
        b.start()
        c.start()
        # Let A mine a while, then stop its miner so the three can settle on one tip.
        wait_until(lambda: c.height() >= 15, timeout=60,
                   message=lambda: c.describe() + b.describe())
        assert a.rpc("stopmining") in (True, None)
        wait_until(lambda: a.best_hash() == b.best_hash() == c.best_hash(), timeout=30,
                   message=lambda: (a.height(), b.height(), c.height()))
        yield nodes
    finally:
        for node in nodes.values():
            node.stop(check=False)                # the last test stopped them already


def test_three_nodes_in_a_line_agree_on_the_best_block(line):
    a, b, c = line["A"], line["B"], line["C"]
    best = a.best_hash()
    assert b.best_hash() == best and c.best_hash() == best
    assert a.height() == b.height() == c.height() >= 15
    assert len(b.rpc("getpeerinfo")) == 2
    assert len(a.rpc("getpeerinfo")) == 1 and len(c.rpc("getpeerinfo")) == 1
    mining = a.rpc("getmininginfo")
    assert mining["mining"] is False                  # stopped by RPC
    # A's start-up followed the C++ wording (cli 1.7) and it found blocks (cli 5.1).
    out = a.output()
    for line_text in ("Initializing blockchain storage...", "  [OK] Blockchain database opened",
                      "Network: REGTEST", "  [OK] Genesis block verified",
                      "Initializing P2P components...", "Node Status: RUNNING",
                      "[OK] BLOCK FOUND!", "[Blockchain] Block became new chain tip at height 1",
                      "Outbound connections disabled (--connect=none)"):
        assert line_text in out, line_text
    assert "Initiating outbound connections..." in b.output()
    assert "Adding node localhost:" in c.output()
    assert "Resolved localhost to 127.0.0.1" in c.output()       # through net/dns.py
    assert (a.datadir / MINING_KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_metrics_endpoint_serves_every_metric_and_values_move(line):
    a, b, c = line["A"], line["B"], line["C"]
    height = c.height()
    families = {f.name + ("_total" if f.type == "counter" else ""): f.type
                for f in NodeMetrics(process_metrics=False).registry.collect()}
    assert len(families) >= 13
    text = b.metrics_text()
    for name, kind in families.items():
        assert f"# TYPE {name} {kind}" in text, name
    assert a.metric("chain_height") == height == c.metric("chain_height")
    assert c.metric("blocks_connected_total") >= height
    assert b.metric("connected_peers_count") == 2 and c.metric("connected_peers_count") == 1
    assert a.metric("block_propagation_time_seconds_count", role="announce") > 0
    assert b.metric("block_propagation_time_seconds_count", role="receive") > 0
    assert c.metric("block_propagation_time_seconds_count", role="receive") > 0
    assert a.metric("peer_broadcast_success_rate") == 1.0
    for node in (a, b, c):
        assert node.metric("bytes_sent_total") > 0 and node.metric("bytes_received_total") > 0
    # One more block moves the counters everywhere.
    before = c.metric("blocks_connected_total")
    sent_before = a.metric("bytes_sent_total")
    a.rpc("startmining")
    wait_until(lambda: c.metric("blocks_connected_total") > before, timeout=30)
    a.rpc("stopmining")
    assert a.metric("bytes_sent_total") > sent_before
    wait_until(lambda: a.best_hash() == b.best_hash() == c.best_hash(), timeout=30)


def test_a_locked_datadir_is_one_clear_error(line, process_node):
    """A second node on a running node's datadir: LevelDB's lock → message + exit 1."""
    second = process_node("second", ["--connect=none"], datadir=line["A"].datadir)
    second.start(wait=False)
    assert second.wait(30) == 1, second.describe()
    assert "Failed to open blockchain database" in second.errors()
    assert "Traceback" not in second.errors() + second.output()


@pytest.mark.parametrize("which, message", [
    ("p2p", "Failed to bind P2P socket on port {port}"),
    ("rpc", "Failed to start RPC server on port {port}"),
    ("metrics", "Failed to start metrics server on port {port}"),
])
def test_a_busy_port_is_one_clear_error(line, process_node, which, message):
    """Each listener's port taken by node B: one message on stderr and exit 1."""
    b = line["B"]
    busy = process_node("busy", ["--connect=none"])
    port = {"p2p": b.p2p_port, "rpc": b.rpc_port, "metrics": b.metrics_port}[which]
    setattr(busy, f"{which}_port", port)
    busy.start(wait=False)
    assert busy.wait(30) == 1, busy.describe()
    assert message.format(port=port) in busy.errors()
    assert "Error: " in busy.errors() and "Traceback" not in busy.errors()
    assert "Node Status: RUNNING" not in busy.output()


def test_a_hash_in_the_conf_password_is_one_clear_error(process_node):
    """``rpcpassword=ab#cd`` in dilithion.conf: the node refuses to start and names the
    line, instead of serving RPC with a cut password that never matches."""
    node = process_node("hashpw", ["--connect=none"])
    node.datadir.mkdir(parents=True, exist_ok=True)
    (node.datadir / "dilithion.conf").write_text("rpcuser=op\nrpcpassword=pa#ss\n")
    node.start(wait=False)
    assert node.wait(30) == 1, node.describe()
    assert "dilithion.conf:2: '#' is not allowed in rpcpassword" in node.errors()
    assert "Traceback" not in node.errors() + node.output()
    assert "Node Status: RUNNING" not in node.output()


def test_stop_by_rpc_sigterm_and_sigint_then_restart_keeps_the_chain(line, tmp_path):
    a, b, c = line["A"], line["B"], line["C"]
    best, height = c.best_hash(), c.height()
    assert c.rpc("stop") is not None
    assert c.wait(SHUTDOWN_SECONDS) == 0, c.describe()
    b.send_signal(signal.SIGTERM)
    assert b.wait(SHUTDOWN_SECONDS) == 0, b.describe()
    a.send_signal(signal.SIGINT)
    assert a.wait(SHUTDOWN_SECONDS) == 0, a.describe()
    for node, signum in ((b, 15), (a, 2)):
        assert f"Received signal {signum}, shutting down gracefully..." in node.output()
    for node in (a, b, c):
        out = node.output()
        assert "Shutting down..." in out and "Dilithion node stopped cleanly" in out
        assert out.index("Shutting down...") < out.index("Dilithion node stopped cleanly")
        assert "Traceback" not in node.errors()
    # C's regtest datadir is refused by a testnet node: one message, exit 1.
    wrong = run_node(["--testnet", f"--datadir={c.datadir}", f"--port={c.p2p_port}",
                      f"--rpcport={c.rpc_port}", "--connect=none"], cwd=tmp_path)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "ERROR: Cannot load chain state from database" in wrong.stderr
    assert "wrong network or wrong datadir" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    # Restart C on its datadir, alone: the chain is still there.
    c.extra_args = ["--connect=none"]
    c.start()
    try:
        assert c.best_hash() == best and c.height() == height
        assert f"[OK] Loaded chain state: {height + 1} blocks (height {height})" in c.run_output()
        assert "Mining key loaded" in c.run_output()
    finally:
        c.send_signal(signal.SIGTERM)
        assert c.wait(SHUTDOWN_SECONDS) == 0


@pytest.mark.parametrize("args, message", [
    (["--port=0"], "Error: Invalid P2P port (must be 1-65535): --port=0"),
    (["--port=abc"], "Error: Invalid P2P port format (not a number): --port=abc"),
    (["--rpcport=70000"], "Error: Invalid RPC port (must be 1-65535): --rpcport=70000"),
    (["--rpcport=8332abc"], "Error: Invalid RPC port format (not a number): --rpcport=8332abc"),
    (["--port=99999999999"], "Error: P2P port number out of range: --port=99999999999"),
    (["--threads=0"], "Error: Invalid thread count (must be 1-256 or 'auto'): --threads=0"),
    (["--threads=lots"], "Error: Invalid thread count (must be a number or 'auto'): --threads=lots"),
    (["--metrics-port=-1"], "Error: Invalid metrics port (must be 1-65535): --metrics-port=-1"),
    (["--bogus"], "Unknown option: --bogus"),
    (["--regtest", "mine"], "Unknown option: mine"),
    (["--testnet", "--regtest"], "--testnet and --regtest cannot be combined"),
    (["--log-level=LOUD"], "Error: Invalid value for '--log-level'"),
    (["--randomx=turbo"], "Error: Invalid value for '--randomx'"),
    (["--maxreceivebuffer=4"],
     "Error: Invalid receive buffer size (must be 8-65536 MiB): --maxreceivebuffer=4"),
    (["--maxreceivebuffer=lots"],
     "Error: Invalid receive buffer size (not a number of MiB): --maxreceivebuffer=lots"),
    (["--pingtimeout=0"], "Error: Invalid ping timeout (must be 1-3600 seconds): --pingtimeout=0"),
    (["--pingtimeout=30s"],
     "Error: Invalid ping timeout (not a number of seconds): --pingtimeout=30s"),
])
def test_bad_flags_exit_1_with_a_clear_message(args, message, tmp_path):
    result = run_node(args, cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Usage: dilithion-node [options]" in result.stdout
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []          # nothing was created


@pytest.mark.parametrize("variable, value, message", [
    ("DIL_LOG_LEVEL", "LOUD", "Error: Invalid log level: LOUD"),
    ("DIL_RANDOMX", "turbo", "Error: DIL_RANDOMX='turbo' is not one of light, full, auto"),
    ("DIL_METRICS_PORT", "http", "Error: Invalid metrics port format (not a number): "
                                 "DIL_METRICS_PORT=http"),
])
def test_bad_environment_exits_1_with_a_clear_message(tmp_path, variable, value, message):
    env = {**os.environ, variable: value, "DIL_METRICS_ENABLED": "1"}
    result = run_node(["--regtest", f"--datadir={tmp_path / 'd'}", "--connect=none"], env=env,
                      cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_prints_usage_and_exits_0(tmp_path):
    result = run_node(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "--connect=<host:port>" in result.stdout and "--regtest" in result.stdout
    assert result.stderr == ""


def test_bad_peer_entries_are_reported_and_the_node_keeps_running(process_node):
    node = process_node("peers", ["--connect=nocolon", "--connect=127.0.0.1:0",
                                  "--addnode=256.1.1.1:1234"],
                        env={**os.environ, "DIL_LOG_LEVEL": "DEBUG"})
    node.start()
    try:
        errors = node.errors()
        assert "[FAIL] Invalid address format: nocolon (expected ip:port)" in errors
        assert "[FAIL] Invalid port number in address: 127.0.0.1:0 (must be 1-65535)" in errors
        assert "[FAIL] Invalid IP address: 256.1.1.1" in errors
        assert node.height() == 0
        assert "DEBUG: " in node.output()              # DIL_LOG_LEVEL=DEBUG took effect
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(SHUTDOWN_SECONDS) == 0


def test_no_arguments_starts_a_regtest_miner_in_the_home_directory(tmp_path, process_node):
    """Quick start (cli 1.5): regtest, mining, ~/.dilithion-regtest, default ports."""
    from dilithion.core.chainparams import ChainParams
    params = ChainParams.regtest()
    if not (port_is_free(params.p2p_port) and port_is_free(params.rpc_port)):
        pytest.skip(f"default regtest ports {params.p2p_port}/{params.rpc_port} are in use")
    home = tmp_path / "home"
    home.mkdir()
    node = process_node("quick", explicit_ports=False, datadir=home / params.data_dir_name)
    # Metrics switched on by the environment alone (no flag in quick start).
    node.env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "DIL_LOG_LEVEL": "INFO",
                "DIL_METRICS_ENABLED": "1", "DIL_METRICS_PORT": str(node.metrics_port)}
    node.rpc_port = params.rpc_port
    node.start()
    try:
        assert "quick start = local REGTEST node, mining with 1 thread" in node.output()
        wait_until(lambda: node.height() >= 3, timeout=60)
        info = node.rpc("getmininginfo")
        assert info["mining"] is True and info["threads"] == 1
        assert (home / ".dilithion-regtest" / "blocks").is_dir()
        assert (home / ".dilithion-regtest" / MINING_KEY_FILE).is_file()
        assert "No --connect/--addnode given: listening only" in node.output()
        assert node.metric("chain_height") >= 3
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(SHUTDOWN_SECONDS) == 0, node.describe()


def test_addnode_peer_is_redialled_after_it_restarts(process_node):
    """Also: DIL_P2P_LOG=1 (on B only) shows every message at the default INFO level."""
    a = process_node("A", ["--connect=none"])
    b = process_node("B", env={**os.environ, "DIL_P2P_LOG": "1"})
    b.extra_args = [f"--addnode=127.0.0.1:{a.p2p_port}"]
    a.start()
    b.start()
    wait_until(lambda: len(b.rpc("getpeerinfo")) == 1, timeout=10)
    a.send_signal(signal.SIGTERM)
    assert a.wait(SHUTDOWN_SECONDS) == 0
    wait_until(lambda: len(b.rpc("getpeerinfo")) == 0, timeout=10)
    a.start()                                     # same port, same datadir
    wait_until(lambda: len(b.rpc("getpeerinfo")) == 1, timeout=20, message=b.describe)
    wait_until(lambda: len(a.rpc("getpeerinfo")) == 1, timeout=10)
    assert f"[P2P] Lost connection to 127.0.0.1:{a.p2p_port}" in b.output()
    assert f"[P2P] Reconnecting to 127.0.0.1:{a.p2p_port}" in b.output()
    assert "DEBUG: [P2P] recv version" in b.output()
    assert "DEBUG: [P2P] send verack" in b.output()
    assert "[P2P] recv " not in a.output() and "DEBUG" not in a.output()


def test_full_disk_stops_the_node_with_one_error_and_loses_nothing(process_node, tiny_tmpfs):
    tiny_disk = tiny_tmpfs("160k")     # a mining regtest node fills it within seconds
    node = process_node("full", ["--connect=none", "--mine", "--threads=1"],
                        datadir=tiny_disk / "dd")
    node.start()
    assert node.wait(90) == 1, node.describe()
    err = node.errors()
    assert "FATAL: cannot store mined block" in err and "No space left on device" in err, err
    assert "Traceback" not in err
    assert "Dilithion node stopped cleanly" in node.output()
    last_tip = max(int(h) for h in re.findall(r"became new chain tip at height (\d+)", node.output()))
    # More room, same datadir: every block that was reported stored is still there.
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)
    node.extra_args = ["--connect=none"]
    node.start()
    try:
        assert node.height() == last_tip, node.describe()
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(SHUTDOWN_SECONDS) == 0, node.describe()
