"""Hostile peers versus bans and discouragement (items 7 and 9 of "P2P under attack").

Each attacker connects from its own loopback address (127.0.0.10, .11, ...;
Linux routes all of 127/8), the honest peer and the operator sit on
127.0.0.1, and each test asserts what the honest side experiences.  Timeouts
are liveness guards (10 s), never speed bounds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dilithion.net.protocol import CPP_USER_AGENT, Inv, InvType, MsgBlock, MsgInv, MsgPing
from dilithion.primitives.block import Block, BlockHeader

from framework import REGTEST_MAGIC, RawPeer, frame, frame_raw, regtest_chain

CLI = Path(sys.executable).parent / "dilithion-cli"
HONEST = "127.0.0.1"


@pytest.fixture
def node(framework_nodes):
    return framework_nodes.inprocess_node("bans", coins=False, start=True)


def _bad_checksum_frames(n: int) -> bytes:
    bad = bytearray(frame(REGTEST_MAGIC, MsgPing(1)))
    bad[20] ^= 0xFF
    return bytes(bad) * n


def _hosts(node) -> list[str]:
    return sorted(p["addr"].rsplit(":", 1)[0] for p in node.peers())


def _still_served(peer) -> None:
    """The honest peer is connected and answered (its pong proves both)."""
    peer.sync_with_ping()
    assert peer.is_connected


class CountingHasher:
    """Wraps the chain's RandomX hasher and counts every hash."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def hash(self, data: bytes) -> bytes:
        self.calls += 1
        return self.inner.hash(data)


# (a) -----------------------------------------------------------------------------
def test_wrong_magic_is_a_plain_disconnect_without_score(node, test_peer):
    honest = test_peer(node, bind_host=HONEST)
    with RawPeer(node.p2p_port, REGTEST_MAGIC, bind_host="127.0.0.10") as testnet_node:
        testnet_node.send_raw(frame_raw(0xDAB5BFFA, "version", bytes(20)))   # testnet magic
        assert testnet_node.is_closed(10)
    pm = node.connman.peer_manager
    assert not pm.is_banned("127.0.0.10") and not pm.is_discouraged("127.0.0.10")
    assert node.metric("peer_discouraged_total") == 0
    assert node.metric("peer_misbehaviour_total", reason="wrong magic") == 0
    again = test_peer(node, bind_host="127.0.0.10")          # reconnects and handshakes
    _still_served(again)
    _still_served(honest)
    assert not pm.is_banned(HONEST) and not pm.is_discouraged(HONEST)


# (b) -----------------------------------------------------------------------------
def test_discouraged_host_loses_all_connections_honest_peer_keeps_its_own(node, test_peer):
    honest = test_peer(node, bind_host=HONEST)
    bystander = test_peer(node, bind_host="127.0.0.10")      # same host, behaves
    attacker = test_peer(node, bind_host="127.0.0.10")
    attacker.send_raw(_bad_checksum_frames(10))              # 10 x 10 points = threshold
    attacker.wait_for_disconnect(10)
    bystander.wait_for_disconnect(10)                        # every connection of the host
    pm = node.connman.peer_manager
    assert pm.is_discouraged("127.0.0.10") and not pm.is_banned("127.0.0.10")
    assert node.metric("peer_discouraged_total") == 1
    assert node.metric("banned_hosts") == 0                  # discouragement is not a ban
    _still_served(honest)
    assert _hosts(node) == [HONEST]
    # Not a ban: with slots free the discouraged host may connect again.
    back = test_peer(node, bind_host="127.0.0.10")
    _still_served(back)


def test_discouraged_inbound_is_evicted_first_when_full(framework_nodes, test_peer):
    node = framework_nodes.inprocess_node("full", coins=False, start=True, max_peers=3,
                                          max_outbound=0)
    pm = node.connman.peer_manager
    pm.banman.discourage("127.0.0.10")
    honest = test_peer(node, bind_host=HONEST)
    discouraged = test_peer(node, bind_host="127.0.0.10")    # 1 + 1 < 3: a slot is spare
    second = test_peer(node, bind_host="127.0.0.2")          # table now full (3)
    with RawPeer(node.p2p_port, REGTEST_MAGIC, bind_host="127.0.0.10") as refused:
        assert refused.is_closed(10)                         # discouraged: no slot to spare
    third = test_peer(node, bind_host="127.0.0.3")           # honest: evicts the discouraged
    discouraged.wait_for_disconnect(10)
    for peer in (honest, second, third):
        _still_served(peer)
    assert _hosts(node) == [HONEST, "127.0.0.2", "127.0.0.3"]


