"""The corpus format (``docs/DIFF.md``): a JSON file of steps, checked before any node starts.

A corpus is validated completely up front so a typo in step 40 is reported
before a minute of node start-ups, and the message names the file, the step
and the field, as the tool's one error line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

COMPARISONS = ("tip", "height", "wire", "disconnect", "ban", "rpc", "storage", "process")
NETWORKS = ("testnet",)
MAX_SLEEP_S = 60.0
STEP_KEYS = {"name", "send", "payload_hex", "checksum_hex", "size", "magic", "sleep", "restart",
             "rpc", "params", "expect_same", "reconnect", "new_connection", "fresh"}
ACTIONS = ("send", "sleep", "restart", "fresh", "rpc", "reconnect")


class CorpusError(Exception):
    """A corpus file that cannot be used; ``str()`` is the one line to print."""


@dataclass
class Step:
    index: int
    name: str
    action: str                         # send | sleep | restart | fresh | rpc | reconnect
    command: str = ""
    payload: bytes = b""
    checksum: bytes | None = None
    size: int | None = None
    magic: int | None = None
    seconds: float = 0.0
    method: str = ""
    params: dict | list | None = None
    expect_same: tuple[str, ...] = ()
    new_connection: bool = False


@dataclass
class Corpus:
    source: str
    network: str
    description: str
    steps: list[Step] = field(default_factory=list)


def load_corpus(path: Path) -> Corpus:
    """Read and validate one corpus file; raises :class:`CorpusError`."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CorpusError(f"corpus {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CorpusError(f"corpus {path}: not valid JSON: {exc}") from None
    return parse_corpus(data, str(path))


def parse_corpus(data, source: str) -> Corpus:
    where = f"corpus {source}"
    if not isinstance(data, dict):
        raise CorpusError(f"{where}: the top level must be an object")
    network = data.get("network", "testnet")
    if network not in NETWORKS:
        raise CorpusError(f"{where}: field 'network': {network!r} is not one of {NETWORKS}")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CorpusError(f"{where}: field 'steps': must be a non-empty list")
    corpus = Corpus(source, network, str(data.get("description", "")))
    for i, raw in enumerate(steps, 1):
        corpus.steps.append(_parse_step(raw, i, f"{where}: step {i}"))
    return corpus


def _fail(where: str, key: str, why: str):
    raise CorpusError(f"{where}: field '{key}': {why}")


def _hex(raw: dict, key: str, where: str) -> bytes | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        _fail(where, key, "must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        _fail(where, key, "is not an even-length hex string")


def _int(raw: dict, key: str, where: str, limit: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        _fail(where, key, f"must be a whole number from 0 to {limit}")
    return value


def _parse_step(raw, index: int, where: str) -> Step:
    if not isinstance(raw, dict):
        raise CorpusError(f"{where}: must be an object")
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        _fail(where, unknown[0], "unknown field")
    actions = [k for k in ACTIONS if k in raw]
    if len(actions) != 1:
        raise CorpusError(f"{where}: needs exactly one of "
                          f"{', '.join(repr(a) for a in ACTIONS)} (found {actions or 'none'})")
    action = actions[0]
    expect = raw.get("expect_same", [])
    if not isinstance(expect, list) or any(e not in COMPARISONS for e in expect):
        _fail(where, "expect_same", f"must be a list drawn from {list(COMPARISONS)}")
    name = raw.get("name", f"step {index}")
    if not isinstance(name, str):
        _fail(where, "name", "must be a string")
    step = Step(index, name, action, expect_same=tuple(expect))
    if action == "send":
        cmd = raw["send"]
        if not isinstance(cmd, str) or not cmd or len(cmd.encode("ascii", "replace")) > 12:
            _fail(where, "send", "must be a wire command of 1 to 12 ASCII characters")
        step.command = cmd
        step.payload = _hex(raw, "payload_hex", where) or b""
        step.checksum = _hex(raw, "checksum_hex", where)
        if step.checksum is not None and len(step.checksum) != 4:
            _fail(where, "checksum_hex", "must be 4 bytes")
        step.size = _int(raw, "size", where, 0xFFFFFFFF)
        step.magic = _int(raw, "magic", where, 0xFFFFFFFF)
        if raw.get("new_connection", False) not in (True, False):
            _fail(where, "new_connection", "must be true or false")
        step.new_connection = raw.get("new_connection", False)
    elif action == "sleep":
        secs = raw["sleep"]
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) \
                or not 0 <= secs <= MAX_SLEEP_S:
            _fail(where, "sleep", f"must be a number of seconds from 0 to {MAX_SLEEP_S:g}")
        step.seconds = float(secs)
    elif action in ("restart", "fresh", "reconnect"):
        if raw[action] is not True:
            _fail(where, action, "must be true")
    else:
        method = raw["rpc"]
        if not isinstance(method, str) or not method:
            _fail(where, "rpc", "must be a method name")
        params = raw.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            _fail(where, "params", "must be an object or a list")
        step.method, step.params = method, params
    if action != "send":
        extra = sorted({"payload_hex", "checksum_hex", "size", "magic", "new_connection"} & set(raw))
        if extra:
            _fail(where, extra[0], f"only allowed with 'send'")
    if action != "rpc" and "params" in raw:
        _fail(where, "params", "only allowed with 'rpc'")
    return step
