"""The built-in corpus: its steps, written as an ordinary corpus file (``data/builtin-corpus.json``).

The order matters because both nodes keep their state from step to step: the
C++ vector chain first, then a side branch that wins (a reorganisation), an
exact tie, then messages that change no chain, then the orphan case (which
leaves the two nodes on different tips for good, ``chain D21``), RPC calls, and
a restart (which the C++ node cannot survive, ``chain D15``), last.  Blocks are
announced with ``inv`` before they are sent, as a peer does, so they arrive
requested.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from dilithion.core.chainparams import MAINNET_MAGIC, ChainParams
from dilithion.net.protocol import (Address, Inv, InvType, MsgAddr, MsgGetblocks, MsgInv,
                                    MsgVersion, PROTOCOL_VERSION)
from dilithion.primitives.block import Block, Uint256
from dilithion.testing.testnet_blocks import known_blocks

TESTNET = ChainParams.testnet()
UNKNOWN_HASH = Uint256(bytes(range(1, 33)))


def _send(name: str, command: str, payload: bytes = b"", **extra) -> dict:
    return {"name": name, "send": command, "payload_hex": payload.hex(), **extra}


def _inv(hashes, kind=InvType.MSG_BLOCK_INV) -> bytes:
    return MsgInv([Inv(kind, bytes(h)) for h in hashes]).serialize()


def _rpc(method: str, params=None) -> dict:
    step = {"name": f"rpc {method} {json.dumps(params) if params is not None else ''}".strip(),
            "rpc": method}
    if params is not None:
        step["params"] = params
    return step


def builtin_steps(blocks: dict[str, tuple[Block, Uint256]]) -> list[dict]:
    def block_of(name: str) -> bytes:
        return blocks[name][0].serialize()

    def hash_of(name: str) -> Uint256:
        return blocks[name][1]

    steps: list[dict] = []
    for h in range(1, 7):                              # the C++ vector chain, in order
        steps.append(_send(f"vector block {h} (C++-mined)", "block", block_of(f"V{h}"),
                           expect_same=["tip", "height"]))
    steps += [
        _send("duplicate: the tip block again", "block", block_of("V6")),
        _send("duplicate: an old block again", "block", block_of("V3")),
        _send("inv of six known blocks", "inv", _inv(hash_of(f"V{h}") for h in range(1, 7))),
        _send("inv of an unknown block", "inv", _inv([UNKNOWN_HASH])),
        _send("getdata of the tip", "getdata", _inv([hash_of("V6")])),
        _send("getdata of an unknown block", "getdata", _inv([UNKNOWN_HASH])),
        {"name": "reconnect at height 6", "reconnect": True},
        _send("inv: side-branch block F6 (easiest nBits, time before parent)", "inv",
              _inv([hash_of("F6")])),
        _send("side-branch block F6 (less work: not the tip)", "block", block_of("F6"),
              expect_same=["tip", "height"]),
        _send("inv: F7 (nTime 0xffffffff)", "inv", _inv([hash_of("F7")])),
        _send("side-branch block F7 (far-future time)", "block", block_of("F7"),
              expect_same=["tip", "height"]),
        _send("inv: F8", "inv", _inv([hash_of("F8")])),
        _send("block F8: the side branch outweighs V6 (reorganisation, depth 1)", "block",
              block_of("F8"), expect_same=["tip", "height"]),
        _send("inv: G8 (same work as F8)", "inv", _inv([hash_of("G8")])),
        _send("block G8: a tie (first seen stays the tip)", "block", block_of("G8"),
              expect_same=["tip", "height"]),
        _send("bad proof of work (hash above target)", "block", block_of("BADPOW")),
        _send("bad nBits (0x207fffff, outside the testnet range)", "block", block_of("BADBITS")),
    ]
    steps += malformed_steps(hash_of("V0"))
    steps += rpc_steps()
    steps += [
        _send("inv: H10 before its parent H9", "inv", _inv([hash_of("H10")])),
        _send("orphan: block H10 before its parent", "block", block_of("H10")),
        _send("block H9, the parent of the orphan H10", "block", block_of("H9")),
        _send("block H10 again (the orphan)", "block", block_of("H10")),
        {"name": "restart both nodes (after the orphan case)", "restart": True},
    ]
    return steps


def depth_steps(blocks: dict[str, tuple[Block, Uint256]]) -> list[dict]:
    """The C++ reorganisation depth limit (``MAX_REORG_DEPTH = 100``, tip height minus
    fork height), on fresh nodes: the vector chain, then branch ``A`` to height 106,
    branch ``B`` to 107 (outweighs ``A`` at depth 100: allowed), ``A107`` (a tie) and
    ``A108`` (outweighs ``B`` at depth 101: refused, ``chain D39``).  The blocks that
    extend the tip are sent unannounced (a peer may, ``net D-14``); side-branch blocks
    are announced with ``inv`` first, as a peer does (our node does not store an
    unrequested block with no more work than its tip).  Every step compares tips."""
    def block(name: str, why: str = "") -> dict:
        return _send(f"block {name}{why}", "block", blocks[name][0].serialize(),
                     expect_same=["tip", "height"])

    def announced(name: str, why: str = "") -> list[dict]:
        return [_send(f"inv: {name}", "inv", _inv([blocks[name][1]])), block(name, why)]

    steps: list[dict] = [{"name": "fresh nodes (new, empty datadirs)", "fresh": True}]
    steps += [block(f"V{h}", " (C++-mined vector chain)") for h in range(1, 7)]
    steps += [block(f"A{h}") for h in range(7, 107)]
    for h in range(7, 107):
        steps += announced(f"B{h}", " (tie with A106: first seen stays)" if h == 106 else "")
    steps += announced("B107", ": outweighs A106, reorganisation of depth 100 (allowed)")
    steps += announced("A107", ": a tie with B107")
    steps += announced("A108", ": outweighs B107, reorganisation of depth 101 (refused)")
    steps += nbits_edge_steps(block)
    steps.append(_rpc("getblockcount"))
    return steps


def nbits_edge_steps(block) -> list[dict]:
    """The ends of the allowed nBits range (compact integers ``0x1d00ffff``..``0x1f0fffff``),
    each block on a new connection (an out-of-range block scores its sender 100)."""
    edges = [block("EASYOUT", ": nBits 0x1f100000, one above the easy end (its own PoW met)"),
             block("HARDOUT", ": nBits 0x1d00fffe, one below the hard end"),
             block("HARDEND", ": nBits 0x1d00ffff, the hard end (hash above the target)"),
             block("SIGNONLY", ": nBits 0x1e800000, only the mantissa's sign bit (target 0)"),
             block("BIT23", ": nBits 0x1effffff on B106: bit 23 out of the target, in the work;"
                            " outweighs B107")]
    return _each_on_a_new_connection(edges)


def malformed_steps(genesis_hash: Uint256) -> list[dict]:
    """Every malformed-message kind of ``tests/test_net_badinput.py`` and ``net`` 3.x,
    each on a new connection."""
    ping = struct.pack("<Q", 7)
    version = MsgVersion(PROTOCOL_VERSION, timestamp=1730000000, user_agent=b"/again:0.1/")
    addr = MsgAddr([Address(1730000000, 1, bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 9]), 18444)])
    steps = [
        _send("bad checksum", "ping", ping, checksum_hex="00000000"),
        _send("wrong magic (mainnet)", "ping", ping, magic=MAINNET_MAGIC),
        _send("announced size above the 32 MiB limit (header only)", "block", b"",
              size=32 * 1024 * 1024 + 1),
        _send("non-NUL 12th command byte", "pingpingping", ping),
        _send("unknown command", "frobnicate", b"\x01\x02"),
        _send("inv count above 50,000", "inv", bytes.fromhex("fe51c30000")),
        _send("inv with trailing bytes", "inv", _inv([UNKNOWN_HASH]) + b"\x00"),
        _send("inv of an unknown tx", "inv", _inv([UNKNOWN_HASH], InvType.MSG_TX_INV)),
        _send("truncated version", "version", version.serialize()[:20]),
        _send("second version", "version", version.serialize()),
        _send("second verack", "verack"),
        _send("ping with trailing bytes", "ping", ping + b"extra"),
        _send("pong with an unknown nonce", "pong", ping),
        _send("getaddr", "getaddr"),
        _send("addr with one address", "addr", addr.serialize()),
        _send("tx with a garbage payload", "tx", b"\x01\x00\x00"),
        _send("getblocks from the genesis", "getblocks",
              MsgGetblocks([bytes(genesis_hash)]).serialize()),
        _send("block truncated after the header", "block", bytes(80)),
        _send("empty block payload", "block"),
    ]
    return _each_on_a_new_connection(steps)


def _each_on_a_new_connection(steps: list[dict]) -> list[dict]:
    """Each step judged alone, not by the misbehaviour score of the ones before it."""
    for step in steps:
        step["new_connection"] = True
    return steps


def rpc_steps() -> list[dict]:
    """RPC methods both nodes implement, and odd parameters (C++ ``[{...}]`` convention)."""
    return [
        _rpc("getmininginfo"),
        _rpc("getnetworkinfo"),
        _rpc("getpeerinfo"),
        _rpc("help"),
        _rpc("getblockcount"),
        _rpc("getbestblockhash"),
        _rpc("getblockhash", {"height": 1}),
        _rpc("getblockhash", {"height": -1}),
        _rpc("getblockhash", {"height": "one"}),
        _rpc("getblock", {"hash": "zz"}),
        _rpc("decoderawtransaction", {"hex": "00"}),
        _rpc("decoderawtransaction", {"hex": ""}),
        _rpc("getrawtransaction", {"txid": "00" * 32}),
        _rpc("nosuchmethod"),
        _rpc("getmininginfo", {"unexpected": [1, 2]}),
    ]


def write_builtin_corpora(vectors_file: Path, mined: dict[str, str], main_out: Path,
                          depth_out: Path) -> None:
    """Write both built-in corpora: the main one and the depth-limit one."""
    from dilithion.crypto.randomx_hash import RandomXHasher

    blocks = known_blocks(vectors_file, mined, RandomXHasher.for_key())
    corpora = ((main_out, "dilithion-diff built-in corpus (dilithion/tools/diff/builtin.py)",
                builtin_steps(blocks)),
               (depth_out, "dilithion-diff built-in corpus, reorganisation depth limit"
                           " (dilithion/tools/diff/builtin.py, depth_steps)", depth_steps(blocks)))
    for out, title, steps in corpora:
        payloads = {step.get("payload_hex") for step in steps}
        sent = [n for n, (b, _) in blocks.items() if b.serialize().hex() in payloads]
        corpus = {"network": "testnet",
                  "description": title + "; blocks mined by `dilithion-diff mine-corpus`: "
                                 + ", ".join(f"{n}={blocks[n][1].get_hex()}" for n in sent),
                  "steps": steps}
        out.write_text(json.dumps(corpus, indent=1) + "\n")
