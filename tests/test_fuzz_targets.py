"""The in-process fuzz targets (``dilithion.tools.fuzz``, issue 24 item 4).

For every target: its seed corpus runs clean on the node's own subject; a
deterministic short run (seed 0, a few hundred mutated inputs) finds nothing;
and each defect of ``tests/fuzz_defects.py`` (one plausible bug in the
subject) is reported with the property it breaks, so no target is a verdict
that cannot fail.  The command line is run as a process: its one-line errors
(exit 2), ``--list``, a clean run (exit 0) and a finding (exit 1, one line, the
failing input written and reproducible).
"""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from dilithion.tools.fuzz.engine import Mutator, check_input, run_loop
from dilithion.tools.fuzz.registry import TARGETS
from dilithion.tools.fuzz.seeds import block_payloads, vector_seeds_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_defects import DEFECTS  # noqa: E402

TESTS = Path(__file__).resolve().parent
#: The twelve C++ libFuzzer targets under src/test/fuzz/ at 0b7ac867.
CPP_TARGETS = {"fuzz_address", "fuzz_block", "fuzz_compactsize", "fuzz_difficulty", "fuzz_merkle",
               "fuzz_network_message", "fuzz_sha3", "fuzz_subsidy", "fuzz_template", "fuzz_transaction",
               "fuzz_tx_validation", "fuzz_utxo"}
#: Mutated inputs per target in the default suite (the UTXO target opens a LevelDB per input).
SHORT_RUN = {name: 300 for name in TARGETS} | {"utxo": 200}


def test_every_cpp_target_has_exactly_one_counterpart():
    assert {t.cpp_target for t in TARGETS.values()} == CPP_TARGETS
    assert len(TARGETS) == 12


def test_seeds_come_from_the_cpp_vectors_and_the_mined_blocks():
    """Missing vectors are a failure, not fewer seeds: the corpora are built from them."""
    assert vector_seeds_available(), "shared/vectors is missing beside the repository"
    payloads = block_payloads()
    assert len(payloads) > 7, "the C++ chain V0..V6 and the mined blocks"
    assert payloads[1] in TARGETS["block"].seeds()
    raw_block_message = TARGETS["network_message"].seeds()[1]
    assert raw_block_message[4:9] == b"block" and raw_block_message[24:] == payloads[1]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seed_corpus_runs_clean(name):
    target = TARGETS[name]
    seeds = target.seeds()
    assert len(seeds) >= 4, f"{name} has {len(seeds)} seeds"
    result = run_loop(name, target.run, seeds, seed=0)
    assert result.finding is None, result.finding.line(None)
    assert result.executions == len(seeds)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_deterministic_run_finds_nothing(name):
    target = TARGETS[name]
    seeds = target.seeds()
    result = run_loop(name, target.run, seeds, seed=0, runs=len(seeds) + SHORT_RUN[name])
    assert result.finding is None, result.finding.line(None)
    assert result.executions == len(seeds) + SHORT_RUN[name]


@pytest.mark.parametrize("what", sorted(DEFECTS))
def test_a_defective_subject_breaks_the_named_property(what):
    defect = DEFECTS[what]
    seeds = TARGETS[defect.target].seeds()
    result = run_loop(defect.target, defect.run, seeds, seed=0, runs=len(seeds) + SHORT_RUN[defect.target])
    assert result.finding is not None, f"{what}: nothing found in {result.executions} inputs"
    assert (result.finding.target, result.finding.prop) == (defect.target, defect.prop), result.finding.line(None)
    again = check_input(defect.target, defect.run, result.finding.data)
    assert again is not None and again.prop == defect.prop, "the finding reproduces from its bytes"


def test_every_target_has_a_defect():
    assert {d.target for d in DEFECTS.values()} == set(TARGETS)


def test_the_mutation_loop_alone_finds_what_no_seed_shows():
    """One harmless seed; only mutations (a truncation to nothing) reach the defect."""
    defect = DEFECTS["compactsize-decode-indexes-empty-input"]
    assert check_input("compactsize", defect.run, b"\x05") is None
    result = run_loop("compactsize", defect.run, [b"\x05"], seed=0, runs=500)
    assert result.finding is not None and result.finding.prop == defect.prop
    assert result.executions > 1


def test_the_mutation_loop_is_deterministic_for_a_seed():
    corpus = TARGETS["transaction"].seeds()[:5]
    one, two, other = Mutator(random.Random(7), corpus), Mutator(random.Random(7), corpus), \
        Mutator(random.Random(8), corpus)
    first = [one.next_input() for _ in range(50)]
    assert first == [two.next_input() for _ in range(50)]
    assert first != [other.next_input() for _ in range(50)]


