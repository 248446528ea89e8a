"""Reading lab results back: one folder (``results.json``) or a ``run all``
folder (one subfolder per scenario).  Every way a folder can be unusable —
missing, never finished (``run.json`` without ``results.json``), half-written,
interrupted — is a :class:`LabError` with one clear sentence."""
from __future__ import annotations

import json
from pathlib import Path

from dilithion.tools.lab.labnode import LabError

__all__ = ["load_results"]

REQUIRED = ("scenario", "status", "verdict", "summary", "criteria", "extra", "options")


def _load_one(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.exists():
        if (folder / "run.json").exists():
            raise LabError(f"{folder}: the run did not finish (run.json but no results.json;"
                           " killed midway?): run it again")
        raise LabError(f"{folder}: no results.json here")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise LabError(f"{path} is half-written or corrupt ({exc}): run it again") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
        raise LabError(f"{path} is not a dilithion-lab results file")
    if data["status"] == "interrupted":
        raise LabError(f"{folder}: the run was interrupted (Ctrl+C); its figures are partial:"
                       " run it again")
    if data["status"] != "finished":
        raise LabError(f"{folder}: the run ended with an error ({data.get('error')}): run it again")
    return data


def load_results(folders: list[Path]) -> dict[str, dict]:
    """Scenario name -> results, from every folder given (later folders win)."""
    found: dict[str, dict] = {}
    for folder in folders:
        if not folder.is_dir():
            raise LabError(f"{folder}: no such results folder")
        if (folder / "results.json").exists() or (folder / "run.json").exists():
            subs = [folder]
        else:
            subs = sorted(p for p in folder.iterdir() if p.is_dir()
                          and ((p / "results.json").exists() or (p / "run.json").exists()))
            if not subs:
                raise LabError(f"{folder}: no lab results here (no results.json in it or its"
                               " subfolders)")
        for sub in subs:
            data = _load_one(sub)
            found[data["scenario"]] = data
    return found
