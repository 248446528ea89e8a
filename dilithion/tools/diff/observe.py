"""What is compared after a step, and how two observations become a list of differences.

Every difference has a ``kind`` (``consensus``, ``wire``, ``disconnect``,
``ban``, ``rpc``, ``storage``, ``process``), a ``subject`` naming what differs
(``tip``, ``wire.version.user_agent``, ``rpc.getblockcount.error``,
``storage.b.only-cpp``, ...) and the two values.  The catalogue matches on
these, so a subject is stable text, never a hash or a time.

Wire replies are normalised before they are compared: ``version`` timestamps
and nonces, ``addr`` times and ``ping`` nonces are random or clock-driven and
replaced by placeholders; messages are grouped by command, in arrival order
within a command (the two nodes interleave commands from different threads
differently).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path

import plyvel

from dilithion.net.protocol import decode_payload

TIME, NONCE, VOLATILE = "<time>", "<nonce>", "<varies>"
#: RPC result members that differ between any two runs (peer ids, ports, clocks, byte counts).
RPC_VOLATILE = frozenset({"id", "addr", "addrlocal", "conntime", "lastsend", "lastrecv",
                          "bytessent", "bytesrecv", "pingtime", "minping", "pingwait",
                          "timeoffset"})


@dataclass
class Difference:
    kind: str
    subject: str
    cpp: object
    python: object

    def to_json(self) -> dict:
        return asdict(self)


def _plain(value):
    """JSON-safe values (RPC amounts arrive as ``Decimal``)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def normalise_message(command: str, payload: bytes):
    """One received message as comparable JSON (see the module docstring)."""
    try:
        msg = decode_payload(command, payload)
    except ValueError:
        msg = None
    if msg is None:
        return {"payload_hex": payload.hex()}
    if command == "version":
        return {"version": msg.version, "services": msg.services, "timestamp": TIME,
                "nonce": NONCE, "user_agent": msg.user_agent.decode("ascii", "replace"),
                "start_height": msg.start_height, "relay": msg.relay}
    if command in ("inv", "getdata"):
        return {"items": [f"{int(i.type)}:{i.hash.get_hex()}" for i in msg.inv]}
    if command == "addr":
        return {"addresses": [f"{a.ip.hex()}:{a.port}" for a in msg.addrs], "time": TIME}
    if command in ("ping", "pong"):
        return {"nonce": NONCE}
    return {"payload_hex": payload.hex()}


def normalise_rpc(value):
    """An RPC reply with :data:`RPC_VOLATILE` members replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: VOLATILE if k in RPC_VOLATILE else normalise_rpc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_rpc(v) for v in value]
    return _plain(value)


def normalise_wire(messages: list[tuple[str, bytes]]) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for command, payload in messages:
        grouped.setdefault(command, []).append(normalise_message(command, payload))
    return grouped


def read_blocks_db(datadir: Path) -> dict[str, str]:
    """Every key and value of ``<datadir>/blocks`` (the node must be stopped)."""
    path = datadir / "blocks"
    if not path.exists():
        return {}
    try:
        db = plyvel.DB(str(path), create_if_missing=False)
    except plyvel.Error as exc:              # reported as a storage difference, not a crash
        return {"<unreadable>": str(exc)}
    try:
        return {_key_text(k): v.hex() for k, v in db}
    finally:
        db.close()


def _key_text(key: bytes) -> str:
    """Keys as text (``b<hash hex>``, ``i<hash hex>``, ``bestblock``); others as ``0x<hex>``."""
    text = key.decode("ascii", "replace")
    return text if key.isascii() and text.isprintable() else "0x" + key.hex()


def _key_class(key: str) -> str:
    if key == "bestblock":
        return "bestblock"
    return key[0] if key[:1].isalpha() else "other"


def compare(cpp: dict, py: dict) -> list[Difference]:
    """All differences between two observations of the same step."""
    diffs: list[Difference] = []
    if "storage" in cpp and "storage" in py:       # read before a restart, so still meaningful
        diffs += _compare_storage(cpp["storage"], py["storage"])
    if cpp.get("process", "ok") != py.get("process", "ok"):
        diffs.append(Difference("process", "process", cpp.get("process"), py.get("process")))
        return diffs                        # nothing else is meaningful after a crash or hang
    for key in ("tip", "height"):
        if key in cpp and key in py and cpp[key] != py[key]:
            diffs.append(Difference("consensus", key, cpp[key], py[key]))
    for key in ("disconnect", "ban"):
        if cpp.get(key) != py.get(key):
            diffs.append(Difference(key, key, cpp.get(key), py.get(key)))
    if cpp.get("no_reply", False) != py.get("no_reply", False):
        diffs.append(Difference("wire", "wire.no-reply", cpp.get("no_reply", False),
                                py.get("no_reply", False)))
    if "wire" in cpp and "wire" in py:
        diffs += _compare_wire(cpp["wire"], py["wire"])
    if "rpc" in cpp and "rpc" in py:
        diffs += _compare_rpc(f"rpc.{cpp.get('rpc_method', '')}", cpp["rpc"], py["rpc"])
    return diffs


def _compare_wire(cpp: dict, py: dict) -> list[Difference]:
    diffs = []
    for command in sorted(set(cpp) | set(py)):
        a, b = cpp.get(command, []), py.get(command, [])
        if len(a) != len(b):
            diffs.append(Difference("wire", f"wire.{command}", a, b))
            continue
        for x, y in zip(a, b):
            diffs += _compare_tree(f"wire.{command}", x, y, "wire")
    return diffs


def _compare_rpc(prefix: str, a: dict, b: dict) -> list[Difference]:
    """Results field by field; an error, or an error against a result, as one difference
    (subject ``rpc.<method>``) so the catalogue sees the whole error object."""
    if "result" in a and "result" in b:
        return _compare_tree(f"{prefix}.result", a["result"], b["result"], "rpc")
    return [] if a == b else [Difference("rpc", prefix, a, b)]


def _compare_tree(prefix: str, a, b, kind: str) -> list[Difference]:
    """Field by field for objects, whole values otherwise."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(Difference(kind, f"{prefix}.{key}", a.get(key), b.get(key)))
            else:
                out += _compare_tree(f"{prefix}.{key}", a[key], b[key], kind)
        return out
    if a != b:
        return [Difference(kind, prefix, a, b)]
    return []


def _compare_storage(cpp: dict[str, str], py: dict[str, str]) -> list[Difference]:
    diffs = []
    for key in sorted(set(cpp) | set(py)):
        cls = _key_class(key)
        if key not in py:
            diffs.append(Difference("storage", f"storage.{cls}.only-cpp", key, None))
        elif key not in cpp:
            diffs.append(Difference("storage", f"storage.{cls}.only-python", None, key))
        elif cpp[key] != py[key]:
            diffs.append(Difference("storage", f"storage.{cls}.value",
                                    {"key": key, "value": cpp[key]},
                                    {"key": key, "value": py[key]}))
    return diffs


def dumps(value) -> str:
    return json.dumps(_plain(value), sort_keys=True)
