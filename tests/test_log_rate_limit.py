"""The log as a budget (issue 21): peer-caused log lines cannot fill the disk.

The node's sinks share one :class:`LogRateLimiter` (Core's ``-logratelimit``,
extended with a per-(source line, peer host) share).  Attackers from
127.0.0.10+, the honest peer from 127.0.0.1; a :class:`FakeClock` decides when
a window ends, and the tests count the bytes and lines that reach the log.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from loguru import logger

from dilithion.net.protocol import Inv, InvType, MsgBlock, MsgGetdata, MsgInv, MsgPing, MsgVersion
from dilithion.node.log_rate_limit import (LOG_BYTES_NODE_LINES, LOG_BYTES_PEER_LINES,
                                           LOG_BYTES_PER_LOCATION, LOG_BYTES_PER_PEER_LOCATION,
                                           LOG_RATE_WINDOW_S, LogRateLimiter)
from dilithion.node.logging_setup import JSON_FIELDS, RateLimitedSink

from framework import FakeClock, InProcessNode, RawPeer, frame_raw, regtest_chain, wait_until

BLOCK = InvType.MSG_BLOCK_INV


def test_budgets_are_named_and_bound_an_hour_under_16_mib():
    assert LOG_RATE_WINDOW_S == 3600
    assert LOG_BYTES_PEER_LINES + LOG_BYTES_NODE_LINES <= 8 * 1024 * 1024
    # 100 attacking hosts at 15 peer-triggered source lines stay below the location
    # budget and the peer-lines pool, so the same lines about an honest host are written.
    assert 100 * 15 * LOG_BYTES_PER_PEER_LOCATION < LOG_BYTES_PEER_LINES
    assert 100 * LOG_BYTES_PER_PEER_LOCATION < LOG_BYTES_PER_LOCATION


class Captured:
    """A loguru sink behind ``limiter`` that keeps only this test's records."""

    def __init__(self, limiter: LogRateLimiter, tag: str) -> None:
        self.lines: list[str] = []
        sink = RateLimitedSink(self.lines.append, limiter)
        self.sink_id = logger.add(sink, level="INFO", format="{message}",
                                  filter=lambda r: r["extra"].get("test_tag") == tag)

    def close(self) -> None:
        logger.remove(self.sink_id)

    def bytes(self) -> int:
        return sum(len(line.encode()) for line in self.lines)


def attacker_line(log, i: int) -> None:
    log.warning(f"[P2P] Misbehaving peer {i}: something bad (+1, score {i})")


def test_one_host_exhausts_only_its_own_share_and_the_window_ends_with_a_count():
    clock = FakeClock()
    limiter = LogRateLimiter(clock=clock)
    out = Captured(limiter, "share")
    try:
        bad = logger.bind(test_tag="share", peer=1, peer_addr="127.0.0.10:5000")
        honest = logger.bind(test_tag="share", peer=2, peer_addr="127.0.0.1:6000")
        for i in range(1000):
            attacker_line(bad, i)
        honest.info("[P2P] Received block from peer 2: 0000abcd...")
        attack_bytes = out.bytes()
        assert attack_bytes <= LOG_BYTES_PER_PEER_LOCATION + 400        # its share and one note
        assert sum("Excessive logging" in line for line in out.lines) == 1
        assert out.lines[-1] == "[P2P] Received block from peer 2: 0000abcd...\n"
        assert limiter.dropped_lines > 900
        # Reconnecting (a new peer id, another port) does not renew the share.
        attacker_line(logger.bind(test_tag="share", peer=3, peer_addr="127.0.0.10:5001"), 7777)
        assert not any("score 7777" in line for line in out.lines)
        # A chain-progress line (bound with a height) is not charged to the host's share.
        bad.bind(height=5).info("[P2P] Updated best block to height 5")
        assert out.lines[-1] == "[P2P] Updated best block to height 5\n"
        clock.advance(LOG_RATE_WINDOW_S)
        attacker_line(bad, 0)
        restart = [line for line in out.lines if "Restarting logging from" in line]
        assert len(restart) == 1 and f"{limiter.dropped_lines} lines" in restart[0]
        assert out.lines[-1].startswith("[P2P] Misbehaving peer 0")
    finally:
        out.close()


