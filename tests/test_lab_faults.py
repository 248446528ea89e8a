"""The lab's checklist faults on real sockets (a side that stops reading, a silent
partition, a cut inside a ``block`` frame), the fetching peers' addresses, and
the gate lines those faults make decidable, on recorded results.  The scenarios
themselves run in ``tests/test_lab.py`` (real node) and
``tests/test_lab_defects_faults.py`` (defective nodes)."""
from __future__ import annotations

import copy
import select
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.testing.swarm import swarm_host
from dilithion.tools.lab.frames import FrameWatcher
from dilithion.tools.lab.gate import evaluate_results
from dilithion.tools.lab.proxy import STUCK_RCVBUF, FaultProxy

from framework import LoopbackServer, wait_until
from lab_records import full_set

MAGIC = ChainParams.regtest().magic


def frame(command: str, payload: bytes) -> bytes:
    return struct.pack("<I12sI4s", MAGIC, command.encode(), len(payload), b"\0" * 4) + payload


class _Target(LoopbackServer):
    """The listening side: keeps the accepted socket for the test to drive."""

    def __init__(self) -> None:
        self.conns: list[socket.socket] = []
        self.received = bytearray()
        super().__init__(threaded=True)

    def handle(self, conn) -> None:
        self.conns.append(conn)
        while data := conn.recv(65536):
            self.received += data


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_a_side_that_stops_reading_closes_the_senders_window_and_resumes_in_order():
    target = _Target()
    proxy = FaultProxy(("127.0.0.1", target.port), rcvbuf=STUCK_RCVBUF)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            wait_until(lambda: target.conns, timeout=10)
            proxy.set(stops_reading="dialler")
            sender = target.conns[0]
            sender.setblocking(False)
            pushed = bytearray()
            blocked = False
            for i in range(4096):                   # at most 64 MiB: a liveness guard
                chunk = bytes([i % 251]) * 16384
                try:
                    n = sender.send(chunk)
                except BlockingIOError:
                    if not select.select([], [sender], [], 1.0)[1]:
                        blocked = True              # the window stayed closed
                        break
                    continue
                pushed += chunk[:n]
            assert blocked, f"{len(pushed)} bytes pushed and the window never closed"
            assert len(pushed) < 16 * 1024 * 1024
            proxy.set(stops_reading="")
            c.settimeout(30)
            assert _recv_exactly(c, len(pushed)) == bytes(pushed)   # nothing lost or reordered
    finally:
        proxy.stop()
        target.close()


def test_a_silent_partition_drops_everything_and_closes_nothing():
    target = _Target()
    proxy = FaultProxy(("127.0.0.1", target.port))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            c.sendall(b"before")
            wait_until(lambda: bytes(target.received) == b"before", timeout=10)
            proxy.set(blackhole=True)
            c.sendall(b"x" * 1000)
            target.conns[0].sendall(b"y" * 500)
            wait_until(lambda: proxy.dropped_bytes == 1500, timeout=10)
            assert bytes(target.received) == b"before"
            assert not select.select([c], [], [], 0)[0]          # no data, no FIN, no RST
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as held:
                wait_until(lambda: len(proxy._held) == 1, timeout=10)
                assert len(target.conns) == 1                    # never reached the far side
                proxy.set(blackhole=False)
                held.settimeout(10)
                assert held.recv(1) == b""                       # closed at the heal
            c.sendall(b"after")
            wait_until(lambda: bytes(target.received) == b"beforeafter", timeout=10)
    finally:
        proxy.stop()
        target.close()


def test_a_cut_forwards_half_a_block_frame_then_runs_the_callback_once():
    target = _Target()
    proxy = FaultProxy(("127.0.0.1", target.port), magic=MAGIC)
    cut = threading.Event()
    calls = []
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            wait_until(lambda: target.conns, timeout=10)
            c.settimeout(10)
            early = frame("block", b"\0" * 300)           # before arming: passes whole
            target.conns[0].sendall(early[:100])
            assert _recv_exactly(c, 100) == early[:100]
            proxy.set(cut_at_block=lambda: (calls.append(1), cut.set()))   # armed mid-frame
            ping, block = frame("ping", b"\1" * 8), frame("block", b"\2" * 1000)
            # split across writes so a header straddles two reads
            target.conns[0].sendall(early[100:] + ping + block[:10])
            target.conns[0].sendall(block[10:] + frame("block", b"\3" * 1000))
            assert cut.wait(10)
            got = _recv_exactly(c, len(early) - 100 + len(ping) + 24 + 500)
            assert got == early[100:] + ping + block[:24 + 500]
            c.settimeout(0.5)
            with pytest.raises(socket.timeout):
                c.recv(1)                   # nothing more on that connection
            assert calls == [1] and proxy.cuts == 1 and proxy.faults.cut_at_block is None
    finally:
        proxy.stop()
        target.close()


