"""The run's PNG plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["write_plots"]


def _cdf(ax, values: list[float], label: str, **style) -> None:
    if values:
        xs = sorted(values)
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label,
                **style)


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:      # nothing measured: no empty legend
        ax.legend(**kw)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, r: dict) -> None:
    title = f"{r['scenario']} ({r['verdict']})"
    blocks = r["blocks"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for node in r["nodes"]:
        _cdf(ax, [b["propagation_s"][node] for b in blocks if node in b["propagation_s"]], node)
    _cdf(ax, [b["to_all_s"] for b in blocks if b["to_all_s"] is not None], "to all nodes",
         color="black", linestyle="--", linewidth=2)
    ax.set(title=f"Propagation time CDF — {title}", xlabel="seconds after the miner connected it",
           ylabel="fraction of blocks", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    _legend(ax, loc="lower right")
    _save(fig, out / "propagation_cdf.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    hops = {n: [b["hops_s"][n] for b in blocks if n in b["hops_s"]] for n in r["parents"]}
    hops = {n: v for n, v in hops.items() if v}
    if hops:
        ax.boxplot(list(hops.values()), showfliers=True)
        ax.set_xticks(range(1, len(hops) + 1),
                      [f"{r['parents'][n]}→{n}" for n in hops])
    ax.set(title=f"Per-hop latency — {title}", xlabel="hop (upstream→node)",
           ylabel="seconds (connected here − connected upstream)")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, out / "hop_latency.png")

    samples = r["samples"]
    t0 = min((s["t"] for s in samples), default=0.0)
    fig, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    for node in r["nodes"]:
        rows = [s for s in samples if s["node"] == node]
        ts = [s["t"] - t0 for s in rows]
        for ax, key, scale in zip(axes, ("rss", "fds", "threads"), (1 / 2**20, 1, 1)):
            ax.plot(ts, [s[key] * scale for s in rows], marker=".", label=node)
    for ax, label in zip(axes, ("RSS (MB)", "open descriptors", "threads")):
        ax.set_ylabel(label)
        if label != "RSS (MB)":
            lo, hi = ax.get_ylim()
            if hi - lo < 4:                       # flat counts: whole-number ticks around them
                ax.set_ylim(math.floor(lo) - 1, math.ceil(hi) + 1)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Process resources — {title}")
    _legend(axes[0], loc="upper left", fontsize="small")
    axes[-1].set_xlabel("seconds since the first sample")
    _save(fig, out / "resources.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for node in r["nodes"]:
        rows = [s for s in samples if s["node"] == node and s["queue_depth"] is not None]
        ax.step([s["t"] - t0 for s in rows], [s["queue_depth"] for s in rows], where="post",
                label=node)
    ax.set(title=f"Broadcast queue depth — {title}", xlabel="seconds since the first sample",
           ylabel="tasks queued")
    ax.set_ylim(bottom=0, top=max([1] + [s["queue_depth"] * 1.1 for s in samples
                                          if s["queue_depth"] is not None]))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend(ax, loc="upper right", fontsize="small")
    _save(fig, out / "queue_depth.png")
