"""The C++ node's tip as ``dilithion-diff`` reads it from its log (``cpp_tip_from_log``).

The C++ RPC cannot tell its tip (``cli`` 3.8), so the diff's consensus
comparison rests on this reader.  The lines are REAL C++ output: excerpts of a
``dilithion-diff run`` of both built-in corpora against the C++ node at
0b7ac867 (``tests/data/cpp-log/``, see its README).  Each case reads the log
up to a given line.  Each case is also read by deliberately wrong readers (the
mistakes a reader of this log could make): every case must catch at least one
of them, and every wrong reader must be caught by some case, so no assertion
here holds for a wrong reader too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dilithion.testing.cpp_node import cpp_tip_from_log
from dilithion.tools.diff.cli import BUILTIN_CORPORA

LOGS = Path(__file__).parent / "data" / "cpp-log"
GENESIS = "924bdb80469e1185814407147bc763a62425cc400bc902ce37d73ffbc3524475"


def block_hashes() -> dict[str, str]:
    """Name -> full hash of every block of the built-in corpora (from their descriptions)."""
    names = {"genesis": GENESIS}
    for path in BUILTIN_CORPORA:
        description = json.loads(path.read_text())["description"]
        names.update(re.findall(r"(\w+)=([0-9a-f]{64})", description))
    return names


HASHES = block_hashes()
#: What the diff passes: 16-digit prefix -> full hash of every block it sent.
PREFIXES = {h[:16]: h for h in HASHES.values()}


def log_upto(file: str, line_text: str | None, occurrence: int = 1) -> str:
    """The log file up to and including the ``occurrence``-th line containing ``line_text``
    (the whole file for None)."""
    text = (LOGS / file).read_text()
    if line_text is None:
        return text
    lines, seen = text.splitlines(keepends=True), 0
    for i, line in enumerate(lines):
        seen += line_text in line
        if seen == occurrence:
            return "".join(lines[:i + 1])
    raise AssertionError(f"{file}: no {occurrence}. line with {line_text!r}")


MAIN, DEPTH, REFUSED = "main-corpus.log", "depth-corpus-excerpt.log", "restart-refused.log"
#: (what, file, up to the line containing, occurrence, expected block name, height)
CASES = [
    ("before the genesis line", MAIN, "Loading genesis block", 1, None, -1),
    ("the genesis at start", MAIN, "Node Status: RUNNING", 1, "genesis", 0),
    ("vector block 1 becomes the tip", MAIN, "Updated best block to height 1", 1, "V1", 1),
    ("vector block 6 becomes the tip", MAIN, "Updated best block to height 6", 1, "V6", 6),
    ("the tip and an old block again: skipped", MAIN, "Block already in chain state", 2, "V6", 6),
    ("side blocks F6, F7 stored, not the tip", MAIN, "not on best chain (orphan)", 2, "V6", 6),
    ("F8: a reorganisation, New tip", MAIN, "New tip:", 1, "F8", 8),
    ("G8 (a tie), bad PoW and bad nBits refused", MAIN, "has invalid PoW", 2, "F8", 8),
    ("the orphan H10 refused", MAIN, "This is an orphan block", 1, "F8", 8),
    ("H9, the orphan's parent", MAIN, "Updated best block to height 9", 1, "H9", 9),
    ("H10 again, skipped; clean stop", MAIN, None, 1, "H9", 9),
    ("a restart the C++ cannot make: its stored best block is never active", REFUSED, None, 1,
     "genesis", 0),
    ("the depth corpus: A106 on top", DEPTH, "Updated best block to height 106", 1, "A106", 106),
    ("B105, B106 (a tie) stored; B107 received", DEPTH, "New block:   0009d0e1e0df14f7", 1,
     "A106", 106),
    ("B107: a reorganisation of depth 100", DEPTH, "New tip:", 2, "B107", 107),
    ("A107 (a tie), A108 too deep (101): refused", DEPTH, "Failed to activate block", 1,
     "B107", 107),
    ("four edge blocks with invalid PoW", DEPTH, "has invalid PoW", 4, "B107", 107),
    ("BIT23 outweighs B107: the last reorganisation", DEPTH, None, 1, "BIT23", 107),
]


def expected(name: str | None, height: int) -> tuple[str, int]:
    return ("" if name is None else HASHES[name], height)


@pytest.mark.parametrize("what, file, upto, occurrence, name, height", CASES,
                         ids=[c[0] for c in CASES])
def test_cpp_tip_from_real_log_lines(what, file, upto, occurrence, name, height):
    assert cpp_tip_from_log(log_upto(file, upto, occurrence), PREFIXES) == expected(name, height)


def test_a_prefix_without_a_name_is_returned_as_a_prefix():
    assert cpp_tip_from_log(log_upto(DEPTH, None), {}) == (HASHES["BIT23"][:16] + "...", 107)
    assert cpp_tip_from_log(log_upto(MAIN, "Node Status: RUNNING"), {}) == (GENESIS, 0)


# ---- wrong readers: each case must catch at least one ---------------------------------------
def _reader(text: str, names: dict, *, genesis=r"Genesis hash: ([0-9a-f]{64})",
            received=r"\[P2P\] Received block from peer \d+: ([0-9a-f]{16})\.\.\.",
            updated=r"\[P2P\] Updated best block to height (\d+)",
            new_tip=r"New tip: ([0-9a-f]{16}) \(height (\d+)\)", received_is_tip=False,
            extra_tip: str | None = None, resolve=True, first_received=False,
            start=("", -1)) -> tuple[str, int]:
    """A tip reader with its patterns as parameters, to build wrong ones from."""
    (tip, height), last = start, ""
    for line in text.splitlines():
        if m := re.search(genesis, line):
            tip, height = m.group(1), 0
        elif m := re.search(received, line):
            last = (last or m.group(1)) if first_received else m.group(1)
            if received_is_tip:
                tip = last
        elif m := re.search(updated, line):
            tip, height = last, int(m.group(1))
            last = "" if first_received else last
        elif new_tip and (m := re.search(new_tip, line)):
            tip, height = m.group(1), int(m.group(2))
        elif extra_tip and (m := re.search(extra_tip, line)):
            tip = m.group(1)
            height = int(m.group(2)) if m.lastindex and m.lastindex > 1 else height
    if height <= 0 or not resolve:
        return tip, height
    return names.get(tip, tip + "..."), height


WRONG_READERS = {
    "the last received block is the tip": lambda t, n: _reader(t, n, received_is_tip=True),
    "reorganisations ignored (no New tip)": lambda t, n: _reader(t, n, new_tip=""),
    "the genesis line only at a line start":
        lambda t, n: _reader(t, n, genesis=r"^Genesis hash: (\w{64})"),
    "a competing block's New block line taken as a tip":
        lambda t, n: _reader(t, n, extra_tip=r"New block: +([0-9a-f]{16}) \(height (\d+)\)"),
    "the height from Block index created":
        lambda t, n: _reader(t, n, updated=r"Block index created \(height (\d+)\)"),
    "the stored best block at start-up taken as the tip":
        lambda t, n: _reader(t, n, extra_tip=r"Best block hash: ([0-9a-f]{16})"),
    "prefixes not resolved to full hashes": lambda t, n: _reader(t, n, resolve=False),
    "the genesis assumed before the node printed it":
        lambda t, n: _reader(t, n, start=(GENESIS, 0)),
    "the first block received since the last update, not the last one":
        lambda t, n: _reader(t, n, first_received=True),
}


def test_the_reference_reader_agrees_with_the_pattern_reader():
    """The parametrised reader without a fault is the real reader (so the faults are single)."""
    for _, file, upto, occ, name, height in CASES:
        text = log_upto(file, upto, occ)
        assert _reader(text, PREFIXES) == cpp_tip_from_log(text, PREFIXES) == expected(name, height)


@pytest.mark.parametrize("what, file, upto, occurrence, name, height", CASES,
                         ids=[c[0] for c in CASES])
def test_each_case_catches_a_wrong_reader(what, file, upto, occurrence, name, height):
    text = log_upto(file, upto, occurrence)
    caught = [w for w, reader in WRONG_READERS.items()
              if reader(text, PREFIXES) != expected(name, height)]
    assert caught, f"{what}: every wrong reader gets it right too"


@pytest.mark.parametrize("wrong", list(WRONG_READERS))
def test_each_wrong_reader_is_caught_by_a_case(wrong):
    reader = WRONG_READERS[wrong]
    assert any(reader(log_upto(f, u, o), PREFIXES) != expected(n, h)
               for _, f, u, o, n, h in CASES), wrong
