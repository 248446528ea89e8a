"""The fuzz findings kept as regression corpora (``dilithion/tools/diff/data/found/``).

Each file is a minimised input of the 1-hour ``dilithion-diff fuzz`` run against
the C++ node (docs/DIFF.md, "Fuzzing against the C++ node (1 hour)"), classified
in its README and explained by the catalogue entry named there:

* every file is an ordinary corpus, listed in the README with its catalogue ID;
* Python against Python, with no catalogue, nothing differs (the harness is
  deterministic on these inputs too); the cheapest files run by default, all
  of them with ``-m slow``;
* against the real C++ node (``DILITHION_CPP_NODE``) every difference of every
  file is explained, each file by the entry its README row names.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dilithion.tools.diff.catalogue import load_catalogue
from dilithion.tools.diff.cli import CATALOGUE
from dilithion.tools.diff.corpus import load_corpus

from test_diff import CPP_NODE, FOUND_ONLY, run_diff

FOUND = Path(__file__).resolve().parent.parent / "dilithion" / "tools" / "diff" / "data" / "found"
FINDINGS = sorted(FOUND.glob("*.json"))
#: The files whose Python-against-Python replay runs in the default suite, one of each
#: kind of step (a replay of one file costs some 6 s: two nodes, the base chain).
DEFAULT_SELF = ("inv-duplicate-items-requested-twice.json", "rpc-getrawtransaction-positional.json",
                "inv-bad-size-disconnect-no-reply.json", "block-vtx-count-4gib-cpp-hang.json",
                "getdata-of-a-stored-orphan.json")


def readme_rows() -> dict[str, list[str]]:
    """README table: file name -> the catalogue IDs its row names (``a; b`` for several)."""
    rows = {}
    for line in (FOUND / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1].startswith("`") and cells[1].endswith(".json`"):
            rows[cells[1].strip("`")] = [i.strip() for i in cells[3].split(";")]
    return rows


def test_every_finding_is_a_corpus_listed_in_the_readme_with_a_catalogue_id():
    assert len(FINDINGS) >= 15
    rows = readme_rows()
    assert sorted(rows) == [f.name for f in FINDINGS]
    ids = {e.id for e in load_catalogue(CATALOGUE).entries}
    for path in FINDINGS:
        corpus = load_corpus(path)
        assert corpus.steps[0].action == "fresh" and corpus.description, path.name
        assert set(rows[path.name]) <= ids, (path.name, rows[path.name])


def _self_run(tmp_path, files) -> dict:
    args = [a for f in files for a in ("--corpus", str(FOUND / f))]
    done = run_diff("run", "--self", "--no-catalogue", *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["known"] == 0 and report["counts"]["unexplained"] == 0
    played = {Path(s["corpus"]).name for s in report["steps"]}
    assert set(files) <= played
    return report


def test_the_cheapest_findings_replay_python_against_python_with_nothing_different(tmp_path):
    _self_run(tmp_path, DEFAULT_SELF)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_finding_replays_python_against_python_with_nothing_different(tmp_path):
    _self_run(tmp_path, [f.name for f in FINDINGS])


@pytest.mark.cpp
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not CPP_NODE or not os.access(CPP_NODE, os.X_OK),
                    reason="DILITHION_CPP_NODE does not name a built C++ dilithion-node binary")
def test_every_finding_against_the_cpp_node_is_explained_by_its_entry(tmp_path):
    args = [a for f in FINDINGS for a in ("--corpus", str(f))]
    done = run_diff("run", "--cpp", CPP_NODE, *args, "--out", str(tmp_path / "out"),
                    timeout=1400)
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert done.returncode == 0, report_md
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["unexplained"] == 0, report_md
    rows = readme_rows()
    expected = set(FOUND_ONLY)
    for path in FINDINGS:
        # The finding's own last step shows the divergence its README row names, and
        # nothing else.
        last = [s for s in report["steps"] if s["corpus"] == str(path)][-1]
        known = {d["known"] for d in last["differences"]}
        if re.search(r"hang", path.name) and not last["differences"]:
            expected -= set(rows[path.name])    # the C++ stall ended within the step timeout
            continue
        assert known and known <= set(rows[path.name]) | {"net D-08"}, (path.name, known)
    # The entries only the findings exercise were seen.
    assert expected <= set(report["catalogue_entries_matched"]), report_md