# -- the command line -------------------------------------------------------------

def _fuzz(*args: str, cwd: Path | None = None, defect: str | None = None) -> subprocess.CompletedProcess:
    program = [sys.executable, str(TESTS / "defective_fuzz.py"), defect] if defect else \
        [sys.executable, "-m", "dilithion.tools.fuzz"]
    return subprocess.run([*program, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _one_error_line(out: subprocess.CompletedProcess, words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dilithion-fuzz: error: "), out.stderr
    assert words in lines[0] and "Traceback" not in out.stderr and out.stdout == ""


def test_cli_lists_the_twelve_targets():
    out = _fuzz("--list")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert {row[0] for row in rows} == set(TARGETS) and {row[1] for row in rows} == CPP_TARGETS


@pytest.mark.parametrize("args, words", [
    (("no_such_target",), "unknown fuzz target 'no_such_target'"),
    (("sha3", "--runs", "10", "--seconds", "1"), "not both"),
    (("sha3", "--runs", "0"), "must be positive"),
    (("sha3", "--runs", "many"), "'many' is not a valid integer"),
    (("sha3", "--corpus", "/nonexistent/corpus"), "is not a directory"),
    ((), "name a TARGET"),
])
def test_cli_bad_usage_is_one_line_and_exit_2(args, words):
    _one_error_line(_fuzz(*args), words)


#: Runs the command with ``atheris`` made unimportable (as on an install without the ``fuzz`` extra).
WITHOUT_ATHERIS = ("import sys\n"
                   "sys.modules['atheris'] = None\n"
                   "sys.argv = ['dilithion-fuzz', *sys.argv[1:]]\n"
                   "from dilithion.tools.fuzz.cli import main\n"
                   "main()\n")


def test_cli_without_atheris_auto_runs_the_loop_and_atheris_is_one_line_exit_2():
    auto = subprocess.run([sys.executable, "-c", WITHOUT_ATHERIS, "subsidy", "--runs", "100"],
                          capture_output=True, text=True, timeout=120)
    assert auto.returncode == 0 and "engine loop" in auto.stdout, (auto.stdout, auto.stderr)
    asked = subprocess.run([sys.executable, "-c", WITHOUT_ATHERIS, "subsidy", "--engine", "atheris"],
                           capture_output=True, text=True, timeout=120)
    _one_error_line(asked, "atheris is not installed")


def test_cli_clean_loop_run(tmp_path):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "one").write_bytes(b"\xfd\x00\x01")
    out = _fuzz("compactsize", "--engine", "loop", "--runs", "400", "--corpus", str(tmp_path / "extra"),
                "--out", str(tmp_path / "found"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok compactsize: 400 executions") and "243 seeds" in out.stdout, out.stdout
    assert not (tmp_path / "found").exists()


def test_cli_finding_is_one_line_exit_1_and_the_input_is_written(tmp_path):
    defect = DEFECTS["subsidy-one-halving-early"]
    out = _fuzz("subsidy", "--engine", "loop", "--runs", "200", "--out", str(tmp_path), defect=defect.what)
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    assert lines[0].startswith(f"FAIL subsidy: property '{defect.prop}' broken"), lines[0]
    path = Path(lines[0].rsplit(" input: ", 1)[1])
    assert path.parent == tmp_path and path.is_file()
    assert check_input("subsidy", defect.run, path.read_bytes()).prop == defect.prop
    assert check_input("subsidy", TARGETS["subsidy"].run, path.read_bytes()) is None


@pytest.mark.slow
def test_atheris_finds_a_defect_and_writes_it(tmp_path):
    pytest.importorskip("atheris")
    defect = DEFECTS["merkle-without-duplicate-check"]
    out = _fuzz("merkle", "--engine", "atheris", "--runs", "5000", "--out", str(tmp_path), defect=defect.what)
    assert out.returncode == 1, (out.stdout, out.stderr[-2000:])
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"FAIL merkle: property '{defect.prop}' broken") and " input: " in line


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_long_atheris_run_finds_nothing(name, tmp_path):
    pytest.importorskip("atheris")
    out = subprocess.run([sys.executable, "-m", "dilithion.tools.fuzz", name, "--engine", "atheris",
                          "--seconds", "10", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout, out.stderr[-3000:])
    assert "Done " in out.stderr and "FAIL" not in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_long_loop_run_finds_nothing(name):
    target = TARGETS[name]
    result = run_loop(name, target.run, target.seeds(), seed=1, runs=20_000 if name != "utxo" else 2_000)
    assert result.finding is None, result.finding.line(None)
