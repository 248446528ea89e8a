"""Message processing by job (issue 22 item 3): the broadcaster decides from the
per-peer announce-filter snapshots the handler thread publishes and never runs
relay code; the catch-up a C++ peer gets instead of an announcement is sent on
the message-handler thread; a disconnect clears the peer's state in every job."""
from __future__ import annotations

import os
import sys
import threading

import pytest

from dilithion.net import addr_relay, block_fetch, block_relay, block_sync
from dilithion.net.peer_relay_state import (CATCHUP_TIMEOUT_S, FILTER_MERGE_EVERY, Announce,
                                            AnnounceFilter, PeerRelayState, announce_decision)
from dilithion.net.protocol import CPP_USER_AGENT, Inv, InvType, MsgGetdata, MsgInv
from framework import InProcessNode, next_commands, raw_peer, regtest_chain, wait_until

BLOCK = InvType.MSG_BLOCK_INV
RELAY_FILES = {m.__file__ for m in (block_relay, block_sync, block_fetch, addr_relay)}


@pytest.fixture
def node(tmp_path):
    n = InProcessNode(tmp_path, "n", coins=True, rpc=False).start()
    yield n
    n.close()


class RelayCalls:
    """Every call into the relay's modules, by thread name (``threading.setprofile``
    on every thread started while it is installed, ``sys.setprofile`` here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []      # (thread name, function)

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename in RELAY_FILES:
            self.calls.append((threading.current_thread().name, frame.f_code.co_name))

    def __enter__(self):
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        threading.setprofile(None)
        sys.setprofile(None)

    def threads_running(self, function: str) -> set[str]:
        return {t for t, f in list(self.calls) if f == function}


def inv_hashes(msgs) -> list[list[bytes]]:
    return [[bytes(i.hash) for i in m.inv] for command, m in msgs if command == "inv"]


def test_broadcaster_reads_snapshots_and_catch_up_is_sent_on_the_handler_thread(tmp_path):
    """A C++ peer that has block 1 is announced block 2 (its parent is known); block
    3 comes before it showed it has 2, so the broadcaster skips it (decided from
    its snapshot) and the handler thread sends it the catch-up ``inv`` [2, 3].
    No relay function runs on a broadcaster worker, none after the handshake
    outside the handler thread, the thread that connected the block and the stall
    thread."""
    chain = regtest_chain(3)
    hashes = [bytes(h) for _b, h in chain]
    with RelayCalls() as seen:
        n = InProcessNode(tmp_path, "n", coins=False, rpc=False).start()
        try:
            handler = n.ctx.processor.thread.name                 # the message-handler thread
            n.load(chain[:2])                                     # genesis and block 1
            cpp = raw_peer(n, agent=CPP_USER_AGENT)
            assert inv_hashes(next_commands(cpp)) == [[hashes[1]]]   # catch-up from height 1
            cpp.send(MsgGetdata([Inv(BLOCK, hashes[1])]))          # it has block 1 now
            assert [command for command, _m in next_commands(cpp)] == ["block"]
            pid = n.peer_id_of(cpp)
            board = n.ctx.block_relay.announce_filters
            assert wait_until(lambda: board.get(pid, True).has(hashes[1]))
            assert not board.get(pid, True).catching_up(0.0)
            n.load(chain[2:3])                                    # block 2: parent known
            assert inv_hashes(next_commands(cpp)) == [[hashes[2]]]
            calls_before = len(seen.calls)
            n.load(chain[3:4])                                    # block 3: parent 2 not shown
            assert inv_hashes(next_commands(cpp)) == [[hashes[2], hashes[3]]]
            snapshot = board.get(pid, True)
            assert isinstance(snapshot, AnnounceFilter)           # immutable, frozen dataclass
            with pytest.raises(AttributeError):
                snapshot.is_cpp = False
            assert snapshot.catching_up(snapshot.catchup_deadline - 1.0)
        finally:
            n.close()
    assert seen.threads_running("send_catchup_batch") == {handler}
    assert seen.threads_running("catch_up_lagging") == {handler}
    assert not [c for c in seen.calls if c[0].startswith("broadcast-")], \
        "a broadcaster worker ran relay code"
    loader = threading.current_thread().name                 # node.load connects blocks here
    late = {t for t, _f in seen.calls[calls_before:]}
    assert late <= {handler, loader, "block-stall"}          # the stall thread is the relay's own


def test_a_published_filter_is_a_snapshot_that_follows_the_state_across_merges():
    """Each publication is immutable (an older one does not see later notes); the
    latest one has every hash the state has, across the partial copies and the
    full copy every ``FILTER_MERGE_EVERY`` notes; the broadcaster's decision on
    it matches the handler thread's on the live state."""
    state = PeerRelayState(is_cpp=True)
    first = state.announce_filter()
    hashes = [os.urandom(32) for _ in range(3 * FILTER_MERGE_EVERY + 5)]
    for height, h in enumerate(hashes, 1):
        state.note_has(h, height)
        latest = state.announce_filter()
        assert latest.has(h) and latest.has(hashes[0])
    assert all(latest.has(h) for h in hashes)
    assert not first.has(hashes[0])
    assert state.announce_filter() is None                     # nothing changed: no copy
    state.set_batch(hashes[-1], sent=100.0, next_height=7)
    catching = state.announce_filter()
    assert catching.catching_up(100.0 + CATCHUP_TIMEOUT_S - 1)
    assert not catching.catching_up(100.0 + CATCHUP_TIMEOUT_S)
    new, unknown = os.urandom(32), os.urandom(32)
    for view in (state, catching):                             # live state and snapshot agree
        assert announce_decision(view, new, (hashes[-1], 9), 101.0) is Announce.SKIP
        assert announce_decision(view, new, (hashes[-1], 9), 100.0 + CATCHUP_TIMEOUT_S) \
            is Announce.SEND
        assert announce_decision(view, new, (unknown, 9), 100.0 + CATCHUP_TIMEOUT_S) \
            is Announce.CATCH_UP
        assert announce_decision(view, new, (unknown, 0), 100.0 + CATCHUP_TIMEOUT_S) \
            is Announce.SEND                                   # the parent is genesis
        assert announce_decision(view, hashes[3], None, 100.0 + CATCHUP_TIMEOUT_S) \
            is Announce.SKIP                                   # it has the block
    python_peer = AnnounceFilter(is_cpp=False, catchup_deadline=1e9)
    assert announce_decision(python_peer, new, (unknown, 9), 0.0) is Announce.SEND


