"""``dilithion-diff`` catches differences: mutants of our node (issue 24, item 2).

Each mutant (``tests/defects/diff_mutants.py``) is run as the Python side of
``dilithion-diff run --self --python-program "<python> tests/defective_node.py NAME"``
against the unmutated node, with the real catalogue (``docs/cpp-divergences.toml``),
as a developer runs the tool (its console script).  The run must exit 1 and
report the mutant's step as the *first* ``differs (UNEXPLAINED)`` step, with the
expected kind and subject among that step's unexplained differences
(:data:`defects.diff_mutants.CAUGHT_AT`).  The control runs the unmutated node
through the same command and corpus and must exit 0.

To keep the default suite quick each mutant gets a trimmed corpus: the built-in
main corpus's steps, selected by name, that lead to the mutated step, and the
step itself.  The slow tests run every mutant over the whole built-in main corpus.

Mutants that today's catalogue excuses through an entry broader than its
divergence are marked ``xfail(strict=True)`` with the entry's ID: the catalogue
slice narrows those entries, after which the mark comes off (docs/DIFF.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dilithion.tools.diff.catalogue import load_catalogue
from dilithion.tools.diff.cli import BUILTIN_CORPUS, CATALOGUE

from defects import defective_program
from defects.diff_mutants import CAUGHT_AT, Caught
from test_diff import corpus_file, mined, one_error_line, run_diff, vector_steps

#: The unmutated node, started the way a mutant is (a program given to --python-program).
UNMUTATED = [sys.executable, "-m", "dilithion.node.dilithion_node"]

VECTOR = [f"vector block {h} (C++-mined)" for h in range(1, 7)]
SIDE_TO_F8 = ["inv: side-branch block F6 (easiest nBits, time before parent)",
              "side-branch block F6 (less work: not the tip)",
              "inv: F7 (nTime 0xffffffff)", "side-branch block F7 (far-future time)", "inv: F8"]

#: The built-in steps each mutant's trimmed corpus runs before its own step.
LEADS_TO = {
    "tie-newcomer-wins": VECTOR + SIDE_TO_F8 + [CAUGHT_AT["no-reorganisation"].step,
                                                "inv: G8 (same work as F8)"],
    "no-reorganisation": VECTOR + SIDE_TO_F8,
    "getdata-tip-notfound": VECTOR,
    "getdata-serves-parent": VECTOR,
    "disconnect-on-getaddr": [],
    "disconnect-on-duplicate-block": VECTOR,
    "getblockhash-negative-misc-error": [],
    "getblockhash-refuses-height-1": VECTOR[:1],
    "index-record-ntx-byte": VECTOR[:1],
    "bestblock-one-byte": VECTOR[:1],
}


#: Mutants the catalogue explains (wrongly), each with the entry that excuses it: none since
#: the catalogue was narrowed (ccd0f61); on the catalogue of 1a70b6a there were five.
EXCUSED_TODAY: dict = {}

#: Mutants whose trimmed run is in the default suite: one of each kind the issue lists,
#: and the two cheapest of our own (the rest: -m slow).
QUICK = {"tie-newcomer-wins", "getdata-serves-parent", "disconnect-on-getaddr",
         "getblockhash-negative-misc-error", "index-record-ntx-byte",
         "getblockhash-refuses-height-1", "bestblock-one-byte"}


def mutant_params(quick_only_in_default: bool) -> list:
    params = []
    for name in CAUGHT_AT:
        marks = [EXCUSED_TODAY[name]] if name in EXCUSED_TODAY else []
        if quick_only_in_default and name not in QUICK:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def trimmed_corpus(tmp_path: Path, names: list[str]) -> Path:
    """A corpus file of the built-in main corpus's steps with these names, in its order."""
    steps = json.loads(BUILTIN_CORPUS.read_text())["steps"]
    chosen = [s for s in steps if s["name"] in names]
    missing = set(names) - {s["name"] for s in chosen}
    assert not missing, f"no built-in step named {sorted(missing)}"
    path = tmp_path / "trimmed.json"
    path.write_text(json.dumps({"network": "testnet", "steps": chosen}))
    return path


