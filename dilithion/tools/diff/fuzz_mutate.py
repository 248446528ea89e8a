"""The mutators of ``dilithion-diff fuzz``: one corpus step in, a changed step out.

Three levels, because the C++ node and ours can disagree at each of them:

* **structure** (:class:`MessageMutator`): the payload is decoded with
  ``dilithion.net.protocol`` / ``dilithion.primitives``, one field is set to a
  boundary value (or a list is shortened, grown, reordered, filled with known
  block hashes) and the message is serialised again, so it stays decodable and
  reaches the handler's logic rather than its parser; block headers keep their
  proof of work when only the body (``vtx``) changes;
* **counts and frames** (:class:`CountMutator`, :class:`FrameMutator`): a
  CompactSize count or length at its known offset gets a boundary value or a
  non-canonical encoding; the frame gets a wrong checksum, announced size,
  magic or command;
* **bytes** (:class:`ByteMutator`): truncation, bit flips, inserted, deleted
  and duplicated ranges, trailing bytes.

Every mutator is a pure function of its ``random.Random`` and its input, so a
run with the same seed makes the same inputs (``fuzz_inputs.InputGenerator``).
A mutator returns ``None`` when it does not apply to the step (the generator
then picks another); it never returns the step unchanged.
"""
from __future__ import annotations

import dataclasses
import random
import struct

from dilithion.core.chainparams import MAINNET_MAGIC
from dilithion.net.protocol import (Address, Inv, MsgAddr, MsgBlock, MsgGetblocks, MsgInv,
                                    MsgTx, MsgVersion, decode_payload)
from dilithion.net.serialize import ser_compact_size
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import Transaction

from .corpus import Step

#: Payloads are kept below this (a larger one proves nothing a 64 KiB one does not, and costs).
MAX_PAYLOAD = 64 * 1024
#: Integers at the edges of the widths the wire uses (signed and unsigned 8 to 64 bits).
BOUNDARY_INTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                 0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000,
                 0xFFFFFFFFFFFFFFFF)
#: Counts that sit at the limits the nodes enforce (inv 50,000, addr 1,000, locator 101,
#: the CompactSize encoding edges).
BOUNDARY_COUNTS = (0, 1, 100, 101, 102, 252, 253, 0xFFFF, 0x10000, 1000, 1001, 50000, 50001,
                   0xFFFFFFFF, 0x100000000, 0xFFFFFFFFFFFFFFFF)
#: Where the first CompactSize of each payload sits (a count or a length).
COUNT_OFFSETS = {"inv": 0, "getdata": 0, "addr": 0, "getblocks": 4, "block": 80, "tx": 4,
                 "version": 28}
#: Added to a structure mutation's description when it sets a list or a string one past the
#: limit the decoders enforce on purpose (the message no longer decodes; every other
#: structure mutation keeps it decodable).
OVER = " (over the limit)"
#: Commands a node parses (the C++ node: all but ``getblocks``).
PARSED_COMMANDS = ("version", "verack", "ping", "pong", "getaddr", "addr", "inv", "getdata",
                   "block", "tx", "getblocks")


def fit(value: int, bits: int, signed: bool) -> int:
    """``value`` wrapped into a field of ``bits`` bits (two's complement when signed)."""
    value &= (1 << bits) - 1
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def boundary(rng: random.Random, bits: int, signed: bool = False) -> int:
    return fit(rng.choice(BOUNDARY_INTS) + rng.choice((0, 0, -1)), bits, signed)


def _with(step: Step, how: str, **changes) -> Step:
    """A copy of ``step`` with ``changes``; ``how`` is added to its name."""
    return dataclasses.replace(step, name=f"{step.name}; {how}", **changes)


def _payload(step: Step, payload: bytes, how: str) -> Step | None:
    if payload == step.payload or len(payload) > MAX_PAYLOAD:
        return None
    return _with(step, how, payload=payload)


