"""Figures computed from raw lab measurements: percentiles, block summaries,
CPU windows and leak slopes.  Pure functions, unit-tested on recorded data."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["percentile", "block_summary", "leak_slopes", "criterion"]

#: A leak verdict needs at least this much sampled time after the warm-up.
MIN_LEAK_WINDOW_S = 300.0


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


def leak_slopes(samples: list[dict], warmup_fraction: float = 0.2) -> dict:
    """Per node, the least-squares slope per hour of RSS (MB), descriptors and
    threads over the samples after the warm-up; ``window_s`` says how long."""
    out: dict[str, dict] = {}
    for node in sorted({s["node"] for s in samples}):
        rows = [s for s in samples if s["node"] == node]
        if len(rows) < 3:
            continue
        rows = rows[int(len(rows) * warmup_fraction):]
        t = np.array([r["t"] for r in rows]) - rows[0]["t"]
        window = float(t[-1]) if len(t) else 0.0
        slopes = {"window_s": round(window, 1), "samples": len(rows)}
        for key, scale, name in (("rss", 1 / 2**20, "rss_mb_per_h"), ("fds", 1, "fds_per_h"),
                                 ("threads", 1, "threads_per_h")):
            y = np.array([r[key] for r in rows], dtype=float) * scale
            slope = float(np.polyfit(t, y, 1)[0]) * 3600 if window > 0 and len(rows) >= 2 else math.nan
            slopes[name] = round(slope, 3)
        cpu = [r["cpu_s"] for r in rows]
        slopes["cpu_pct_mean"] = round(100 * (cpu[-1] - cpu[0]) / window, 2) if window > 0 else None
        out[node] = slopes
    return out


def criterion(name: str, measured, threshold: str, passed: bool | None, unit: str = "") -> dict:
    """One pass criterion: ``passed`` None means not decidable from this run."""
    if isinstance(measured, float):
        measured = round(measured, 4)
    return {"name": name, "measured": measured, "threshold": threshold, "unit": unit,
            "verdict": "PASS" if passed else ("N/A" if passed is None else "FAIL")}