ROUNDS, PEERS = 2, 6


def relay_sizes(node) -> dict[str, int]:
    ctx = node.ctx
    relay, dl = ctx.block_relay, ctx.block_relay.download
    tx_announced, tx_in_flight, _ = ctx.tx_relay.get_stats()
    return {"relay state": relay.peer_count(),
            "announce filters": len(relay.announce_filters),
            "download by peer": len(dl._by_peer), "download in flight": len(dl._peer_flight),
            "download progress": len(dl._progress),
            "getdata queues": len(relay.server._pending),
            "tx announced": tx_announced, "tx in flight": tx_in_flight,
            "broadcaster peer stats": len(ctx.broadcaster._peers),
            "pow prefetch": ctx.pow_prefetch.peers_tracked()}


def test_a_disconnect_clears_the_peer_in_every_job(node):
    """Peers that announce unknown blocks and transactions, are announced a block
    and leave: every job's per-peer entries were filled while they were here
    and are back at zero after."""
    chain = regtest_chain(ROUNDS + 1)
    node.load(chain[:1])
    assert set(relay_sizes(node).values()) == {0}
    for r in range(ROUNDS):
        peers = [raw_peer(node) for _ in range(PEERS)]
        for p in peers:
            p.send(MsgInv([Inv(BLOCK, os.urandom(32)) for _ in range(3)]
                          + [Inv(InvType.MSG_TX_INV, os.urandom(32)) for _ in range(3)]))
            next_commands(p)                                   # the getdata came back
        node.load(chain[r + 1:r + 2])                          # announced to every peer
        sizes = relay_sizes(node)
        for job in ("relay state", "announce filters", "download by peer",
                    "download in flight", "tx in flight", "broadcaster peer stats"):
            assert sizes[job] >= PEERS, (job, sizes)
        for p in peers:
            p.close()
        wait_until(lambda: not node.connman.peer_info(), 30)
        wait_until(lambda: set(relay_sizes(node).values()) == {0}, 30,
                   message=lambda: f"round {r}: {relay_sizes(node)}")