class MessageMutator:
    """Decode, change one field, serialise again (module docstring)."""

    name = "structure"
    action, weight = "send", 3

    def __init__(self, known_hashes: list[bytes], blocks: list[bytes]) -> None:
        self.known_hashes = list(known_hashes)
        self.blocks = list(blocks)

    def applies(self, step: Step) -> bool:
        return step.action == "send" and step.command in ("version", "ping", "pong", "addr",
                                                          "inv", "getdata", "getblocks",
                                                          "block", "tx")

    def __call__(self, rng: random.Random, step: Step) -> Step | None:
        if not self.applies(step):
            return None
        try:
            msg = decode_payload(step.command, step.payload)
        except ValueError:
            return None
        if msg is None:
            return None
        handler = getattr(self, "_" + step.command, None)
        try:
            payload, how = handler(rng, msg) if handler else self._ping(rng, msg)
        except (ValueError, struct.error, OverflowError):
            return None
        return _payload(step, payload, f"{self.name}: {how}")

    # ---- one method per message -------------------------------------------------
    def _version(self, rng, msg: MsgVersion):
        field = rng.choice(("version", "services", "timestamp", "nonce", "user_agent",
                            "start_height", "relay"))
        widths = {"version": (32, True), "services": (64, False), "timestamp": (64, True),
                  "nonce": (64, False), "start_height": (32, True)}
        if field == "user_agent":
            n = rng.choice((0, 1, 255, 256, 257, 300))
            value = bytes(rng.randrange(32, 127) for _ in range(n))
        elif field == "relay":
            value = not msg.relay
        else:
            value = boundary(rng, *widths[field])
        how = f"version.{field}" + (OVER if field == "user_agent" and len(value) > 256 else "")
        return dataclasses.replace(msg, **{field: value}).serialize(), how

    def _ping(self, rng, msg):
        nonce = boundary(rng, 64)
        return struct.pack("<Q", nonce), f"{msg.command}.nonce={nonce:#x}"

    _pong = _ping

    def _addr(self, rng, msg: MsgAddr):
        addrs = list(msg.addrs) or [Address.from_ipv4("127.0.0.1", 18444)]
        op = rng.choice(("time", "services", "port", "ip", "duplicate", "drop", "many"))
        a = addrs[0]
        if op == "time":
            addrs[0] = dataclasses.replace(a, time=boundary(rng, 32))
        elif op == "services":
            addrs[0] = dataclasses.replace(a, services=boundary(rng, 64))
        elif op == "port":
            addrs[0] = dataclasses.replace(a, port=boundary(rng, 16))
        elif op == "ip":
            addrs[0] = dataclasses.replace(a, ip=bytes(rng.randrange(256) for _ in range(16)))
        elif op == "duplicate":
            addrs.append(a)
        elif op == "drop":
            addrs = addrs[1:]
        else:
            addrs = [a] * rng.choice((2, 999, 1000, 1001))
        return MsgAddr(addrs).serialize(), f"addr.{op}" + (OVER if len(addrs) > 1000 else "")

    def _inv(self, rng, msg: MsgInv):
        items = list(msg.inv)
        op = rng.choice(("type", "known", "random", "duplicate", "drop", "reverse", "many"))
        known = [Inv(2, h) for h in self.known_hashes] or [Inv(2, bytes(32))]
        if op == "type" and items:
            i = rng.randrange(len(items))
            items[i] = Inv(rng.choice((0, 1, 2, 3, 4, 5, 0x40000002, 0xFFFFFFFF)), items[i].hash)
        elif op == "known":
            items = rng.sample(known, rng.randint(1, len(known)))
        elif op == "random":
            items.append(Inv(rng.choice((1, 2)), bytes(rng.randrange(256) for _ in range(32))))
        elif op == "duplicate" and items:
            items += items
        elif op == "drop" and items:
            items.pop(rng.randrange(len(items)))
        elif op == "reverse" and len(items) > 1:
            items.reverse()
        else:
            op = "many"
            items = [rng.choice(known) for _ in range(rng.choice((2, 100, 1000)))]
        return type(msg)(items).serialize(), f"{msg.command}.{op}"

    _getdata = _inv

    def _getblocks(self, rng, msg: MsgGetblocks):
        op = rng.choice(("version", "locator", "stop", "empty", "long"))
        if op == "version":
            msg = dataclasses.replace(msg, version=boundary(rng, 32))
        elif op == "locator" and self.known_hashes:
            msg = dataclasses.replace(msg, locator=[Uint256(rng.choice(self.known_hashes))])
        elif op == "stop" and self.known_hashes:
            msg = dataclasses.replace(msg, hash_stop=Uint256(rng.choice(self.known_hashes)))
        elif op == "empty":
            msg = dataclasses.replace(msg, locator=[])
        else:
            op = "long"
            msg = dataclasses.replace(msg, locator=[Uint256(bytes(32))] * rng.choice((101, 102)))
        return msg.serialize(), f"getblocks.{op}" + (OVER if len(msg.locator) > 101 else "")

    def _block(self, rng, msg: MsgBlock):
        block = msg.block
        if rng.random() < 0.6:                          # the body: the proof of work still holds
            return self._block_body(rng, block)
        field = rng.choice(("version", "hash_prev_block", "hash_merkle_root", "time", "bits",
                            "nonce"))
        if field in ("hash_prev_block", "hash_merkle_root"):
            value = Uint256(rng.choice(self.known_hashes + [bytes(32), b"\xff" * 32]))
        else:
            value = boundary(rng, 32, field == "version")
        header = dataclasses.replace(block.header, **{field: value})
        return Block(header, block.vtx).serialize(), f"block.header.{field}"

    def _block_body(self, rng, block: Block):
        op = rng.choice(("other-body", "tx-count", "flip", "truncate", "append-tx", "empty"))
        vtx = block.vtx
        if op == "other-body" and self.blocks:
            other = Block.deserialize(rng.choice(self.blocks), allow_trailing=True)
            vtx = other.vtx if other.vtx != vtx else vtx + b"\0"
        elif op == "tx-count" and vtx:
            vtx = ser_compact_size(rng.choice((0, 2, 0xFD, 0xFFFFFFFF))) + vtx[1:]
        elif op == "flip" and vtx:
            i = rng.randrange(len(vtx))
            vtx = vtx[:i] + bytes((vtx[i] ^ (1 << rng.randrange(8)),)) + vtx[i + 1:]
        elif op == "truncate" and len(vtx) > 1:
            vtx = vtx[:rng.randrange(1, len(vtx))]
        elif op == "append-tx" and vtx:
            vtx = bytes((vtx[0] + 1,)) + vtx[1:] + vtx[1:]      # the coinbase twice
        else:
            op = "empty"
            vtx = b"" if vtx else b"\0"
        return Block(block.header, vtx).serialize(), f"block.body.{op}"

    def _tx(self, rng, msg: MsgTx):
        tx: Transaction = msg.tx
        op = rng.choice(("version", "lock_time", "no-inputs", "no-outputs", "value", "script"))
        if op == "version":
            tx = dataclasses.replace(tx, version=boundary(rng, 32, True))
        elif op == "lock_time":
            tx = dataclasses.replace(tx, lock_time=boundary(rng, 32))
        elif op == "no-inputs":
            tx = dataclasses.replace(tx, vin=[])
        elif op == "no-outputs":
            tx = dataclasses.replace(tx, vout=[])
        elif op == "value" and tx.vout:
            out = dataclasses.replace(tx.vout[0], value=boundary(rng, 64, True))
            tx = dataclasses.replace(tx, vout=[out] + tx.vout[1:])
        elif tx.vin:
            n = rng.choice((0, 1, 100, 10001))
            op = "script" + (OVER if n > 10000 else "")
            vin = dataclasses.replace(tx.vin[0], script_sig=bytes(n))
            tx = dataclasses.replace(tx, vin=[vin] + tx.vin[1:])
        else:
            raise ValueError("nothing to change")
        return tx.serialize(), f"tx.{op}"


