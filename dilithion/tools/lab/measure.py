"""Figures computed from raw lab measurements: percentiles, block summaries and
criteria (the leak figures are in ``leaks.py``).  Pure functions, unit-tested
on recorded data."""
from __future__ import annotations

import numpy as np

__all__ = ["percentile", "block_summary", "criterion"]


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def block_summary(blocks: list[dict]) -> dict:
    """Blocks, success rate and to-all-nodes propagation statistics (seconds)."""
    to_all = [b["to_all_s"] for b in blocks if b["complete"] and b["to_all_s"] is not None]
    n = len(blocks)
    return {"blocks": n, "complete": sum(1 for b in blocks if b["complete"]),
            "success_rate": (sum(1 for b in blocks if b["complete"]) / n) if n else None,
            "p50_s": percentile(to_all, 50), "p95_s": percentile(to_all, 95),
            "max_s": max(to_all) if to_all else None,
            "mean_s": float(np.mean(to_all)) if to_all else None}


def criterion(name: str, measured, threshold: str, passed: bool | None, unit: str = "") -> dict:
    """One pass criterion: ``passed`` None means not decidable from this run."""
    if isinstance(measured, float):
        measured = round(measured, 4)
    return {"name": name, "measured": measured, "threshold": threshold, "unit": unit,
            "verdict": "PASS" if passed else ("N/A" if passed is None else "FAIL")}