def run_self(tmp_path: Path, program: list[str], corpus: Path, *extra: str):
    """``dilithion-diff run --self`` with ``program`` as our side; (exit status, report)."""
    out = tmp_path / "out"
    done = run_diff("run", "--self", "--python-program", " ".join(program),
                    "--corpus", str(corpus), "--out", str(out), *extra)
    assert "Traceback" not in done.stderr, done.stderr
    report = out / "report.json"
    assert report.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(report.read_text())


def unexplained(step: dict) -> list[dict]:
    return [{"kind": d["kind"], "subject": d["subject"]}
            for d in step["differences"] if d["known"] is None]


def assert_caught(code: int, report: dict, caught: Caught) -> None:
    """Exit 1, and the first UNEXPLAINED step is the mutant's, with its difference."""
    at_step = [(s["outcome"], [(d["kind"], d["subject"], d["known"]) for d in s["differences"]])
               for s in report["steps"] if s["name"] == caught.step]
    first = next((s for s in report["steps"] if s["outcome"] == "differs (UNEXPLAINED)"), None)
    why = f"first UNEXPLAINED step: {first and first['name']!r}; at {caught.step!r}: {at_step}"
    assert code == 1, why
    assert first is not None and first["name"] == caught.step, why
    assert {"kind": caught.kind, "subject": caught.subject} in unexplained(first), why


# ---- each mutant, caught at its step ----------------------------------------------------
def test_every_mutant_has_a_trimmed_corpus_and_a_defect():
    assert set(LEADS_TO) == set(CAUGHT_AT) and set(QUICK) <= set(CAUGHT_AT)
    assert set(EXCUSED_TODAY) <= set(CAUGHT_AT)
    builtin = {s["name"] for s in json.loads(BUILTIN_CORPUS.read_text())["steps"]}
    for name, caught in CAUGHT_AT.items():
        assert defective_program(name)[-1] == name
        assert caught.step in builtin and set(LEADS_TO[name]) <= builtin, name


@pytest.mark.parametrize("mutant", mutant_params(quick_only_in_default=True))
def test_mutant_is_caught_unexplained_at_its_step(tmp_path, mutant):
    caught = CAUGHT_AT[mutant]
    corpus = trimmed_corpus(tmp_path, corpus_steps(mutant))
    assert_caught(*run_self(tmp_path, defective_program(mutant), corpus), caught)


@pytest.mark.slow
@pytest.mark.parametrize("mutant", sorted(CAUGHT_AT))
def test_every_mutant_is_seen_with_no_catalogue(tmp_path, mutant):
    """The harness itself observes every mutant: with --no-catalogue each is UNEXPLAINED
    at its step, so a mutant the catalogue excuses is hidden by an entry, not missed."""
    corpus = trimmed_corpus(tmp_path, corpus_steps(mutant))
    assert_caught(*run_self(tmp_path, defective_program(mutant), corpus, "--no-catalogue"),
                  CAUGHT_AT[mutant])


def corpus_steps(mutant: str) -> list[str]:
    return LEADS_TO[mutant] + [CAUGHT_AT[mutant].step]


def control_params() -> list:
    """Every mutant's trimmed corpus once (slow), and all of them as one corpus (default)."""
    every = sorted({tuple(corpus_steps(n)) for n in CAUGHT_AT})
    union = {name for steps in every for name in steps}
    return ([pytest.param(sorted(union), id="all-trimmed-steps")]
            + [pytest.param(list(steps), marks=pytest.mark.slow, id=steps[-1]) for steps in every])


@pytest.mark.parametrize("steps", control_params())
def test_control_the_unmutated_node_through_the_same_command_finds_nothing(tmp_path, steps):
    """Also: without --catalogue, --self loads the real catalogue (before issue 24 it emptied
    it): the report names it and lists its exercised entries this run did not need."""
    code, report = run_self(tmp_path, UNMUTATED, trimmed_corpus(tmp_path, steps))
    assert code == 0, [(s["name"], s["outcome"]) for s in report["steps"]]
    assert report["counts"]["unexplained"] == 0
    assert report["catalogue"] == str(CATALOGUE)
    exercised = [e.id for e in load_catalogue(CATALOGUE).entries if e.exercised]
    assert exercised and report["exercised_entries_not_matched"] == exercised


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mutant", mutant_params(quick_only_in_default=False))
def test_mutant_is_caught_over_the_full_builtin_main_corpus(tmp_path, mutant):
    assert_caught(*run_self(tmp_path, defective_program(mutant), BUILTIN_CORPUS),
                  CAUGHT_AT[mutant])