class CountMutator:
    """A CompactSize count or length (at :data:`COUNT_OFFSETS`) set to a boundary value,
    or re-encoded non-canonically with its own value."""

    name = "count"
    action, weight = "send", 2

    def __call__(self, rng: random.Random, step: Step) -> Step | None:
        offset = COUNT_OFFSETS.get(step.command)
        if step.action != "send" or offset is None or len(step.payload) <= offset:
            return None
        old, width = read_compact(step.payload, offset)
        if rng.random() < 0.25 and old < 0xFFFFFFFF:
            new = b"\xff" + struct.pack("<Q", old)               # same value, 9 bytes
            how = f"count: at {offset}, {old} non-canonical"
        else:
            value = rng.choice(BOUNDARY_COUNTS + (old + 1, max(old - 1, 0)))
            new, how = ser_compact_size(value), f"count: at {offset}, {old} -> {value}"
        return _payload(step, step.payload[:offset] + new + step.payload[offset + width:], how)


def read_compact(data: bytes, offset: int) -> tuple[int, int]:
    """The CompactSize at ``offset``, and how many bytes it takes (short data: what is there)."""
    first = data[offset]
    width = {0xFD: 3, 0xFE: 5, 0xFF: 9}.get(first, 1)
    if width == 1:
        return first, 1
    raw = data[offset + 1:offset + width].ljust(width - 1, b"\0")
    return int.from_bytes(raw, "little"), min(width, len(data) - offset)