# (c) -----------------------------------------------------------------------------
def _cli(node, *args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DILITHION_RPC_HOST", "DILITHION_RPC_PORT")}
    return subprocess.run([str(CLI), "--regtest", f"--datadir={node.datadir}",
                           f"--rpcport={node.rpc_port}", *args],
                          capture_output=True, text=True, timeout=30, env=env)


def test_setban_persists_across_restart_and_clearbanned_lifts_it(node, test_peer):
    honest = test_peer(node, bind_host=HONEST)
    victim = test_peer(node, bind_host="127.0.0.11")
    r = _cli(node, "setban", "127.0.0.11", "add", "3600")
    assert r.returncode == 0, r.stderr
    victim.wait_for_disconnect(10)
    _still_served(honest)
    [entry] = node.rpc("listbanned")
    assert entry["address"] == "127.0.0.11/32"
    assert entry["ban_duration"] == 3600 and 0 < entry["time_remaining"] <= 3600
    assert node.metric("banned_hosts") == 1
    with RawPeer(node.p2p_port, REGTEST_MAGIC, bind_host="127.0.0.11") as refused:
        assert refused.is_closed(10)
    saved = json.loads((node.datadir / "banlist.json").read_text())
    assert [b["address"] for b in saved["banned"]] == ["127.0.0.11/32"]

    honest.close()
    node.restart()
    assert [b["address"] for b in node.rpc("listbanned")] == ["127.0.0.11/32"]
    assert node.metric("banned_hosts") == 1
    with RawPeer(node.p2p_port, REGTEST_MAGIC, bind_host="127.0.0.11") as refused:
        assert refused.is_closed(10)
    _still_served(test_peer(node, bind_host=HONEST))

    r = _cli(node, "listbanned")
    assert r.returncode == 0 and "127.0.0.11/32" in r.stdout
    assert _cli(node, "clearbanned").returncode == 0
    assert node.rpc("listbanned") == [] and node.metric("banned_hosts") == 0
    _still_served(test_peer(node, bind_host="127.0.0.11"))


def test_setban_errors_are_cores(node):
    from dilithion.rpc.client import RPCCallError
    with pytest.raises(RPCCallError) as bad:
        node.rpc("setban", ["not-an-ip", "add"])
    assert bad.value.code == -30
    node.rpc("setban", ["127.0.0.0/24", "add"])
    with pytest.raises(RPCCallError) as twice:
        node.rpc("setban", ["127.0.0.5/24", "add"])           # the same subnet
    assert twice.value.code == -23
    with pytest.raises(RPCCallError) as unknown:
        node.rpc("setban", ["127.0.0.99", "remove"])
    assert unknown.value.code == -30
    node.rpc("setban", [{"subnet": "127.0.0.0/24", "command": "remove"}])   # the C++ shape
    assert node.rpc("listbanned") == []


# (d) -----------------------------------------------------------------------------
def test_out_of_range_nbits_rejected_without_a_randomx_hash(node, test_peer):
    honest = test_peer(node, bind_host=HONEST)
    attacker = test_peer(node, bind_host="127.0.0.12")
    counter = CountingHasher(node.chain._hashes._hasher)
    node.chain._hashes._hasher = counter
    good = regtest_chain(1)[1][0]
    h = good.header
    bad = Block(BlockHeader(h.version, h.hash_prev_block, h.hash_merkle_root, h.time,
                            0x03000001, h.nonce), good.vtx)        # below the pow limit's range
    attacker.send(MsgBlock(bad))
    attacker.wait_for_disconnect(10)
    assert counter.calls == 0
    assert node.connman.peer_manager.is_discouraged("127.0.0.12")
    assert node.metric("peer_misbehaviour_total", reason="invalid block") == 1
    assert node.height() == 0
    _still_served(honest)


def test_cpp_echo_of_known_blocks_is_never_scored(node, test_peer):
    """net D-14: a C++ peer answers an inv of known blocks with the blocks themselves."""
    chain = regtest_chain(2)
    node.load(chain[1:])
    cpp = test_peer(node, bind_host="127.0.0.13", user_agent=CPP_USER_AGENT)
    for block, h in chain[1:]:
        cpp.send(MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(h))]))
        cpp.send(MsgBlock(block))
    _still_served(cpp)
    [info] = [p for p in node.peers() if p["addr"].startswith("127.0.0.13:")]
    assert info["banscore"] == 0


# (e) -----------------------------------------------------------------------------
def test_setban_closes_every_connection_of_the_host(node, test_peer):
    honest = test_peer(node, bind_host=HONEST)
    first = test_peer(node, bind_host="127.0.0.14")
    second = test_peer(node, bind_host="127.0.0.14")
    assert _hosts(node) == [HONEST, "127.0.0.14", "127.0.0.14"]
    node.rpc("setban", ["127.0.0.14", "add"])
    first.wait_for_disconnect(10)
    second.wait_for_disconnect(10)
    _still_served(honest)
    assert _hosts(node) == [HONEST]