def test_node_wide_pools_bound_many_hosts_and_keep_each_others_room():
    """200 hosts exhaust the peer-lines pool; lines without a peer still have their
    own pool, and a chain-progress line is written whatever the pools hold."""
    limiter = LogRateLimiter(clock=FakeClock(), peer_lines=64 * 1024, node_lines=64 * 1024)
    out = Captured(limiter, "total")
    try:
        for host in range(200):
            log = logger.bind(test_tag="total", peer=host, peer_addr=f"10.0.{host}.1:1")
            for i in range(40):
                attacker_line(log, i)
        assert 64 * 1024 - 100 <= out.bytes() <= 64 * 1024 + 400
        node_log = logger.bind(test_tag="total")
        node_log.info("[P2P] Lost connection to 10.9.9.9:8444")
        assert out.lines[-1] == "[P2P] Lost connection to 10.9.9.9:8444\n"
        for i in range(2000):
            node_log.info(f"[P2P] Peer {i} announced 2 new blocks: aaaa...bbbb...")
        node_log.bind(height=9).info("[OK] BLOCK FOUND!")
        assert out.lines[-1] == "[OK] BLOCK FOUND!\n"
        assert out.bytes() <= 2 * 64 * 1024 + 1000
    finally:
        out.close()


def run_logging(statements: str, tmp_path, **env) -> subprocess.CompletedProcess:
    code = ("from loguru import logger\n"
            "from dilithion.node.logging_setup import configure_logging\n" + statements)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done


FLOOD = ("for i in range(3000):\n"
         "    logger.bind(peer=1, peer_addr='127.0.0.10:1').warning(f'[P2P] Misbehaving peer 1: x{i}')\n"
         "logger.bind(peer=2, peer_addr='127.0.0.1:2').info('[P2P] Received block from peer 2: ab...')\n")


def test_the_program_sinks_limit_json_and_text_and_can_be_turned_off(tmp_path):
    """The node program's own sinks (a fresh process): JSON lines stay JSON (the
    note too), the honest line is written; ``DIL_LOG_RATELIMIT=0`` writes all."""
    done = run_logging("configure_logging('INFO', log_format='json')\n" + FLOOD, tmp_path)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(list(r)[:len(JSON_FIELDS)] == list(JSON_FIELDS) for r in records)
    assert len(done.stdout.encode()) <= LOG_BYTES_PER_PEER_LOCATION + 1024
    assert any(r["message"].startswith("Excessive logging from __main__:") for r in records)
    assert records[-1]["message"] == "[P2P] Received block from peer 2: ab..."
    done = run_logging("configure_logging('INFO')\n" + FLOOD, tmp_path)
    assert len(done.stdout.encode()) <= LOG_BYTES_PER_PEER_LOCATION + 1024
    assert done.stdout.splitlines()[-1].endswith(" [P2P] Received block from peer 2: ab...")
    done = run_logging("configure_logging('INFO', rate_limit=False)\n" + FLOOD, tmp_path)
    assert len(done.stdout.splitlines()) == 3001
    done = run_logging("configure_logging('INFO')\n" + FLOOD, tmp_path, DIL_LOG_RATELIMIT="0")
    assert len(done.stdout.splitlines()) == 3001


