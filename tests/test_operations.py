"""The operator's levers of the readiness plan, on real ``dilithion-node`` processes.

* ``--mainnet`` (the default network, named by the runbooks) and its usage error;
* JSON logs (``--log-format=json`` / ``DIL_LOG_FORMAT``): every line of a mining
  node and its peer is one JSON object with the documented fields;
* the hot-fix levers (``DIL_SEND_TIMEOUT``, ``DIL_BROADCAST_RETRIES``,
  ``DIL_BROADCAST_BACKOFF_MS``): one error line for a bad value, the values in
  effect in the start-up line and the metrics;
* the rollback procedure as the plan writes it: stop, restart on the same datadir
  with ``DIL_SEND_TIMEOUT=30000``, check the node runs with it;
* the metrics port default (9339, not node_exporter's 9100).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from dilithion.node.logging_setup import JSON_FIELDS
from dilithion.node.metrics import DEFAULT_METRICS_PORT

from framework import CONVERGE_TIMEOUT, converged, heights, run_node, wait_until

SHUTDOWN_SECONDS = 15
#: Liveness guard for a start-up (RandomX cache included) on a loaded two-core machine.
START_TIMEOUT = 120
ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def can_listen_on(port: int) -> bool:
    """Nobody listens on ``port`` (connections of an earlier run in TIME_WAIT do not
    count: the metrics server, like this check, sets ``SO_REUSEADDR``)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- --mainnet
