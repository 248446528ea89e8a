"""Block propagation between real node processes in separate network namespaces.

Loopback cannot be cut or slowed; veth links between namespaces can
(``tests/framework/netns.py``): two hops, a 64 kbit/s token-bucket link, and a
partition by ``ip link set ... down``. Needs root and iproute2; the module
skips otherwise. Every namespace and veth is deleted at the end of each test,
also when it fails.
"""
from __future__ import annotations

import re
import time

import pytest

from framework import CONVERGE_TIMEOUT as CONVERGE_S, converged, heights, wait_until
from framework.netns import NetnsLab, in_ns, netns_unavailable_reason

UNAVAILABLE = netns_unavailable_reason()
if UNAVAILABLE:
    pytest.skip(UNAVAILABLE, allow_module_level=True)


@pytest.fixture
def lab():
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.close()


def chain_of_namespaces(lab: NetnsLab, workdir, count: int, first_args=()):
    """``count`` namespaces in a line; node i+1 keeps node i added (``--addnode``)."""
    spaces = [lab.add_namespace() for _ in range(count)]
    for x, y in zip(spaces, spaces[1:]):
        lab.link(x, y)
    nodes = []
    for i, ns in enumerate(spaces):
        args = list(first_args) if i == 0 else [f"--addnode={nodes[-1].p2p_address}"]
        nodes.append(lab.node(ns, workdir, args))
    return spaces, nodes


def test_block_crosses_two_hops_between_three_namespaces(lab, tmp_path):
    _, (a, b, c) = chain_of_namespaces(lab, tmp_path, 3, ["--connect=none"])
    for node in (a, b, c):
        node.start()
    wait_until(lambda: b.peer_count() == 2 and c.peer_count() == 1, timeout=20, message=b.describe)
    # Each node sees its neighbour at the neighbour's namespace address, nothing else.
    assert {p["addr"].rsplit(":", 1)[0] for p in b.rpc("getpeerinfo")} == {a.ns.addr, c.ns.addr}
    assert [p["addr"] for p in c.rpc("getpeerinfo")] == [b.p2p_address]
    assert a.peer_count() == 1
    # A and C have no route to each other: only B can relay.
    assert in_ns(a.ns.name, "ip", "route", "get", c.ns.addr, check=False).returncode != 0

    hashes = a.mine(5)
    wait_until(lambda: c.best_hash() == hashes[-1], timeout=CONVERGE_S,
               message=lambda: heights((a, b, c)))
    assert converged((a, b, c)) and c.height() == 5
    assert b.metric("block_propagation_time_seconds_count", role="announce") >= 1
    assert c.metric("block_propagation_time_seconds_count", role="receive") == 5
    for node in (a, b, c):
        node.assert_no_traceback()


def tbf_sent_bytes(ns_name: str, ifname: str) -> int:
    stats = in_ns(ns_name, "tc", "-s", "qdisc", "show", "dev", ifname).stdout
    assert "tbf" in stats, stats
    return int(re.search(r"Sent (\d+) bytes", stats).group(1))


def test_thin_64kbit_link_still_converges(lab, tmp_path):
    (sa, sb), (a, b) = chain_of_namespaces(lab, tmp_path, 2, ["--connect=none"])
    lab.limit_bandwidth(sa, sb)                  # tbf rate 64kbit burst 4kb latency 2s, A -> B
    a.start()
    hashes = a.mine(60)                          # B will catch up through the thin link
    b.start()
    started = time.monotonic()
    wait_until(lambda: b.best_hash() == hashes[-1], timeout=CONVERGE_S,
               message=lambda: heights((a, b)))
    catch_up_s = time.monotonic() - started
    hashes = a.mine(5)                           # and new blocks still arrive
    wait_until(lambda: b.best_hash() == hashes[-1], timeout=CONVERGE_S,
               message=lambda: heights((a, b)))
    ifname = lab.veths[(sa.name, sb.name)]
    sent = tbf_sent_bytes(sa.name, ifname)
    # 65 blocks went through the token bucket: it shaped real traffic.
    assert sent >= 65 * 150, sent
    print(f"\nthin link: 60-block catch-up in {catch_up_s:.1f} s, {sent} bytes through tbf")
    for node in (a, b):
        node.assert_no_traceback()


def partition_and_heal(lab: NetnsLab, workdir, outage_s: float, mined_a: int, mined_b: int,
                       converge_s: float = CONVERGE_S):
    """A and B (B keeps A added); B's link end goes down, both mine, it comes back."""
    (sa, sb), (a, b) = chain_of_namespaces(lab, workdir, 2, ["--connect=none"])
    a.start()
    b.start()
    wait_until(lambda: a.peer_count() == 1 and b.peer_count() == 1, timeout=20)
    common = a.mine(3)
    wait_until(lambda: b.best_hash() == common[-1], timeout=CONVERGE_S)

    lab.set_link(sb, sa, up=False)
    outage_started = time.monotonic()
    a_branch = a.mine(mined_a)
    b_branch = b.mine(mined_b)
    time.sleep(max(0.0, outage_s - (time.monotonic() - outage_started)))
    assert a.best_hash() == a_branch[-1] and b.best_hash() == b_branch[-1]   # nothing crossed

    lab.set_link(sb, sa, up=True)
    wait_until(lambda: converged((a, b)), timeout=converge_s,
               message=lambda: (heights((a, b)), b.describe()))
    heavier, lighter = (a_branch, b_branch) if mined_a > mined_b else (b_branch, a_branch)
    assert a.best_hash() == heavier[-1] and a.height() == 3 + max(mined_a, mined_b)
    loser = b if mined_a > mined_b else a
    assert {"hash": lighter[-1], "height": 3 + min(mined_a, mined_b),
            "branchlen": min(mined_a, mined_b), "status": "valid-fork"} in loser.rpc("getchaintips")
    assert "[Chain] Reorganization plan:" in loser.output()
    for node in (a, b):
        node.assert_no_traceback()
    return a, b


def test_link_down_partition_then_up_converges_to_the_heavier_chain(lab, tmp_path):
    """A 3 s outage is shorter than every timer: the TCP connection survives it (the
    kernel retransmits), and the queued announcements heal the fork once it is up."""
    partition_and_heal(lab, tmp_path, outage_s=3, mined_a=6, mined_b=3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_outage_beyond_the_inactivity_timeout_drops_and_redials(lab, tmp_path):
    """310 s down: nothing arrives for longer than the 300 s inactivity timeout, both
    ends drop the connection, B's ``--addnode`` redials once the link is up, and the
    nodes converge on B's heavier branch."""
    a, b = partition_and_heal(lab, tmp_path, outage_s=310, mined_a=4, mined_b=9,
                              converge_s=CONVERGE_S + 70)     # + the 60 s maximum redial backoff
    wait_until(lambda: a.peer_count() == 1 and b.peer_count() == 1, timeout=30)
    assert "inactivity timeout (300 s)" in a.output() + b.output()
    assert f"[P2P] Lost connection to {a.p2p_address}" in b.output()
    assert f"[P2P] Reconnecting to {a.p2p_address}" in b.output()