# ---- --self takes the catalogue it is given; --no-catalogue explains nothing ----------------
def _strict_f6_corpus(tmp_path: Path, cpp_chain) -> Path:
    """V1..V5 and F6: the reference side under --strict refuses F6, the other takes it."""
    return corpus_file(tmp_path, vector_steps(cpp_chain, range(1, 6))
                       + [{"name": "F6", "send": "block", "payload_hex": mined("F6")}])


def test_self_explains_differences_through_the_catalogue_it_is_given(tmp_path, cpp_chain):
    """The strict side refuses F6 (tip, height), disconnects its sender and ends without
    it (storage): a made-up catalogue entry explains exactly those, and the run passes."""
    catalogue = tmp_path / "made-up.toml"
    matchers = [("send block", "consensus", "tip|height"), ("send block", "disconnect", "disconnect"),
                ("restart", "storage", r"storage\.(b|i)\.only-python|storage\.bestblock\.value")]
    catalogue.write_text('[[divergence]]\nid = "made-up F6"\nreason = "the test\'s own"\n'
                         'exercised = true\n' + "".join(
                             f"\n[[divergence.match]]\non = '{on}'\nkind = '{k}'\nsubject = '{s}'\n"
                             "cpp = '.*'\npython = '.*'\n" for on, k, s in matchers)
                         + "\n[[divergence.case]]\non = 'send block'\nkind = 'disconnect'\n"
                           "subject = 'disconnect'\ncpp = 'true'\npython = 'false'\n")
    out = tmp_path / "out"
    done = run_diff("run", "--self", "--self-args=--strict", "--catalogue", str(catalogue),
                    "--corpus", str(_strict_f6_corpus(tmp_path, cpp_chain)), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    f6 = next(s for s in report["steps"] if s["name"] == "F6")
    assert f6["outcome"] == "differs (known: made-up F6)"
    assert report["catalogue"] == str(catalogue)


def test_self_with_no_catalogue_explains_nothing(tmp_path, cpp_chain):
    """The difference the catalogue above explains is UNEXPLAINED, and no entry was loaded
    (the real catalogue's exercised entries would all be listed as not matched)."""
    out = tmp_path / "out"
    done = run_diff("run", "--self", "--self-args=--strict", "--no-catalogue",
                    "--corpus", str(_strict_f6_corpus(tmp_path, cpp_chain)), "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    f6 = next(s for s in report["steps"] if s["name"] == "F6")
    assert f6["outcome"] == "differs (UNEXPLAINED)"
    assert report["catalogue"] == "none (--no-catalogue)"
    assert report["catalogue_entries_matched"] == report["exercised_entries_not_matched"] == []


def test_catalogue_and_no_catalogue_together_is_one_line_error(tmp_path):
    one_error_line(run_diff("run", "--self", "--no-catalogue", "--catalogue", str(CATALOGUE),
                            "--out", str(tmp_path)), "--no-catalogue")


def test_docs_table_lists_every_mutant_where_it_is_caught_and_the_score():
    """docs/DIFF.md's mutant table and score say what the tests assert: one row per mutant
    with its step and difference, 'xfail' exactly for the mutants excused today."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "DIFF.md").read_text()
    section = text.split("## The harness catches differences: mutants", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| `")]
    by_name = {r[0].strip("`"): r for r in rows}
    assert len(rows) == len(by_name) and set(by_name) == set(CAUGHT_AT)
    for name, row in by_name.items():
        caught = CAUGHT_AT[name]
        assert row[2] == caught.step and row[3] == f"{caught.kind} / `{caught.subject}`", row
        assert ("xfail" in row[5]) == (name in EXCUSED_TODAY), row
    caught_now = len(CAUGHT_AT) - len(EXCUSED_TODAY)
    assert f"{caught_now} of {len(CAUGHT_AT)} caught" in section