class FrameMutator:
    """The frame around the payload: checksum, announced size, magic, command bytes."""

    name = "frame"
    action, weight = "send", 1          # most frame errors end the C++ connection: costly

    def __call__(self, rng: random.Random, step: Step) -> Step | None:
        if step.action != "send":
            return None
        what = rng.choice(("checksum", "checksum", "size", "magic", "command", "command"))
        if what == "checksum":
            random_checksum = bytes(rng.randrange(256) for _ in range(4))
            checksum = rng.choice((bytes(4), b"\xff" * 4, random_checksum))
            return _with(step, f"frame: checksum {checksum.hex()}", checksum=checksum)
        if what == "size":
            n = len(step.payload)
            size = rng.choice((0, max(n - 1, 0), n + 1, 32 * 1024 * 1024, 32 * 1024 * 1024 + 1,
                               0xFFFFFFFF))
            if size == n:
                return None
            return _with(step, f"frame: size {size}", size=size)
        if what == "magic":
            magic = rng.choice((MAINNET_MAGIC, 0, 0xFFFFFFFF, rng.randrange(1 << 32)))
            return _with(step, f"frame: magic {magic:#x}", magic=magic)
        choices = [c for c in PARSED_COMMANDS if c != step.command]
        command = rng.choice((rng.choice(choices), step.command.upper(),
                              (step.command + "\0x")[:12], step.command[:-1] or "x",
                              (step.command * 3)[:12]))   # the command field holds 12 bytes
        if command == step.command:
            return None
        return _with(step, f"frame: command {command!r}", command=command)


class ByteMutator:
    """Payload bytes without regard to structure."""

    name = "bytes"
    action, weight = "send", 2

    def __call__(self, rng: random.Random, step: Step) -> Step | None:
        if step.action != "send":
            return None
        data = step.payload
        op = rng.choice(("truncate", "flip", "insert", "delete", "duplicate", "set", "append"))
        if not data:
            op = "append"
        if op == "truncate":
            n = rng.randrange(len(data))
            data = data[:n]
        elif op == "flip":
            i = rng.randrange(len(data))
            data = data[:i] + bytes((data[i] ^ (1 << rng.randrange(8)),)) + data[i + 1:]
        elif op == "insert":
            i = rng.randrange(len(data) + 1)
            data = data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[i:]
        elif op == "delete":
            i = rng.randrange(len(data))
            data = data[:i] + data[i + rng.randint(1, 8):]
        elif op == "duplicate":
            i = rng.randrange(len(data))
            j = rng.randint(i + 1, len(data))
            data = data[:j] + data[i:j] + data[j:]
        elif op == "set":
            i = rng.randrange(len(data))
            data = data[:i] + bytes((rng.choice((0, 0x7F, 0x80, 0xFF)) ^ (data[i] == 0xFF),)) \
                + data[i + 1:]
        else:
            data = data + bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 8, 33))))
        return _payload(step, data, f"bytes: {op}")


class RpcMutator:
    """RPC parameters at their edges (heights, hashes, types); only the seed corpus's
    read-only methods, never one that changes the node (``stop``)."""

    name = "rpc"
    action, weight = "rpc", 1
    EDGE_VALUES = (-1, 0, 6, 7, 2**31 - 1, 2**31, 2**63, 1.5, "1", "", None, True, [], {})

    def __init__(self, hashes: list[bytes]) -> None:
        self.hex_hashes = [Uint256(h).get_hex() for h in hashes]

    def __call__(self, rng: random.Random, step: Step) -> Step | None:
        if step.action != "rpc":
            return None
        params = step.params if isinstance(step.params, dict) else {}
        key = rng.choice(sorted(params) + ["unexpected"]) if params else "height"
        op = rng.choice(("edge", "hash", "list-form", "drop"))
        if op == "hash" and self.hex_hashes:
            value = rng.choice(self.hex_hashes)
            value = rng.choice((value, value.upper(), value[:-1], value + "00"))
            new = {**params, key: value}
        elif op == "list-form":
            new = list(params.values()) or [rng.choice(self.EDGE_VALUES)]
        elif op == "drop" and params:
            new = {k: v for k, v in params.items() if k != key}
        else:
            op = "edge"
            new = {**params, key: rng.choice(self.EDGE_VALUES)}
        if new == step.params:
            return None
        return _with(step, f"rpc: {op} {key}", params=new)


def all_mutators(known_hashes: list[bytes], blocks: list[bytes]) -> list:
    """Every mutator, in a fixed order (the generator draws from them by ``action``, the
    step kind each mutates, and ``weight``, how often it is drawn)."""
    return [MessageMutator(known_hashes, blocks), CountMutator(), FrameMutator(), ByteMutator(),
            RpcMutator(known_hashes)]


__all__ = ["MAX_PAYLOAD", "OVER", "BOUNDARY_INTS", "BOUNDARY_COUNTS", "COUNT_OFFSETS",
           "PARSED_COMMANDS",
           "MessageMutator", "CountMutator", "FrameMutator", "ByteMutator", "RpcMutator",
           "all_mutators", "boundary", "fit", "read_compact"]
