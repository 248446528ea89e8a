"""The registry of known defects a test can run a node with (``tests/defective_node.py``).

Each defect is one function that patches the node's code in the node's own
process (never the shipped program), registered under a name with
:func:`defect`; :func:`defective_program` is the command line a lab run takes
as ``node_program``.  The defects are grouped by what they break, one module
each (imported below so that they register).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

__all__ = ["DEFECTS", "defect", "apply_defect", "defective_program"]

#: name -> (what it breaks, the patch).
DEFECTS: dict[str, tuple[str, Callable[[], None]]] = {}

SCRIPT = Path(__file__).resolve().parent.parent / "defective_node.py"


def defect(name: str, what: str):
    """Register the decorated patch function as defect ``name``."""
    def wrap(func: Callable[[], None]) -> Callable[[], None]:
        if name in DEFECTS:
            raise ValueError(f"defect {name!r} registered twice")
        DEFECTS[name] = (what, func)
        return func
    return wrap


def apply_defect(name: str) -> None:
    if name not in DEFECTS:
        raise SystemExit(f"unknown defect {name!r} (known: {', '.join(sorted(DEFECTS))})")
    DEFECTS[name][1]()


def defective_program(name: str) -> list[str]:
    """The command that runs the node with defect ``name`` (``node_program`` of a lab run)."""
    if name not in DEFECTS:
        raise KeyError(name)
    return [sys.executable, str(SCRIPT), name]


from defects import relay  # noqa: E402,F401 - registers
from defects import broadcast, leak, metrics, sync, transport  # noqa: E402,F401 - registers (defects slice)
from defects import faults  # noqa: E402,F401 - registers (the checklist's faults)
from defects import diff_mutants  # noqa: E402,F401 - registers (the dilithion-diff mutants)
from defects import diff_fuzz  # noqa: E402,F401 - registers (the fuzz slice: dilithion-diff fuzz)