@pytest.mark.parametrize("args, message", [
    (["--mainnet", "--testnet"], "Error: --mainnet and --testnet cannot be combined"),
    (["--regtest", "--mainnet"], "Error: --mainnet and --regtest cannot be combined"),
    (["--mainnet", "--testnet", "--regtest"],
     "Error: --mainnet, --testnet and --regtest cannot be combined"),
])
def test_mainnet_with_another_network_is_one_usage_error(args, message, tmp_path):
    result = run_node(args, cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [message]
    assert "Usage: dilithion-node [options]" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_mainnet_flag_runs_mainnet_with_metrics_on_the_default_port(process_node):
    """``--mainnet`` is accepted and is the default network; ``DIL_METRICS_ENABLED=1``
    without a port serves metrics on 9339 (9100 is node_exporter's)."""
    if not can_listen_on(DEFAULT_METRICS_PORT):
        pytest.skip(f"port {DEFAULT_METRICS_PORT} is in use on this machine")
    node = process_node("main", explicit_ports=False)
    node.extra_args = ["--mainnet", f"--datadir={node.datadir}", f"--port={node.p2p_port}",
                       f"--rpcport={node.rpc_port}", "--bind=127.0.0.1", "--connect=none"]
    node.metrics_port = DEFAULT_METRICS_PORT
    node.env = {**node.env, "DIL_METRICS_ENABLED": "1"}
    node.env.pop("DIL_METRICS_PORT", None)
    node.start(timeout=START_TIMEOUT)
    try:
        out = node.run_output()
        assert "Network: MAINNET" in out
        assert f"[OK] Metrics served on http://127.0.0.1:{DEFAULT_METRICS_PORT}/metrics" in out
        assert "P2P levers: send timeout 10000 ms" in out            # mainnet's default
        assert node.rpc("getblockchaininfo")["chain"] == "main"
        assert node.metric("p2p_send_timeout_seconds") == 10.0
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(SHUTDOWN_SECONDS) == 0, node.describe()


def test_help_lists_the_new_flags_and_variables(tmp_path):
    text = run_node(["--help"], cwd=tmp_path).stdout
    for item in ("--mainnet", "--log-format=<fmt>", "DIL_LOG_FORMAT", "DIL_SEND_TIMEOUT=<ms>",
                 "DIL_BROADCAST_RETRIES=<n>", "DIL_BROADCAST_BACKOFF_MS=<ms>",
                 f"(default: {DEFAULT_METRICS_PORT})"):
        assert item in text, item


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("variable, value, message", [
    ("DIL_LOG_FORMAT", "xml", "Error: DIL_LOG_FORMAT='xml' is not one of text, json"),
    ("DIL_BROADCAST_RETRIES", "21",
     "Error: DIL_BROADCAST_RETRIES='21' is not a whole number from 0 to 20"),
    ("DIL_BROADCAST_RETRIES", "-1",
     "Error: DIL_BROADCAST_RETRIES='-1' is not a whole number from 0 to 20"),
    ("DIL_BROADCAST_RETRIES", "three",
     "Error: DIL_BROADCAST_RETRIES='three' is not a whole number from 0 to 20"),
    ("DIL_BROADCAST_BACKOFF_MS", "0",
     "Error: DIL_BROADCAST_BACKOFF_MS='0' is not a whole number from 1 to 60000 ms"),
    ("DIL_BROADCAST_BACKOFF_MS", "60001",
     "Error: DIL_BROADCAST_BACKOFF_MS='60001' is not a whole number from 1 to 60000 ms"),
    ("DIL_SEND_TIMEOUT", "30s",
     "Error: DIL_SEND_TIMEOUT='30s' is not a whole number from 1 to 3600000 ms"),
])
def test_a_bad_lever_value_is_one_error_line_and_exit_1(tmp_path, variable, value, message):
    env = {**os.environ, variable: value}
    result = run_node(["--regtest", f"--datadir={tmp_path / 'd'}", "--connect=none"], env=env,
                      cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [message]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_log_format_flag_is_a_usage_error(tmp_path):
    result = run_node(["--regtest", "--log-format=xml"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Invalid value for '--log-format'")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- JSON logs
def json_lines(node) -> list[dict]:
    """Every stdout and stderr line of every run; each must be one JSON object."""
    records = []
    for text in (node.output(), node.errors()):
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{node.name}: not a JSON line: {line!r}") from None
    return records


def with_message(records, prefix: str) -> list[dict]:
    return [r for r in records if r["message"].startswith(prefix)]


def test_json_logs_of_a_miner_and_its_peer(process_node):
    """A mines (``--log-format=json`` wins over ``DIL_LOG_FORMAT=text``), B follows
    (``DIL_LOG_FORMAT=json`` alone); every line of both parses and carries the fields."""
    b = process_node("B", ["--connect=none"], env={**os.environ, "DIL_LOG_FORMAT": "json"})
    a = process_node("A", ["--mine", "--threads=1", f"--connect={b.p2p_address}",
                           "--log-format=json"], env={**os.environ, "DIL_LOG_FORMAT": "text"})
    b.start(timeout=START_TIMEOUT)
    a.start(timeout=START_TIMEOUT)
    wait_until(lambda: b.height() >= 3, timeout=90, message=lambda: heights((a, b)))
    a.rpc("stopmining")
    wait_until(lambda: converged((a, b)), timeout=CONVERGE_TIMEOUT,
               message=lambda: heights((a, b)))
    # Each BLOCK FOUND line names a block of A's chain by hash and height.
    found = with_message(json_lines(a), "[OK] BLOCK FOUND!")
    assert len(found) >= 3
    for rec in found:
        assert HEX64.match(rec["block_hash"]) and isinstance(rec["height"], int)
        assert a.rpc("getblockhash", [rec["height"]])["blockhash"] == rec["block_hash"]
    b.send_signal(signal.SIGTERM)
    assert b.wait(SHUTDOWN_SECONDS) == 0, b.describe()
    wait_until(lambda: with_message(json_lines(a), "[P2P] Peer "), timeout=10,
               message=a.describe)          # A saw B go: the disconnect line
    a.send_signal(signal.SIGTERM)
    assert a.wait(SHUTDOWN_SECONDS) == 0, a.describe()

    for node in (a, b):
        records = json_lines(node)
        assert any(r["message"] == "Dilithion node stopped cleanly" for r in records)
        for rec in records:
            assert list(rec)[:len(JSON_FIELDS)] == list(JSON_FIELDS), rec
            assert ISO_UTC_MS.match(rec["time"]) and rec["level"] in LEVELS, rec
            assert rec["thread"] and rec["component"], rec
        assert {r["component"] for r in records} >= {"node.dilithion_node", "node.init",
                                                     "net.net_transport"}
    a_records, b_records = json_lines(a), json_lines(b)
    b_addr = re.compile(r"^127\.0\.0\.1:\d+$")
    tips = with_message(a_records, "[Blockchain] Block became new chain tip at height ")
    assert tips and all(r["message"].endswith(f" {r['height']}") and HEX64.match(r["block_hash"])
                        for r in tips)
    broadcasts = with_message(a_records, "[P2P] Broadcasted block inv to ")
    assert broadcasts and all(HEX64.match(r["block_hash"]) for r in broadcasts)
    gone = with_message(a_records, "[P2P] Peer ")
    assert any("disconnected" in r["message"] and isinstance(r["peer"], int)
               and b_addr.match(r["peer_addr"]) for r in gone)
    received = with_message(b_records, "[P2P] Received block from peer ")
    assert received and all(HEX64.match(r["block_hash"]) and isinstance(r["peer"], int)
                            and b_addr.match(r["peer_addr"]) for r in received)
    updated = with_message(b_records, "[P2P] Updated best block to height ")
    assert updated and all(r["message"].endswith(f" {r['height']}") and HEX64.match(r["block_hash"])
                           for r in updated)
    assert b_records[-1]["thread"] == "MainThread"


def log_in_a_process(log_format: str, statements: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``statements`` in a fresh interpreter after the node's logging setup."""
    code = ("import logging, warnings\n"
            "from loguru import logger\n"
            "from dilithion.node.logging_setup import configure_logging\n"
            f"configure_logging('INFO', log_format={log_format!r})\n" + statements)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def test_json_mode_routes_standard_logging_and_warnings_too(tmp_path):
    """waitress logs through the standard library; in JSON mode that becomes JSON too."""
    done = log_in_a_process("json", (
        "logging.getLogger('waitress.queue').warning('Task queue depth is %d', 3)\n"
        "warnings.warn('deprecated thing')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    logger.exception('[RPC] failed')\n"
        "logger.bind(block_hash='ab' * 32, height=7, peer=3, peer_addr='127.0.0.1:9')"
        ".info('[P2P] x')\n"), tmp_path)
    out = [json.loads(line) for line in done.stdout.splitlines()]
    err = [json.loads(line) for line in done.stderr.splitlines()]
    assert out[0]["message"] == "Task queue depth is 3" and out[0]["level"] == "WARNING"
    assert out[0]["component"] == "waitress.queue"
    assert "deprecated thing" in out[1]["message"] and out[1]["component"] == "py.warnings"
    assert out[2] == {**{k: out[2][k] for k in JSON_FIELDS}, "block_hash": "ab" * 32,
                      "height": 7, "peer": 3, "peer_addr": "127.0.0.1:9"}
    assert len(err) == 1 and err[0]["level"] == "ERROR" and err[0]["message"] == "[RPC] failed"
    assert "ZeroDivisionError" in err[0]["exception"]


def test_text_mode_lines_do_not_show_the_bound_fields(tmp_path):
    """The text format is what it was: binding fields changes nothing an operator greps."""
    done = log_in_a_process("text", (
        "logger.info('[OK] BLOCK FOUND!')\n"
        "logger.bind(block_hash='ab' * 32, height=7, peer=3).info('[OK] BLOCK FOUND!')\n"
        "logger.bind(peer=3, peer_addr='127.0.0.1:9').warning('[P2P] send timeout')\n"),
        tmp_path)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and done.stderr == ""
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
    assert re.fullmatch(stamp + r"\[OK\] BLOCK FOUND!", lines[0])
    assert re.fullmatch(stamp + r"\[OK\] BLOCK FOUND!", lines[1])
    assert re.fullmatch(stamp + r"WARNING: \[P2P\] send timeout", lines[2])


# --------------------------------------------------------------------------- rollback
def test_rollback_restart_with_a_conservative_send_timeout(process_node):
    """The plan's rollback (phase 5): stop the node, restart it on its datadir with
    ``DIL_SEND_TIMEOUT=30000``; its chain survived, it serves RPC, it is back with its
    peer, relays again, and the send deadline in effect is 30 s."""
    peer = process_node("peer", ["--connect=none"])
    node = process_node("node")
    peer.start(timeout=START_TIMEOUT)
    node.extra_args = [f"--addnode={peer.p2p_address}"]
    node.start(timeout=START_TIMEOUT)
    wait_until(lambda: node.peer_count() == 1 and peer.peer_count() == 1, timeout=15)
    node.mine(5)
    wait_until(lambda: converged((node, peer)), timeout=CONVERGE_TIMEOUT,
               message=lambda: heights((node, peer)))
    assert node.metric("p2p_send_timeout_seconds") == 5.0          # regtest default
    best, height = node.best_hash(), node.height()

    node.send_signal(signal.SIGTERM)                                # 1. stop cleanly
    assert node.wait(SHUTDOWN_SECONDS) == 0, node.describe()
    assert "Dilithion node stopped cleanly" in node.output()
    wait_until(lambda: peer.peer_count() == 0, timeout=15)
    node.env = {**node.env, "DIL_SEND_TIMEOUT": "30000"}            # 2. conservative restart
    node.start(timeout=START_TIMEOUT)

    assert node.best_hash() == best and node.height() == height     # 3. the chain survived
    assert f"[OK] Loaded chain state: {height + 1} blocks (height {height})" in node.run_output()
    assert "P2P levers: send timeout 30000 ms, broadcast retries 3, first retry after 50 ms" \
        in node.run_output()
    assert node.metric("p2p_send_timeout_seconds") == 30.0
    assert node.metric("broadcast_max_retries") == 3.0
    assert node.metric("broadcast_retry_backoff_seconds") == 0.05
    wait_until(lambda: node.peer_count() == 1 and peer.peer_count() == 1, timeout=20,
               message=node.describe)                               # 4. back with its peer
    tip = node.mine(1)[0]
    wait_until(lambda: peer.best_hash() == tip, timeout=CONVERGE_TIMEOUT,
               message=lambda: heights((node, peer)))
    node.assert_no_traceback()
