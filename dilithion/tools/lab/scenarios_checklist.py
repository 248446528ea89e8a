"""The checklist's harder faults: ``slow-peer`` (a peer that stops reading, so
the miner's send timeout must fire) and ``regions`` (NYC, London, Singapore).

**A peer that stops reading.**  A 5 s delay through the proxy never backs up
the miner's socket (the proxy buffers 4 MiB per direction), so a broadcaster
that sends synchronously would pass.  Here a scripted peer connects to the
miner through a :class:`~dilithion.tools.lab.proxy.FaultProxy` with a small
receive buffer, completes its handshake, then its side stops reading
(``stops_reading="dialler"``: the proxy leaves the miner's bytes unread, the
TCP window closes).  Measured on this machine (``ss -tnm``): the miner's kernel
send buffer autotunes up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB), and the
node serves ``getdata`` only as its send queue drains, so a request for blocks
never fills it; each ``getblocks`` is answered with an ``inv`` of the whole
chain (36 bytes a block): 450 of them on a 300-block chain put 3.0 MB into the
kernel and left 1.9 MB in the node's own send queue, and the send timeout
closed the link 5 s later; 60 of them (660 KB) all fit in the kernel and
nothing fired.  So the miner first mines :data:`PREMINE` blocks and the stuck
peer asks :data:`GETBLOCKS_BURST` times for the chain (about 6.5 MB); then
blocks are mined while the link is stuck and the node's send timeout
(``DIL_SEND_TIMEOUT``, 5000 ms on regtest) must close it.
"""
from __future__ import annotations


from dilithion.net.protocol import MsgGetblocks
from dilithion.testing.wire_peer import WirePeer
from dilithion.tools.lab.lab import payee
from dilithion.tools.lab.labnode import LabError, LabNode
from dilithion.tools.lab.measure import criterion
from dilithion.tools.lab.proxy import STUCK_RCVBUF, FaultProxy
from dilithion.tools.lab.scenario import (Run, mine_and_measure, propagation_criteria, register,
                                          star_topology)

__all__ = ["REGIONS", "RTT_MS", "PREMINE", "GETBLOCKS_BURST", "stuck_link_timeouts"]

#: Blocks the miner has before a stuck peer asks for its chain: each ``getblocks``
#: answer is then an ``inv`` of ~5.4 KB (kept short: pre-mining costs ~60 ms a block).
PREMINE = 150
#: ``getblocks`` a stuck peer sends at once: ~6.5 MB of answers, past the 4 MiB the
#: miner's kernel takes, so the rest stays in the node's own send queue.
GETBLOCKS_BURST = 1200
#: How long the miner's own send queue may take to hold bytes for a stuck peer.
FILL_TIMEOUT_S = 30.0
#: The send timeout must fire within this (5 s timeout + maintenance ticks).
TIMEOUT_WAIT_S = 30.0
STUCK_HOST = "127.0.0.{}"
SEND_TIMEOUT_LINE = r"send timeout: peer {}\b"


def stuck_link_timeouts(miner: LabNode, peer_ids: list[int]) -> int:
    """Send timeouts the miner logged for the given peers (its log names the peer)."""
    return sum(1 for pid in peer_ids
               if miner.log_lines(SEND_TIMEOUT_LINE.format(pid), all_runs=True))


def premine(run: Run, miner: LabNode, n: int) -> None:
    """``n`` blocks mined on ``miner`` before the measurement (not measured: the
    propagation record keeps only the last blocks); every node waits for them."""
    hashes = miner.rpc("generatetoaddress", [n, payee(miner.name)], timeout=120 + 2 * n)
    run.lab.wait_for(lambda: set(run.lab.tips().values()) == {hashes[-1]}, 120,
                     "the nodes did not sync the pre-mined chain")
    run.event(f"{n} blocks pre-mined (not measured)")


def _new_peer_id(miner: LabNode, before: set[int]) -> int | None:
    ids = {p["id"] for p in miner.rpc("getpeerinfo")} - before
    return min(ids) if ids else None


def _queued(miner: LabNode, peer_id: int) -> int:
    return next((int(p.get("queued_bytes") or 0) for p in miner.rpc("getpeerinfo")
                 if p["id"] == peer_id), 0)


def _stick(run: Run, miner: LabNode, i: int) -> tuple[FaultProxy, WirePeer, int | None, int]:
    """A peer that asks for the chain, then stops reading; its id on the miner and the
    bytes the miner had written to it when its own send queue began to hold data."""
    lab = run.lab
    proxy = FaultProxy(("127.0.0.1", miner.p2p_port), name=f"stuck{i}", rcvbuf=STUCK_RCVBUF,
                       magic=lab.magic)
    before = {p["id"] for p in miner.rpc("getpeerinfo")}
    peer = WirePeer(lab.magic, bind_host=STUCK_HOST.format(20 + i))
    peer.connect(proxy.port, reader=True)
    peer.handshake()
    lab.wait_for(lambda: _new_peer_id(miner, before) is not None, 10, "the stuck peer is not listed")
    pid = _new_peer_id(miner, before)
    proxy.set(stops_reading="dialler")
    for _ in range(GETBLOCKS_BURST):
        peer.send(MsgGetblocks([]))
    run.event(f"stuck peer {pid} asked for the chain {GETBLOCKS_BURST} times and stopped reading")
    try:
        lab.wait_for(lambda: _queued(miner, pid) > 0, FILL_TIMEOUT_S,
                     "the miner's send queue never held bytes for the stuck peer")
    except LabError:
        return proxy, peer, pid, 0
    sent = next((int(p["bytessent"]) for p in miner.rpc("getpeerinfo") if p["id"] == pid), 0)
    return proxy, peer, pid, sent