def test_the_frame_watcher_stops_watching_a_stream_whose_framing_is_lost():
    w = FrameWatcher(MAGIC)
    junk = struct.pack("<I12sI4s", 0xDEADBEEF, b"block", 100, b"\0" * 4) + b"z" * 100
    assert w.feed_until_block(junk + frame("block", b"a" * 10), 0.5) == \
        (junk + frame("block", b"a" * 10), False)


def test_each_fetching_peer_dials_from_its_own_loopback_address():
    hosts = [swarm_host(i) for i in range(600)]
    assert len(set(hosts)) == 600
    assert all(h.startswith("127.0.") and not h.endswith(".0") for h in hosts)


# ---------------------------------------------------------------------------
# gate lines the faults make decidable, on recorded results
# ---------------------------------------------------------------------------
def gates(results):
    return {g.name: g for g in evaluate_results(results)}


def _crit(r, prefix):
    return next(c for c in r["criteria"] if c["name"].startswith(prefix))


def test_a_stuck_link_that_never_timed_out_is_no_evidence_for_async_broadcasting():
    results = full_set()
    assert gates(results)["asynchronous broadcasting"].verdict == "PASS"
    _crit(results["slow-peer"], "stuck links closed").update(measured=0, verdict="FAIL")
    x = gates(results)["asynchronous broadcasting"]
    assert x.verdict == "FAIL" and "no evidence: " in x.reason and "never held bytes" in x.reason


def test_a_held_mining_thread_fails_async_broadcasting():
    results = full_set()
    _crit(results["slow-peer"], "miner: generatetoaddress back").update(measured=5.02,
                                                                        verdict="FAIL")
    x = gates(results)["asynchronous broadcasting"]
    assert x.verdict == "FAIL" and x.reason == "" and "held 5.02 s" in x.measured


def test_the_stuck_links_timeouts_are_named_and_left_out_of_send_timeouts():
    results = full_set()
    sp = results["slow-peer"]
    assert sp["extra"]["stuck_link_send_timeouts"] >= 1
    assert sp["summary"]["send_timeouts"] >= sp["extra"]["stuck_link_send_timeouts"]
    x = gates(results)["send timeouts"]
    assert x.verdict == "PASS" and "on slow-peer's stuck links, expected there" in x.measured
    sp["summary"]["send_timeouts"] += 1                  # one more: a healthy link's
    assert gates(results)["send timeouts"].verdict == "FAIL"


def test_the_p95_line_shows_p50_p95_max_and_fails_on_a_slow_tail():
    results = full_set()
    x = gates(results)["mined -> connected at every node (p50/p95/max)"]
    assert x.verdict == "PASS" and "p50 " in x.measured and "p95 " in x.measured
    slow = copy.deepcopy(results)
    for b in slow["regions"]["blocks"]:
        b["to_all_s"] = 11.0
    assert gates(slow)["mined -> connected at every node (p50/p95/max)"].verdict == "FAIL"
    del slow["regions"]
    x = gates(slow)["mined -> connected at every node (p50/p95/max)"]
    assert x.verdict == "FAIL" and "not run: regions" in x.reason


@pytest.mark.parametrize("scenario, prefix, gate", [
    ("partition", "both ends closed the dead link", "dead link found (silent partition)"),
    ("peer-kill", "restarted peer caught up", "peer killed mid-block catches up"),
    ("load", "fetching peers that got every block", "50+ fetching peers per node"),
])
def test_each_fault_line_passes_with_its_figure_and_fails_without(scenario, prefix, gate):
    results = full_set()
    assert gates(results)[gate].verdict == "PASS", gates(results)[gate].line()
    _crit(results[scenario], prefix).update(verdict="FAIL")
    assert gates(results)[gate].verdict == "FAIL"


def test_a_kill_that_missed_the_block_frame_is_no_evidence():
    results = full_set()
    _crit(results["peer-kill"], "victim SIGKILLed").update(measured=0, verdict="FAIL")
    x = gates(results)["peer killed mid-block catches up"]
    assert x.verdict == "FAIL" and "did not land inside a block frame" in x.reason


def test_the_load_block_interval_is_a_minute_by_default_and_an_option():
    from dilithion.tools.lab.runner import scenario_options
    assert scenario_options("load")["interval"] == 60.0            # the testnet's rate
    assert scenario_options("load", short=True)["interval"] == 2.0
    assert scenario_options("load", interval=7.5)["interval"] == 7.5
    out = subprocess.run([str(Path(sys.executable).parent / "dilithion-lab"), "run", "line",
                          "--interval", "5"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == \
        "error: scenario line has no block interval (only load does)", out.stderr
