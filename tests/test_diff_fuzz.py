"""``dilithion-diff fuzz`` (docs/DIFF.md, "Differential fuzzing"): the smoke run that must
find nothing, mutants it must find (and minimise, and write as corpora that ``run``
replays), bad flags, and the mutators and the minimiser on their own.

The runs start the tool as a process, as a developer does; the unit tests use the
same seeds the tool loads (the built-in corpus, the vector chain, the mined blocks).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import MsgInv, Inv, decode_payload
from dilithion.testing.testnet_blocks import DEFAULT_VECTORS, MINED_FILE
from dilithion.tools.diff.cli import BUILTIN_CORPUS
from dilithion.tools.diff.corpus import Step, parse_corpus
from dilithion.tools.diff.fuzz import Finding, WideLoopbackHosts, finding_of, inputs_bytes
from dilithion.tools.diff.fuzz_inputs import (BlockNames, InputGenerator, load_seeds, step_json,
                                              step_signature)
from dilithion.tools.diff.fuzz_minimise import Budget, ddmin, minimise, shrink_bytes, shrink_items
from dilithion.primitives.block import Block
from dilithion.tools.diff.fuzz_mutate import (OVER, ByteMutator, CountMutator, FrameMutator,
                                              MessageMutator, RpcMutator, read_compact)
from dilithion.tools.diff.runner import StepResult
from test_diff import CPP_NODE, one_error_line, run_diff

DEFECTIVE = Path(__file__).resolve().parent / "defective_node.py"
SEED = 1


def mutant(name: str) -> str:
    return f"{sys.executable} {DEFECTIVE} {name}"


@pytest.fixture(scope="module")
def seeds():
    return load_seeds(BUILTIN_CORPUS, DEFAULT_VECTORS, MINED_FILE,
                      BlockNames(ChainParams.testnet()))


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ---- the smoke run (default suite): Python against Python finds nothing ------------------
@pytest.mark.timeout(300)
def test_self_fuzz_for_60_seconds_finds_nothing(tmp_path, seeds):
    out = tmp_path / "out"
    done = run_diff("fuzz", "--self", "--seconds", "60", "--seed", str(SEED), "--out", str(out),
                    timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    s = summary(out)
    assert s["seed"] == SEED and s["executions"] >= 20, s
    assert s["steps"] >= s["executions"]
    assert s["unexplained"] == {} and s["crashes"] == {} and s["hangs"] == {}, s
    assert s["known"] == {} and s["findings"] == [] and s["aborted"] == ""
    assert not (out / "found").exists()
    assert "executions/s" in done.stdout and "UNEXPLAINED" in (out / "summary.md").read_text()
    # The inputs it ran are the ones the seed makes, whatever the nodes answered.
    generator, digest = InputGenerator(seeds, SEED), hashlib.sha3_256()
    for i in range(s["executions"]):
        digest.update(inputs_bytes(generator.input(i)))
    assert s["inputs_digest"] == digest.hexdigest()


# ---- it can fail: mutants of our node (slow: each is a minute or two) ---------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_mutant_is_found_minimised_and_replayed(tmp_path):
    """Our node disconnecting the sender of a block with trailing bytes: found as an
    UNEXPLAINED difference, minimised below its first input, replayed by `run`."""
    program = mutant("diff-fuzz-block-trailing-disconnect")
    out = tmp_path / "out"
    done = run_diff("fuzz", "--self", "--python-program", program, "--runs", "4",
                    "--seed", str(SEED), "--out", str(out), timeout=580)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    s = summary(out)
    assert s["unexplained"].get("disconnect:disconnect", 0) >= 1, s
    finding = next(f for f in s["findings"] if f["subject"] == "disconnect:disconnect")
    assert finding["class"] == "unexplained" and finding["step"] == "send block"
    assert finding["replayed_from_base"] is True
    before, after = finding["size_before"], finding["size_after"]
    assert after[0] <= before[0] and after[1] <= before[1] and after != before, finding
    found = Path(finding["file"])
    assert found.parent == out / "found"
    corpus = json.loads(found.read_text())
    assert corpus["steps"][0] == {"name": "fresh", "fresh": True}
    assert f"--seed {SEED}" in corpus["description"]
    last = corpus["steps"][-1]["name"]

    replay = run_diff("run", "--self", "--python-program", program, "--corpus", str(found),
                      "--out", str(tmp_path / "replay"))
    assert replay.returncode == 1, replay.stdout + replay.stderr[-3000:]
    steps = json.loads((tmp_path / "replay" / "report.json").read_text())["steps"]
    bad = [st for st in steps if st["outcome"] == "differs (UNEXPLAINED)"]
    assert [st["name"] for st in bad] == [last]
    assert {"kind": "disconnect", "subject": "disconnect"} in [
        {"kind": d["kind"], "subject": d["subject"]} for d in bad[0]["differences"]]

    clean = run_diff("run", "--self", "--corpus", str(found), "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("defect, cls, counter", [
    ("diff-fuzz-block-trailing-exit", "crash", "crashes"),
    ("diff-fuzz-block-trailing-hang", "hang", "hangs"),
])
def test_a_crashing_or_hanging_mutant_is_reported_as_such(tmp_path, defect, cls, counter):
    out = tmp_path / "out"
    done = run_diff("fuzz", "--self", "--python-program", mutant(defect), "--runs", "4",
                    "--seed", str(SEED), "--out", str(out), timeout=580)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    s = summary(out)
    assert s[counter].get("python", 0) >= 1 and "cpp" not in s[counter], s
    assert s["unexplained"] == {}, s
    finding = next(f for f in s["findings"] if f["class"] == cls)
    assert finding["subject"] == "python" and finding["step"] == "send block"
    assert Path(finding["file"]).is_file()
    assert counter in done.stdout


# ---- the real C++ node (when DILITHION_CPP_NODE is set) ----------------------------------
@pytest.mark.cpp
@pytest.mark.timeout(900)
@pytest.mark.skipif(not CPP_NODE or not os.access(CPP_NODE, os.X_OK),
                    reason="DILITHION_CPP_NODE is not set to an executable C++ dilithion-node")
def test_fuzz_against_the_cpp_node_runs_and_counts(tmp_path):
    out = tmp_path / "out"
    done = run_diff("fuzz", "--cpp", CPP_NODE, "--runs", "10", "--seed", str(SEED),
                    "--out", str(out), timeout=880)
    assert done.returncode in (0, 1), done.stdout + done.stderr[-3000:]
    s = summary(out)
    assert s["executions"] == 10 and s["aborted"] == "", s
    assert s["reference"].startswith("C++ ")
    for f in s["findings"]:
        assert Path(f["file"]).is_file()


# ---- bad flags: one line, exit 2 ----------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (("--self", "--seconds", "5", "--runs", "5"), ("exactly one of",)),
    (("--self",), ("exactly one of",)),
    (("--self", "--cpp", "/bin/true", "--runs", "1"), ("exclude each other",)),
])
def test_bad_flags(tmp_path, args, words):
    one_error_line(run_diff("fuzz", *args, "--out", str(tmp_path)), *words)


def test_cpp_binary_not_executable(tmp_path):
    binary = tmp_path / "dilithion-node"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    one_error_line(run_diff("fuzz", "--cpp", str(binary), "--runs", "1", "--out",
                            str(tmp_path / "out")), "not executable")
    assert not (tmp_path / "out").exists()


# ---- the mutators -------------------------------------------------------------------------
def test_inputs_are_the_same_for_a_seed_and_differ_between_seeds(seeds):
    first = [InputGenerator(seeds, 7).input(i) for i in range(60)]
    again = [InputGenerator(seeds, 7).input(i) for i in range(60)]
    other = [InputGenerator(seeds, 8).input(i) for i in range(60)]
    assert first == again
    assert first != other
    for steps in first:
        assert 1 <= len(steps) <= 4
        assert steps[0].new_connection and not any(s.new_connection for s in steps[1:])
        assert all(s.name.startswith("fuzz 7:") for s in steps)


def _frame(step: Step) -> tuple:
    return step.command, step.payload, step.checksum, step.size, step.magic, step.params


def _mutators(seeds):
    return [MessageMutator(seeds.hashes, [b.payload for b in seeds.blocks]), CountMutator(),
            FrameMutator(), ByteMutator(), RpcMutator(seeds.hashes)]


def test_every_mutator_changes_what_it_is_given(seeds):
    made = {}
    for mutator in _mutators(seeds):
        for k, step in enumerate(seeds.sends + seeds.rpcs + seeds.blocks):
            for r in range(4):
                out = mutator(random.Random(f"{k}:{r}"), step)
                if out is None:
                    continue
                assert _frame(out) != _frame(step), (mutator.name, step.name)
                assert out.name.startswith(step.name + "; ")
                made[mutator.name] = made.get(mutator.name, 0) + 1
    assert set(made) == {"structure", "count", "frame", "bytes", "rpc"}, made
    assert min(made.values()) >= 20, made


def test_mutators_are_deterministic_for_a_seed(seeds):
    for mutator in _mutators(seeds):
        for k, step in enumerate(seeds.sends[:20] + seeds.rpcs[:5]):
            a = mutator(random.Random(k), step)
            b = mutator(random.Random(k), step)
            assert (a is None and b is None) or _frame(a) == _frame(b)


def test_structure_mutations_keep_the_message_decodable(seeds):
    mutator = MessageMutator(seeds.hashes, [b.payload for b in seeds.blocks])
    commands, bodies = set(), 0
    for k, step in enumerate(seeds.sends + seeds.blocks):
        for r in range(6):
            out = mutator(random.Random(f"{k}:{r}"), step)
            if out is None:
                continue
            commands.add(out.command)
            assert out.command == step.command
            if OVER in out.name:
                with pytest.raises(ValueError):
                    decode_payload(out.command, out.payload)
            else:
                decode_payload(out.command, out.payload)          # no ValueError
            if "block.body" in out.name:                          # the header (and its PoW) kept
                assert out.payload[:80] == step.payload[:80]
                bodies += 1
    assert {"version", "ping", "pong", "addr", "inv", "getdata", "getblocks", "block"} <= commands
    assert bodies >= 10


def test_count_mutator_changes_the_count_at_its_offset(seeds):
    step = next(s for s in seeds.sends if s.command == "inv" and len(s.payload) == 37)
    seen = set()
    for r in range(40):
        out = CountMutator()(random.Random(r), step)
        if out is not None:
            seen.add(read_compact(out.payload, 0)[0] if out.payload[0] != 0xFF or "non-canonical"
                     not in out.name else "non-canonical")
            assert out.payload[-36:] == step.payload[-36:]
    assert "non-canonical" in seen and len(seen) >= 5


def test_block_names_register_every_block_sent(seeds):
    names = BlockNames(ChainParams.testnet())
    block = seeds.base[0]
    assert len(names.names) == 1                                   # the genesis
    h = names.register_block(block.payload)
    assert len(h) == 32 and len(names.names) == 2
    assert names.register_block(block.payload + b"\1") == h          # the header decides
    assert names.register_block(b"\0" * 10) is None and len(names.names) == 2
    full = [v for v in names.names.values() if v.startswith(tuple(names.names))]
    assert len(full) == 2 and all(len(v) == 64 for v in full)


# ---- corpus files the fuzzer writes -------------------------------------------------------
def test_step_json_round_trips_through_the_corpus_parser():
    steps = [Step(1, "a", "send", command="block\0x", payload=b"\1\2", checksum=b"\0" * 4,
                  size=7, magic=0xD1714102, new_connection=True),
             Step(2, "b", "rpc", method="getblockhash", params={"height": -1}),
             Step(3, "c", "send", command="ping", payload=b"")]
    parsed = parse_corpus({"steps": [step_json(s) for s in steps]}, "t").steps
    assert parsed == steps
    assert [step_signature(s) for s in parsed] == ["send block\0x", "rpc getblockhash",
                                                  "send ping"]


def test_every_generated_input_can_be_written_as_a_corpus_and_read_back(seeds):
    """A finding is replayed from its corpus file, so every input the generator makes must
    fit the corpus format (the hour run wrote 'pingpingping' + NUL + 'x', 14 characters,
    which the 12-byte command field cannot carry and the corpus loader refuses)."""
    def round_trip(steps: list[Step], why) -> None:
        parsed = parse_corpus({"steps": [step_json(s) for s in steps]}, "t").steps
        assert [step_json(s) for s in parsed] == [step_json(s) for s in steps], why

    for seed in (1, 2024):
        generator = InputGenerator(seeds, seed)
        for i in range(400):
            round_trip(generator.input(i), (seed, i))
    twelve = Step(1, "a 12-character command", "send", command="pingpingping", payload=bytes(8))
    for step in seeds.sends + [twelve]:
        for r in range(60):
            out = FrameMutator()(random.Random(r), step)
            if out is not None:
                round_trip([out], (step.name, r))


def _result(cpp: dict, python: dict, differences=()) -> StepResult:
    outcome = ("differs (UNEXPLAINED)" if any(d["known"] is None for d in differences)
               else "same")
    return StepResult("fuzz", 1, "x", outcome, list(differences), {"cpp": cpp, "python": python})


def test_findings_from_step_results():
    step = Step(1, "x", "send", command="block")
    assert finding_of(_result({"tip": "a"}, {"tip": "a"}), step) is None
    assert finding_of(_result({}, {"process": "crashed"}), step) == Finding("crash", "python",
                                                                            "send block")
    # Both crashed: no difference, still a finding.
    assert finding_of(_result({"process": "crashed"}, {"process": "crashed"}), step).cls == "crash"
    assert finding_of(_result({"process": "hung"}, {}), step) == Finding("hang", "cpp",
                                                                         "send block")
    known = [{"kind": "wire", "subject": "wire.version.user_agent", "known": "net D-08"}]
    assert finding_of(_result({}, {}, known), step) is None
    odd = [{"kind": "ban", "subject": "ban", "known": None}]
    assert finding_of(_result({}, {}, known + odd), step) == Finding("unexplained", "ban:ban",
                                                                     "send block")


# ---- the minimiser, on plain predicates ---------------------------------------------------
def test_ddmin_finds_the_two_items_that_matter():
    budget = Budget(1000, 60)
    assert ddmin(list(range(20)), lambda s: 3 in s and 17 in s, budget) == [3, 17]
    assert 0 < budget.used < 100


def test_the_budget_bounds_the_attempts_and_keeps_a_failing_input():
    calls = []

    def fails(s):
        calls.append(s)
        return 3 in s and 17 in s
    out = ddmin(list(range(20)), fails, Budget(5, 60))
    assert len(calls) == 5 and 3 in out and 17 in out
    clock = iter([0.0, 0.0, 100.0, 100.0, 100.0]).__next__
    # One attempt inside the 10 s, then the clock says 100 s: the half that failed is kept.
    assert shrink_bytes(b"abcdef", lambda d: True, Budget(100, 10, clock=clock)) == b"abc"


def test_shrink_bytes_reaches_a_one_minimal_payload():
    def fails(d: bytes) -> bool:
        return b"X" in d and len(d) >= 3
    out = shrink_bytes(b"abcdefghijXYklmnop", fails, Budget(1000, 60))
    assert fails(out) and len(out) == 3


def test_minimise_drops_steps_entries_and_bytes():
    inv = Step(2, "inv", "send", command="inv",
               payload=MsgInv([Inv(2, bytes([i]) * 32) for i in range(5)]).serialize())
    steps = [Step(1, "ping", "send", command="ping", payload=b"12345678"), inv,
             Step(3, "rpc", "rpc", method="getblockcount")]

    def fails(cand):
        try:
            return any(any(i.hash == bytes([3]) * 32 for i in decode_payload("inv", s.payload).inv)
                       for s in cand if s.command == "inv")
        except ValueError:
            return False
    out = minimise(steps, fails, Budget(500, 60))
    assert [s.name for s in out] == ["inv"]
    assert decode_payload("inv", out[0].payload).inv == [Inv(2, bytes([3]) * 32)]


def test_shrink_items_leaves_a_payload_with_trailing_bytes_alone():
    payload = MsgInv([Inv(2, bytes(32)), Inv(2, b"\1" * 32)]).serialize() + b"\0"
    step = Step(1, "inv", "send", command="inv", payload=payload)
    assert shrink_items(step, lambda s: True, Budget(10, 10)) is step


def test_wide_loopback_hosts_do_not_come_round_in_an_hour():
    hosts = WideLoopbackHosts()
    drawn = [hosts.next() for _ in range(100_000)]
    assert len(set(drawn)) == len(drawn)
    for host in drawn[:300] + drawn[-300:]:
        a, b, c, d = map(int, host.split("."))
        assert a == 127 and 1 <= b <= 254 and 0 <= c <= 255 and 1 <= d <= 254


def test_shrink_block_keeps_the_body_length_right(seeds):
    """A block with one byte after its vtx (what the trailing-bytes mutants trip on): the
    body shrinks to nothing, the header and the extra byte stay."""
    block = seeds.base[0]
    step = dataclasses.replace(block, payload=block.payload + b"\x07")

    def fails(s: Step) -> bool:
        try:
            b = Block.deserialize(s.payload, allow_trailing=True)
        except ValueError:
            return False
        return len(b.serialize()) < len(s.payload)
    out = minimise([step], lambda steps: fails(steps[0]), Budget(200, 60))
    assert out[0].payload == block.payload[:80] + b"\x00\x07"