@register("slow-peer", "the miner has healthy peers and, in turn, peers that ask for its whole"
          " chain and stop reading (their TCP window closes; the miner's own send queue fills)",
          "the miner's send timeout fires for each stuck link; the healthy peers get every block"
          " within 10 s; the miner never waits (every inv to a healthy peer queued within 1 s,"
          " generatetoaddress back within 1 s of the block connecting); 0 send timeouts on"
          " healthy links",
          full={"nodes": 3, "rounds": 3, "blocks": 3, "premine": PREMINE},
          short={"rounds": 1, "blocks": 2})
def run_slow_peer(run: Run) -> None:
    lab = run.lab
    miner, peers = star_topology(run, run.opts["nodes"])
    healthy = [miner, *peers]
    premine(run, miner, run.opts["premine"])
    stuck_ids, pushed = [], []
    for i in range(run.opts["rounds"]):
        proxy, peer, pid, sent = _stick(run, miner, i)
        try:
            if pid is not None:
                stuck_ids.append(pid)
            pushed.append(sent)
            mine_and_measure(run, miner, run.opts["blocks"], timeout=30, spacing=1.0,
                             nodes=healthy)
            try:
                lab.wait_for(lambda: stuck_link_timeouts(miner, stuck_ids) > i, TIMEOUT_WAIT_S,
                             "no send timeout for the stuck link")
            except LabError:
                pass                    # recorded below
        finally:
            peer.close()
            proxy.stop()
    stuck = stuck_link_timeouts(miner, stuck_ids)
    run.extra.update(stuck_peer_ids=stuck_ids, stuck_link_send_timeouts=stuck,
                     bytes_written_before_queue_held=pushed)
    run.criteria.append(criterion("stuck links closed by the miner's send timeout", stuck,
                                  f"== {run.opts['rounds']}", stuck == run.opts["rounds"]))
    data = run.blocks_json()
    worst_prop = max((v for b in data for v in b["propagation_s"].values()), default=None)
    run.criteria.append(criterion("healthy peers: slowest block", worst_prop, "<= 10 s",
                                  worst_prop is not None and worst_prop <= 10, "s"))
    stuck_set = set(stuck_ids)
    queued = [p["inv_queued_ms"] for b in data for p in b["miner_peers"]
              if "inv_queued_ms" in p and p.get("peer") not in stuck_set]
    worst = max(queued) if queued else None
    run.criteria.append(criterion("miner: slowest inv queued after connect", worst, "< 1000 ms",
                                  worst is not None and worst < 1000, "ms"))
    held = [b["miner_held_s"] for b in data if b.get("miner_held_s") is not None]
    worst_held = max(held) if held else None
    run.criteria.append(criterion("miner: generatetoaddress back after the block connected",
                                  worst_held, "< 1 s", worst_held is not None and worst_held < 1,
                                  "s"))
    propagation_criteria(run, max_s=None, mean_s=None)
    run.lab.sample_now()
    total = run.counters_total("send_timeouts")
    other = None if total is None else total - stuck
    run.criteria.append(criterion("send timeouts on healthy links", other, "== 0", other == 0))


#: Round-trip times (ms) between the checklist's three regions, from the published
#: AWS inter-region table (N. Virginia for New York, Ireland for London; source and
#: figures in docs/LAB.md).  Each proxy delays each direction by half of it.
RTT_MS = {("nyc", "london"): 80.55, ("nyc", "singapore"): 216.7,
          ("london", "singapore"): 239.0}
REGIONS = ("nyc", "london", "singapore")


@register("regions", "three nodes (NYC, London, Singapore), each pair linked through a proxy"
          " delaying each direction by half the published round-trip time; the miner rotates",
          "every block reaches every node within 10 s, 5 s on average (the checklist's phase 1)",
          full={"nodes": 3, "blocks": 12}, short={"blocks": 3})
def run_regions(run: Run) -> None:
    lab = run.lab
    nodes = {region: lab.add_node() for region in REGIONS}
    for (a, b), rtt in RTT_MS.items():
        lab.link(nodes[b], nodes[a]).set(delay_s=rtt / 2000.0)
    run.extra["regions"] = {r: n.name for r, n in nodes.items()}
    run.extra["rtt_ms"] = {f"{a}-{b}": rtt for (a, b), rtt in RTT_MS.items()}
    lab.start()
    lab.wait_connected()
    order = list(nodes.values())
    for i in range(run.opts["blocks"]):
        mine_and_measure(run, order[i % len(order)], 1, timeout=60)
    propagation_criteria(run)

