"""``mixed``: Python and C++ nodes in one testnet topology, side by side.

The C++ node never relays a block it received (``net D-17``: only a miner
announces, so a block goes one hop); ours announces every new tip to its
peers.  The scenario shows both on the same blocks::

    wire peer -> n0 (origin) -> n1 -> ... -> n(N-2)      Python-only path
                       \\-> cpp0 -> n(N-1)                 a hop through the C++ node

``n(N-1)`` has no link but the one to the C++ node.  Testnet proof of work
costs minutes a block on this machine, so nothing is mined here: the blocks
are pre-mined testnet blocks (the C++ vector chain ``V1..V6`` from
``shared/vectors``, then ``dilithion-diff``'s mined ``A7, A8, ...`` on ``V6`` as
far as the harness's ``MINED_FILE`` has them), injected at the origin by a
scripted wire peer one at a time.  Each Python-only node must get every block
(PASS/FAIL); what the C++ node and the node behind it got is recorded as an
observation with its D-ID, not judged.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.primitives.block import Block
from dilithion.testing.testnet_blocks import DEFAULT_VECTORS, MINED_FILE, vector_blocks
from dilithion.testing.wire_peer import LoopbackHosts, NoReply, WirePeer
from dilithion.tools.lab.cppnode import CppLabNode, cpp_binary_from_env
from dilithion.tools.lab.lab import BlockRecord
from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.measure import criterion
from dilithion.tools.lab.scenario import Run, register

__all__ = ["premined_chain", "side_by_side"]

RELAY_DEFECT = "net D-17"
#: How long the node behind the C++ node is watched after the C++ node had every block.
BEHIND_CPP_WAIT_S = 15.0
MIXED_USER_AGENT = b"/dilithion-lab:mixed/"


def premined_chain(limit: int, vectors: Path = DEFAULT_VECTORS,
                   mined: Path = MINED_FILE) -> list[tuple[str, Block, str]]:
    """Up to ``limit`` testnet blocks from height 1 on: ``(name, block, hash hex)``."""
    if not vectors.is_file():
        raise LabError(f"the C++ vector chain {vectors} is missing (the repository must sit"
                       " beside shared/)")
    chain = [(name, block, h.get_hex()) for name, (block, h) in
             sorted(vector_blocks(vectors).items(), key=lambda kv: int(kv[0][1:])) if name != "V0"]
    extra = json.loads(mined.read_text()) if mined.is_file() else {}
    hasher = None
    height = len(chain) + 1
    while len(chain) < limit and f"A{height}" in extra:
        hasher = hasher or RandomXHasher.for_key()
        block = Block.deserialize(bytes.fromhex(extra[f"A{height}"]))
        if block.header.hash_prev_block.get_hex() != chain[-1][2]:
            break                       # not a chain on what we have: stop here
        chain.append((f"A{height}", block, block.get_hash(hasher).get_hex()))
        height += 1
    return chain[:limit]


def _path(name: str, parents: dict[str, str]) -> list[str]:
    out = [name]
    while out[-1] in parents and len(out) <= len(parents):
        out.append(parents[out[-1]])
    return out[::-1]


def side_by_side(blocks: list[dict], nodes: list[tuple[str, str]], parents: dict[str, str],
                 origin: str, sent: dict[str, int] | None = None) -> list[dict]:
    """Per node (name, kind): hops from the origin, path, blocks received, p50/max
    delay, and (``sent``) how many of them it sent on to a peer."""
    rows = []
    for name, kind in nodes:
        delays = [0.0 if name == origin else b["propagation_s"][name] for b in blocks
                  if name == origin or name in b["propagation_s"]]
        path = _path(name, parents)
        rows.append({"node": name, "kind": kind, "hops": len(path) - 1, "path": " -> ".join(path),
                     "received": len(delays), "blocks": len(blocks),
                     "p50_s": round(statistics.median(delays), 3) if delays else None,
                     "max_s": round(max(delays), 3) if delays else None,
                     "sent_on": (sent or {}).get(name)})
    return rows


def _sent_on(node, hashes: list[str]) -> int:
    """Blocks a Python node sent to at least one peer (its own propagation record)."""
    count = 0
    for h in hashes:
        try:
            count += node.rpc("getblockpropagation", [h])["summary"]["block_sent"] > 0
        except Exception:   # noqa: BLE001 - a block it never connected has no record
            pass
    return count


@register("mixed", "testnet: pre-mined blocks enter at a Python origin node linked to a line of"
          " Python nodes and to a C++ node, which has one more Python node behind it"
          " (needs DILITHION_CPP_NODE)",
          "every node on a Python-only path gets 100% of the blocks; what the C++ node and the"
          " node behind it get is recorded (net D-17: the C++ node does not relay), not judged;"
          " SKIPPED without DILITHION_CPP_NODE",
          full={"nodes": 4, "blocks": 108}, short={"blocks": 6}, network="testnet")
def run_mixed(run: Run) -> None:
    binary = cpp_binary_from_env()
    if binary is None:
        run.extra["skipped"] = "DILITHION_CPP_NODE is not set (it names the C++ dilithion-node)"
        run.event("skipped: DILITHION_CPP_NODE is not set")
        return
    lab = run.lab
    chain = premined_chain(run.opts["blocks"])
    run.extra["block_source"] = f"{chain[0][0]}..{chain[-1][0]}"
    cpp = CppLabNode("cpp0", lab.out / "nodes", binary)
    lab.foreign.append(cpp)
    cpp.start()
    nodes = [lab.add_node() for _ in range(run.opts["nodes"])]
    origin, line, behind = nodes[0], nodes[:-1], nodes[-1]
    for a, b in zip(line[1:], line):
        lab.link(a, b)
        run.parents[a.name] = b.name
    lab.link(origin, cpp)
    run.parents[cpp.name] = origin.name
    lab.link(behind, cpp)
    run.parents[behind.name] = cpp.name
    lab.start()
    lab.wait_connected()
    run.event(f"{cpp.name} (C++) linked to {origin.name} and {behind.name}")
    run.measured = [n.name for n in line]
    run.bar.reset(total=len(chain))
    peer = WirePeer(lab.magic, LoopbackHosts().next(), MIXED_USER_AGENT)
    try:
        peer.connect(origin.p2p_port, timeout=60)
        peer.handshake(timeout=60)
        for name, block, block_hash in chain:
            peer.send_frame("block", block.serialize())
            peer.barrier(60)
            lab.wait_for(lambda: _has(origin, block_hash), 60,
                         f"the origin node did not connect block {name}")
            rec = BlockRecord(block_hash, origin.name,
                              float(origin.rpc("getblockpropagation", [block_hash])["connected"]))
            run.blocks.append(rec)
            lab.collect([rec], timeout=60, nodes=line)
            run.step(note=f"block {name}")
    except (OSError, NoReply) as exc:
        raise LabError(f"the scripted peer lost the origin node: {exc}") from None
    finally:
        peer.close()
    _watch_cpp_side(run, cpp, behind)
    _criteria(run, cpp, behind, [n.name for n in line[1:]])


def _has(node, block_hash: str) -> bool:
    try:
        node.rpc("getblockpropagation", [block_hash])
        return True
    except Exception:   # noqa: BLE001 - RPCCallError -5 until it connected the block
        return False


def _watch_cpp_side(run: Run, cpp: CppLabNode, behind) -> None:
    """The C++ node's connect times (log), then the node behind it (bounded waits)."""
    lab = run.lab
    hashes = [b.hash for b in run.blocks]
    try:
        lab.wait_for(lambda: all(cpp.connected_at(h) for h in hashes), 30,
                     "the C++ node did not connect every block")
    except LabError:
        pass                                   # recorded below as what it got
    for b in run.blocks:
        if (t := cpp.connected_at(b.hash)) is not None:
            b.connected[cpp.name] = t
    run.event(f"waiting {BEHIND_CPP_WAIT_S:g} s for {behind.name} behind the C++ node")
    lab.collect(run.blocks, timeout=BEHIND_CPP_WAIT_S, nodes=[behind])
    run.extra["behind_cpp_tip_height"] = behind.rpc("getblockcount")


