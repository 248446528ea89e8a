"""Run ``dilithion-node`` with one known defect, for the lab's gate tests.

Usage: ``python tests/defective_node.py DEFECT [dilithion-node arguments...]``.

Why: a gate that cannot FAIL proves nothing (issue 23, item 4).  For every
gate of ``dilithion-lab`` a test runs the gate's scenario on a node with a
defect the gate exists to catch and asserts FAIL, beside the run on the real
node that asserts PASS.  The defects live here, in the tests, and nowhere in
the shipped program: this script patches the node's classes in its own
process (the registry is :mod:`defects`), then runs the node's real ``main``
with the remaining arguments.  The lab starts it through
``run_scenario(..., node_program=defective_program("..."))``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from defects import apply_defect  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: defective_node.py DEFECT [dilithion-node arguments...]")
    name = sys.argv[1]
    apply_defect(name)
    from dilithion.node.dilithion_node import cli
    sys.argv = ["dilithion-node", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
