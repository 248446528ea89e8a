"""Run ``python -m dilithion.tools.fuzz`` with one target's subject replaced by a defect.

Usage: ``python tests/defective_fuzz.py DEFECT [fuzz arguments...]`` (defects:
``tests/fuzz_defects.py``).  The target named by the defect runs the defective
subject; everything else is the real command line, so a test can check what
the command prints, writes and returns on a finding.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_defects import DEFECTS  # noqa: E402


def main() -> None:
    defect = DEFECTS[sys.argv[1]]
    from dilithion.tools.fuzz.registry import TARGETS
    TARGETS[defect.target] = dataclasses.replace(TARGETS[defect.target], run=defect.run)
    from dilithion.tools.fuzz.cli import main as fuzz_main
    sys.argv = ["dilithion-fuzz", *sys.argv[2:]]
    fuzz_main()


if __name__ == "__main__":
    main()
