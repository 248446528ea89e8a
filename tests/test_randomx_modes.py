"""RandomX light and full mode in real node processes (issue #14).

One test here builds the real 2080 MiB dataset (in a child process, so the
suite's own process stays in light mode): a ``--randomx=full`` testnet node
answers RPC while the dataset builds, switches to full mode, then verifies the
C++ node's vector chain (its block hashes were made by the C++ node in light
mode, so a full-mode hash that differed by one bit would orphan block 2) and
mines with per-thread full-mode VMs.  The others never need the dataset:
``auto`` without mining builds nothing, ``auto`` with mining starts the build and
a SIGTERM during the build still stops the node cleanly, and a process whose
address space is too small for the dataset says so in one line and mines in
light mode.
"""
from __future__ import annotations

import pytest

from dilithion.crypto.randomx_dataset import DATASET_BYTES, MiB
from dilithion.net.protocol import MsgBlock
from dilithion.primitives.block import Block
from framework import TestPeer, wait_until

#: How long a loaded two-core machine may take to build the dataset (measured: 20-75 s).
DATASET_BUILD_TIMEOUT = 600
BUILDING = "RandomX: building the full-mode dataset"
READY = "RandomX: full mode ready"
STAYING_LIGHT = "RandomX: staying in light mode"


def randomx_info(node) -> dict:
    return node.rpc("getmininginfo")["randomx"]


def test_auto_without_mining_stays_light_and_builds_nothing(process_node):
    node = process_node(extra_args=["--randomx=auto", "--connect=none"], start=True)
    node.mine(2)                          # generatetoaddress is not "mining": no dataset
    assert randomx_info(node) == {"mode": "light", "setting": "auto", "dataset": "none",
                                  "dataset_build_seconds": 0.0}
    assert node.metric("randomx_mode", mode="light") == 1.0
    assert node.metric("randomx_mode", mode="full") == 0.0
    assert not node.log_lines(BUILDING)
    assert "--randomx=auto: full mode once mining starts" in node.log_text()


def test_auto_starts_the_build_when_mining_starts_and_sigterm_stops_it(process_node):
    node = process_node(extra_args=["--randomx=auto", "--connect=none"], start=True)
    assert node.rpc("startmining") is True
    node.wait_for_log(BUILDING, timeout=30)
    # The miner hashes in light mode meanwhile: regtest blocks keep coming while
    # the dataset is still being built.
    start = node.height()
    wait_until(lambda: node.height() >= start + 3, timeout=60, message=node.describe)
    info = randomx_info(node)
    assert info["dataset"] == "building" and info["mode"] == "light", info
    assert node.rpc("getmininginfo")["mining"] is True
    assert node.stop(timeout=60) == 0                 # the build does not hold the exit
    assert "Dilithion node stopped cleanly" in node.log_text()


#: Starts a node under ``prlimit --as``: a machine too small for the dataset (room
#: for a light-mode node, not for the dataset).
ADDRESS_SPACE_LIMITED = ["prlimit", f"--as={DATASET_BYTES + 256 * MiB}", "--"]


def test_too_little_memory_gives_one_line_and_mining_goes_on_in_light_mode(process_node):
    node = process_node(extra_args=["--randomx=full", "--mine", "--threads=1", "--connect=none"],
                        command_prefix=ADDRESS_SPACE_LIMITED, start=True)
    wait_until(lambda: node.height() >= 3, timeout=60, message=node.describe)
    lines = node.log_lines(STAYING_LIGHT)
    assert len(lines) == 1, node.describe()
    assert "full mode needs 2592 MiB of free memory" in lines[0] and "RLIMIT_AS" in lines[0]
    info = randomx_info(node)
    assert info["mode"] == "light" and info["dataset"] == "unavailable", info
    assert node.rpc("getmininginfo")["mining"] is True
    assert node.stop() == 0
    node.assert_no_traceback()


def test_full_mode_node_answers_while_building_then_verifies_the_cpp_chain_and_mines(
        process_node, cpp_chain):
    node = process_node(extra_args=["--randomx=full", "--threads=2", "--connect=none"],
                        network="testnet", start=True)
    node.wait_for_log(BUILDING, timeout=30)
    # Start-up did not wait for the dataset: RPC answers and the mode is still light.
    assert node.height() == 0
    building = randomx_info(node)
    assert building["mode"] == "light" and building["setting"] == "full", building
    wait_until(lambda: randomx_info(node)["mode"] == "full", timeout=DATASET_BUILD_TIMEOUT,
               interval=1.0, message=node.describe)
    info = randomx_info(node)
    assert info["dataset"] == "ready" and info["dataset_build_seconds"] > 0, info
    assert node.metric("randomx_mode", mode="full") == 1.0
    assert node.metric("randomx_dataset_build_seconds") > 0
    assert len(node.log_lines(READY)) == 1

    # The C++ node's six testnet blocks, verified with full-mode hashes.
    with TestPeer(magic=int(cpp_chain["magic"], 16)) as peer:
        peer.connect(node.p2p_port)
        peer.handshake()
        for entry in cpp_chain["blocks"][1:]:
            block = Block.deserialize(bytes.fromhex(entry["block_message_payload_hex"]),
                                      allow_trailing=True)
            peer.send(MsgBlock(block))
        wait_until(lambda: node.height() == 6, timeout=60, message=node.describe)
    assert node.best_hash() == cpp_chain["blocks"][-1]["hash"]

    # Mining now uses the dataset: two workers, each with its own full-mode VM.
    assert node.rpc("startmining") is True
    wait_until(lambda: node.rpc("getmininginfo")["hashrate"] > 0, timeout=60,
               message=node.describe)
    mining = node.rpc("getmininginfo")
    assert mining["threads"] == 2 and mining["randomx"]["mode"] == "full", mining
    assert node.metric("mining_hash_rate") > 0
    assert node.stop() == 0
    node.assert_no_traceback()
