"""``dilithion-diff`` (docs/DIFF.md): its own check, a caught difference, bad input, and the C++ run.

The tool is run as a process (its console script), the way developers run it:
exit status, the one-line errors and the reports are what is checked.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dilithion.tools.diff.catalogue import check_markdown, load_catalogue
from dilithion.tools.diff.cli import BUILTIN_CORPUS, BUILTIN_DEPTH_CORPUS, CATALOGUE
from dilithion.tools.diff.corpus import CorpusError, load_corpus
from dilithion.testing.testnet_blocks import MINED_FILE

DIFF = Path(sys.executable).parent / "dilithion-diff"
FAKE_NODE = Path(__file__).parent / "data" / "fake_cpp_node.py"
CPP_NODE = os.environ.get("DILITHION_CPP_NODE", "")
#: Exercised catalogue entries only the committed fuzz findings make the C++ node show
#: (dilithion/tools/diff/data/found/; tests/test_diff_found.py holds them to it).
FOUND_ONLY = frozenset({"net 3.7", "net D-09"})


def run_diff(*args: str, env: dict | None = None, timeout: float = 600):
    return subprocess.run([str(DIFF), *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else dict(os.environ))


def one_error_line(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def corpus_file(tmp_path: Path, steps: list, name: str = "corpus.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"network": "testnet", "steps": steps}))
    return path


def mined(name: str) -> str:
    return json.loads(MINED_FILE.read_text())[name]


def vector_steps(cpp_chain, heights) -> list[dict]:
    return [{"name": f"V{h}", "send": "block",
             "payload_hex": cpp_chain["blocks"][h]["block_message_payload_hex"]} for h in heights]


# ---- the harness's own checks (default suite) -----------------------------------
def test_self_run_of_the_builtin_corpus_finds_nothing(tmp_path):
    done = run_diff("run", "--self", "--no-catalogue", "--corpus", str(BUILTIN_CORPUS),
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["known"] == 0 and report["counts"]["unexplained"] == 0
    steps = report["steps"]
    assert len(steps) == len(load_corpus(BUILTIN_CORPUS).steps) + 1     # + the handshake step
    assert all(s["outcome"] == "same" for s in steps)
    # It really drove the nodes: the reorganisation and the tie left both on F8 at height 8.
    reorg = next(s for s in steps if s["name"].startswith("block G8"))
    assert reorg["observations"]["python"]["height"] == 8
    assert "same" in (tmp_path / "out" / "report.md").read_text()


def test_an_injected_difference_is_caught_as_unexplained(tmp_path, cpp_chain):
    """The reference side runs --strict: the easy-bits side block F6 (time before its
    parent) is refused there and becomes the tip of the default node."""
    corpus = corpus_file(tmp_path, vector_steps(cpp_chain, range(1, 6))
                         + [{"name": "F6", "send": "block", "payload_hex": mined("F6")}])
    done = run_diff("run", "--self", "--self-args=--strict", "--corpus", str(corpus),
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    f6 = next(s for s in report["steps"] if s["name"] == "F6")
    assert f6["outcome"] == "differs (UNEXPLAINED)"
    assert {"kind": "consensus", "subject": "height"} in [
        {"kind": d["kind"], "subject": d["subject"]} for d in f6["differences"]]
    assert report["counts"]["unexplained"] >= 1
    assert "## Unexplained differences" in (tmp_path / "out" / "report.md").read_text()


def test_a_fresh_step_restarts_both_nodes_on_empty_datadirs(tmp_path, cpp_chain):
    """``fresh``: both nodes start again from the genesis (the old state is not compared)."""
    corpus = corpus_file(tmp_path, vector_steps(cpp_chain, (1, 2))
                         + [{"name": "fresh", "fresh": True}] + vector_steps(cpp_chain, (1,)))
    done = run_diff("run", "--self", "--corpus", str(corpus), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr
    steps = json.loads((tmp_path / "out" / "report.json").read_text())["steps"]
    assert [s["outcome"] for s in steps] == ["same"] * len(steps)
    fresh = next(s for s in steps if s["name"] == "fresh")
    assert "storage_keys" not in fresh["observations"]["python"]
    assert fresh["observations"]["python"]["height"] == 0          # a new, empty datadir
    assert steps[-2]["observations"]["python"]["height"] == 1      # V1 again, from the genesis


def test_catalogue_and_divergence_table_describe_the_same_rows():
    catalogue = load_catalogue(CATALOGUE)
    assert check_markdown(catalogue, (CATALOGUE.parent / "CPP-DIVERGENCES.md").read_text()) == []
    for entry in catalogue.entries:
        assert entry.exercised == bool(entry.matchers), entry.id


def test_check_markdown_names_a_missing_row():
    catalogue = load_catalogue(CATALOGUE)
    table = "| ID | C++ | Python |\n| --- | --- | --- |\n| net D-99 | a | b |\n"
    problems = check_markdown(catalogue, table)
    assert "row 'net D-99' has no catalogue entry" in problems
    assert "catalogue entry 'net D-08' has no row in the table" in problems


# ---- bad input: one line, non-zero exit, no traceback ------------------------------
def test_missing_cpp_binary(tmp_path):
    one_error_line(run_diff("run", "--cpp", str(tmp_path / "nope"), "--out", str(tmp_path)),
                   "no such file")


def test_cpp_binary_not_executable(tmp_path):
    binary = tmp_path / "dilithion-node"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    one_error_line(run_diff("run", "--cpp", str(binary), "--out", str(tmp_path)),
                   "not executable")


def test_no_cpp_binary_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DILITHION_CPP_NODE"}
    one_error_line(run_diff("run", "--out", str(tmp_path), env=env), "DILITHION_CPP_NODE")


def test_corpus_that_is_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": [')
    one_error_line(run_diff("run", "--self", "--corpus", str(bad), "--out", str(tmp_path)),
                   "not valid JSON", "bad.json")


@pytest.mark.parametrize("step, words", [
    ({"send": "block", "payload_hex": "zz"}, ("step 2", "'payload_hex'")),
    ({"send": "block", "sleep": 1}, ("step 2", "exactly one of")),
    ({"sleep": -1}, ("step 2", "'sleep'")),
    ({"rpc": "getblockcount", "params": 3}, ("step 2", "'params'")),
    ({"send": "ping", "checksum_hex": "00"}, ("step 2", "'checksum_hex'")),
    ({"send": "ping", "colour": "red"}, ("step 2", "'colour'")),
    ({"restart": True, "expect_same": ["tips"]}, ("step 2", "'expect_same'")),
    ({"send": "a-command-too-long"}, ("step 2", "'send'")),
])
def test_corpus_format_errors_name_the_step_and_field(tmp_path, step, words):
    corpus = corpus_file(tmp_path, [{"sleep": 0}, step])
    with pytest.raises(CorpusError) as err:
        load_corpus(corpus)
    for w in words:
        assert w in str(err.value)
    one_error_line(run_diff("run", "--self", "--corpus", str(corpus), "--out", str(tmp_path)),
                   *words)


def test_a_crashing_or_hanging_node_is_that_steps_outcome_and_the_run_goes_on(tmp_path, cpp_chain):
    fake = tmp_path / "fake-node"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_NODE} \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    corpus = corpus_file(tmp_path, [{"name": "crash", "send": "crash"},
                                    {"name": "hang", "send": "hang"},
                                    *vector_steps(cpp_chain, [1])])
    done = run_diff("run", "--cpp", str(fake), "--corpus", str(corpus), "--step-timeout", "3",
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    steps = {s["name"]: s for s in
             json.loads((tmp_path / "out" / "report.json").read_text())["steps"]}
    crash, hang = steps["crash"]["observations"]["cpp"], steps["hang"]["observations"]["cpp"]
    assert crash["process"] == "crashed" and "crashing on request" in crash["log_tail"]
    assert hang["process"] == "hung" and "hanging on request" in hang["log_tail"]
    assert steps["V1"]["observations"]["python"]["height"] == 1     # the run went on
    assert "V1" in steps and steps["V1"]["observations"]["cpp"]["height"] == 0
    assert "crashing on request" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_self_run_of_the_depth_limit_corpus_allows_100_and_refuses_101(tmp_path):
    """Python against Python over the 211 steps of the depth corpus: nothing differs,
    and the node really took the depth-100 reorganisation and refused depth 101."""
    done = run_diff("run", "--self", "--corpus", str(BUILTIN_DEPTH_CORPUS),
                    "--out", str(tmp_path / "out"), timeout=800)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = json.loads((tmp_path / "out" / "report.json").read_text())["steps"]
    assert all(s["outcome"] == "same" for s in steps)
    by_name = {s["name"].split(":")[0].split(" (")[0]: s["observations"]["python"] for s in steps}
    assert by_name["block A106"]["height"] == 106
    assert by_name["block B106"]["tip"] == by_name["block A106"]["tip"]        # a tie
    assert by_name["block B107"]["height"] == 107                              # depth 100
    assert by_name["block A108"]["tip"] == by_name["block B107"]["tip"]        # depth 101


# ---- against the real C++ node --------------------------------------------------
@pytest.mark.cpp
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not CPP_NODE or not os.access(CPP_NODE, os.X_OK),
                    reason="DILITHION_CPP_NODE does not name a built C++ dilithion-node binary")
def test_builtin_corpus_against_the_cpp_node_has_nothing_unexplained(tmp_path):
    done = run_diff("run", "--cpp", CPP_NODE, "--out", str(tmp_path / "out"), timeout=1100)
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert done.returncode == 0, report_md
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["unexplained"] == 0
    # Every entry the catalogue says the corpus exercises was really seen (those only
    # the fuzz findings exercise are held to it by tests/test_diff_found.py).
    assert set(report["exercised_entries_not_matched"]) <= FOUND_ONLY, report_md


# ---- the built-in corpus and the catalogue files ------------------------------------
def test_committed_builtin_corpora_are_what_builtin_py_writes(tmp_path, vectors_dir):
    """No drift: the committed corpora are the steps of builtin.py over the committed blocks."""
    from dilithion.tools.diff.builtin import write_builtin_corpora

    main, depth = tmp_path / "main.json", tmp_path / "depth.json"
    write_builtin_corpora(vectors_dir / "cpp-testnet-chain.json",
                          json.loads(MINED_FILE.read_text()), main, depth)
    assert json.loads(main.read_text()) == json.loads(BUILTIN_CORPUS.read_text())
    assert json.loads(depth.read_text()) == json.loads(BUILTIN_DEPTH_CORPUS.read_text())


def test_mine_corpus_without_the_vectors(tmp_path):
    one_error_line(run_diff("mine-corpus", "--vectors", str(tmp_path / "missing.json")),
                   "no such file")


def test_catalogue_that_is_not_toml(tmp_path):
    bad = tmp_path / "cat.toml"
    bad.write_text("[[divergence]\n")
    one_error_line(run_diff("run", "--self", "--catalogue", str(bad), "--out", str(tmp_path)),
                   "not valid TOML")
