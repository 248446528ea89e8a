"""The ``dilithion-lab`` entry point: one clear line when the lab extra is missing.

The node's install (``pip install -e .``) leaves out what only the lab uses
(matplotlib, numpy, psutil, tqdm: the ``lab`` extra of ``setup.cfg``).  Without
them the lab's modules cannot be imported; instead of that traceback the
command prints one ``error:`` line saying what to install and exits 2, the
lab's code for a problem with the environment (:mod:`.cli`).
"""
from __future__ import annotations

import sys

import click

__all__ = ["LAB_PACKAGES", "INSTALL_HINT", "main"]

#: Top-level packages the lab imports that the node's install does not bring.
LAB_PACKAGES = frozenset({"matplotlib", "numpy", "psutil", "tqdm"})
#: What to run to get them (from the repository's root).
INSTALL_HINT = "pip install -e '.[lab]'"


def main() -> None:
    """Run :func:`dilithion.tools.lab.cli.cli`, or say which extra is missing."""
    try:
        from dilithion.tools.lab.cli import cli
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if package not in LAB_PACKAGES:
            raise
        click.echo(f"error: dilithion-lab needs {package}, which is not installed: "
                   f"install the lab extra: {INSTALL_HINT}", err=True)
        sys.exit(2)
    cli()