def _criteria(run: Run, cpp: CppLabNode, behind, python_path: list[str]) -> None:
    blocks = run.blocks_json([n.name for n in run.lab.nodes] + [cpp.name])
    origin = run.lab.nodes[0].name
    kinds = [(n.name, "python") for n in run.lab.nodes[:-1]] + [(cpp.name, "cpp"),
                                                                (behind.name, "python")]
    hashes = [b["hash"] for b in blocks]
    sent = {n.name: _sent_on(n, hashes) for n in run.lab.nodes}
    # The C++ node keeps no such record: what it sent on is what the node behind it got.
    sent[cpp.name] = sum(1 for b in blocks if behind.name in b["propagation_s"])
    rows = side_by_side(blocks, kinds, run.parents, origin, sent)
    run.extra["side_by_side"] = rows
    by_node = {r["node"]: r for r in rows}
    total = len(blocks)
    for name in python_path:
        got = by_node[name]["received"]
        run.criteria.append(criterion(f"Python-only path {by_node[name]['path']}: blocks at"
                                      f" {name}", f"{got}/{total}", f"{total}/{total}",
                                      total > 0 and got == total))
    for name, what in ((cpp.name, "the C++ node (fed by a Python node)"),
                       (behind.name, "the node behind the C++ node")):
        row = by_node[name]
        run.criteria.append({**criterion(f"observation ({RELAY_DEFECT}): blocks at {what},"
                                         f" path {row['path']}", f"{row['received']}/{total}",
                                         "recorded, not judged", None), "verdict": "OBSERVED"})