# --------------------------------------------------------------------- a node under attack
def test_twenty_attackers_grow_the_log_by_at_most_the_budget(tmp_path):
    """Twenty hosts send bad checksums, announce unknown blocks and ask for unknown
    ones, 300 times each:
    the captured log grows by at most the budget, the first line of each kind is
    there, and the honest peer's block still logs ``Received block``."""
    budget = 2 * 128 * 1024
    limiter = LogRateLimiter(clock=FakeClock(), per_location=32 * 1024,
                             peer_lines=128 * 1024, node_lines=128 * 1024)
    chain = regtest_chain(2)
    node = InProcessNode(tmp_path, "victim", rpc=False, coins=False, log_limiter=limiter).start()
    attackers: list[RawPeer] = []
    try:
        node.load(chain[:2])
        honest = RawPeer(node.p2p_port, node.params.magic)
        honest.handshake(MsgVersion(timestamp=int(time.time()), nonce=5, user_agent=b"/h:1/",
                                    start_height=1))
        before = len(node.log_text().encode())
        for i in range(20):
            raw = RawPeer(node.p2p_port, node.params.magic, bind_host=f"127.0.0.{10 + i}")
            raw.handshake(MsgVersion(timestamp=int(time.time()), nonce=9, user_agent=b"/a:1/",
                                     start_height=1))
            attackers.append(raw)
        for raw in attackers:                   # 9 x score 10: scored and logged, not discouraged
            for _ in range(9):
                raw.send_raw(frame_raw(node.params.magic, "ping", bytes(8), checksum=b"bad!"))
        for n in range(300):
            for i, raw in enumerate(attackers):
                fake = bytes([i, n % 256, n // 256]) + bytes(29)
                raw.send(MsgInv([Inv(BLOCK, fake)]))
                raw.send(MsgGetdata([Inv(BLOCK, fake[::-1])]))
        for i, raw in enumerate(attackers):     # a pong follows everything sent before it
            raw.send(MsgPing(1000 + i))
            assert raw.wait_for("pong", timeout=60).nonce == 1000 + i
        assert limiter.dropped_lines >= 20 * 250  # the inv lines past each host's share
        attack_log = node.log_text()
        for kind in ("announced new block", "requested unknown block", "bad checksum"):
            assert kind in attack_log
        block, h = chain[2]
        honest.send(MsgBlock(block))
        assert wait_until(lambda: node.chain.tip().hash == h)
        assert wait_until(lambda: "Received block from peer" in node.log_text()[len(attack_log):])
        text = node.log_text()
        grown = len(text.encode()) - before
        notes = [line for line in text.splitlines() if "Excessive logging from" in line]
        assert 1 <= len(notes) <= 10 and all(len(line) < 300 for line in notes)
        assert grown <= budget + 300 * len(notes)
        assert limiter.dropped_bytes > 3 * grown
        print(f"\nlog grew {grown} bytes; {limiter.dropped_lines} lines "
              f"({limiter.dropped_bytes} bytes) dropped")
    finally:
        for raw in attackers:
            raw.close()
        node.close()


def test_the_node_program_limits_a_flooding_host_and_counts_it(process_node):
    """A real node process: one host announces 300 unknown blocks, one ``inv`` each;
    its ``announced new block`` lines stop after its share, one note says so, the
    metrics count the rest, and the same line about the honest peer is written."""
    node = process_node("flooded").start()
    with RawPeer(node.p2p_port, bind_host="127.0.0.10") as attacker, \
            RawPeer(node.p2p_port) as honest:
        for raw in (attacker, honest):
            raw.handshake(MsgVersion(timestamp=int(time.time()), nonce=9, user_agent=b"/a:1/",
                                     start_height=0))
        for n in range(300):
            attacker.send(MsgInv([Inv(BLOCK, b"\xee" + n.to_bytes(4, "little") + bytes(27))]))
        attacker.send(MsgPing(1))
        attacker.wait_for("pong", 30.0)
        honest.send(MsgInv([Inv(BLOCK, b"\xaa" * 32)]))
        honest.send(MsgPing(2))
        honest.wait_for("pong", 30.0)
        assert wait_until(lambda: node.metric("log_lines_suppressed") > 250)
    announced = node.log_lines(r"announced new block")
    assert len(announced) * 60 <= LOG_BYTES_PER_PEER_LOCATION + 200
    assert len(node.log_lines(r"Excessive logging from dilithion\.net\.block_fetch:")) == 1
    assert announced[-1].endswith("announced new block: aaaaaaaaaaaaaaaa...")
    assert node.metric("log_bytes_suppressed") > 250 * 60
