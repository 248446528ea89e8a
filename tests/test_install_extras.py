"""The node's install carries only the node's dependencies; the lab's come as an extra.

``pip install -e .`` (the README's node command) installs ``install_requires``;
matplotlib, numpy, psutil and tqdm are the ``lab`` extra, which the ``test``
extra repeats so that the README's test command still sets up everything.
Checked here on ``setup.cfg`` and on real interpreters in which the lab's
packages cannot be imported (``sys.modules[name] = None`` makes an import of
``name`` fail as if it were not installed):

* every module of the package except the lab imports without them (the node,
  ``dilithion-cli`` and ``dilithion-diff`` work after ``pip install -e .``);
* ``dilithion-lab`` without them prints one ``error:`` line naming the extra
  and exits 2, instead of a traceback.
"""
from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dilithion.tools.lab.main import INSTALL_HINT, LAB_PACKAGES

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"

#: Runs ``module:function`` as the console script would, with the packages
#: named in argv[1] (comma-separated) made unimportable.
BLOCKED_RUN = (
    "import importlib, sys\n"
    "for name in filter(None, sys.argv[1].split(',')):\n"
    "    sys.modules[name] = None\n"
    "module, function = sys.argv[2].split(':')\n"
    "sys.argv = [sys.argv[2], *sys.argv[3:]]\n"
    "getattr(importlib.import_module(module), function)()\n")

#: Imports every module of ``dilithion`` outside the lab, with argv[1] blocked.
BLOCKED_IMPORT_ALL = (
    "import importlib, pkgutil, sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "import dilithion\n"
    "for info in pkgutil.walk_packages(dilithion.__path__, 'dilithion.'):\n"
    "    if not info.name.startswith('dilithion.tools.lab'):\n"
    "        importlib.import_module(info.name)\n"
    "print('imported')\n")


def _setup() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    return parser


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _project(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def _entry_point(script: str) -> str:
    for line in _lines(_setup()["options.entry_points"]["console_scripts"]):
        name, _, target = line.partition("=")
        if name.strip() == script:
            return target.strip()
    raise AssertionError(f"no console script {script} in setup.cfg")


def test_node_install_leaves_out_the_lab_packages_and_the_test_extra_has_them():
    cfg = _setup()
    node = {_project(r) for r in _lines(cfg["options"]["install_requires"])}
    extras = cfg["options.extras_require"]
    lab, test = _lines(extras["lab"]), _lines(extras["test"])
    assert not node & LAB_PACKAGES, f"lab packages in install_requires: {node & LAB_PACKAGES}"
    assert {_project(r) for r in lab} == LAB_PACKAGES
    assert set(lab) <= set(test), f"lab requirements missing from the test extra: " \
                                  f"{sorted(set(lab) - set(test))}"


def test_everything_but_the_lab_imports_without_the_lab_packages():
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT_ALL, ",".join(sorted(LAB_PACKAGES))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr


def _run_lab(blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, blocked,
                           _entry_point("dilithion-lab"), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("package", sorted(LAB_PACKAGES))
def test_lab_without_its_extra_says_what_to_install_in_one_line(package):
    out = _run_lab(package, "list")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert package in lines[0] and INSTALL_HINT in lines[0], lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_lab_with_its_extra_runs_through_the_same_entry_point():
    """The control for the test above: nothing blocked, the same wrapper lists the scenarios."""
    out = _run_lab("", "list")
    assert out.returncode == 0, out.stderr
    assert "line" in {row.split("\t")[0] for row in out.stdout.splitlines()}, out.stdout
