"""``report.md``: the human summary of one run (tables), and the one-line-per-
scenario table shared with ``run all`` and the docs."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_report", "summary_table", "side_by_side_table", "fmt"]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _slope(leaks: dict, key: str) -> str:
    values = [v[key] for v in leaks.values() if key in v]
    return fmt(max(values)) if values else "–"


def summary_table(all_results: list[dict]) -> str:
    """Per scenario: blocks, p50/p95/max to all nodes, success rate, timeouts, leak slopes."""
    rows = ["| scenario | verdict | blocks | p50 s | p95 s | max s | success | send timeouts |"
            " RSS net MB/h | fds growth | threads growth |", "|" + " --- |" * 11]
    for r in all_results:
        s, lk = r["summary"], r.get("leaks") or {}
        rows.append(f"| {r['scenario']} | {r['verdict']} | {s['blocks']} | {fmt(s['p50_s'])} |"
                    f" {fmt(s['p95_s'])} | {fmt(s['max_s'])} | {fmt(s['success_rate'])} |"
                    f" {fmt(s['send_timeouts'])} | {_slope(lk, 'rss_net_mb_per_h')} |"
                    f" {_slope(lk, 'fds_growth')} | {_slope(lk, 'threads_growth')} |")
    return "\n".join(rows) + "\n"


def side_by_side_table(rows: list[dict]) -> str:
    """``mixed``: what each node received, Python and C++ side by side."""
    out = ["## Side by side (from the origin node)", "",
           "| node | kind | hops from origin | path | blocks received | p50 delay s | max delay s |"
           " blocks sent on |", "|" + " --- |" * 8]
    for x in rows:
        out.append(f"| {x['node']} | {x['kind']} | {x['hops']} | {x['path']} |"
                   f" {x['received']}/{x['blocks']} | {fmt(x['p50_s'])} | {fmt(x['max_s'])} |"
                   f" {fmt(x.get('sent_on'))} |")
    return "\n".join(out) + "\n"


def write_report(out: Path, r: dict) -> None:
    lines = [f"# dilithion-lab: {r['scenario']} — {r['verdict']}", "",
             f"Status: {r['status']}" + (f" ({r['error']})" if r.get("error") else ""),
             f"Options: `{r['options']}`, seed {r['seed']}, network {r['network']},"
             f" nodes {', '.join(r['nodes'])}", "", "## Criteria", "",
             "| criterion | measured | threshold | verdict |", "| --- | --- | --- | --- |"]
    for c in r["criteria"]:
        lines.append(f"| {c['name']} | {fmt(c['measured'])} {c['unit']} | {c['threshold']} |"
                     f" {c['verdict']} |")
    if r["extra"].get("side_by_side"):
        lines += ["", side_by_side_table(r["extra"]["side_by_side"]).rstrip("\n")]
    lines += ["", "## Propagation (mined here -> connected at every node)", "",
              summary_table([r]), "## Per node", "",
              "| node | send timeouts | socket errors | bytes sent | peers | RSS MB/h (raw) |"
              " RSS net MB/h (limit) | VMs added | fds growth | threads growth | mean CPU % |",
              "|" + " --- |" * 11]
    for node, c in sorted(r["counters"].items()):
        lk = r["leaks"].get(node, {})
        lines.append(f"| {node} | {fmt(c['send_timeouts'])} | {fmt(c['socket_errors'])} |"
                     f" {fmt(c['bytes_sent'])} | {fmt(c['peers'])} | {fmt(lk.get('rss_mb_per_h'))} |"
                     f" {fmt(lk.get('rss_net_mb_per_h'))} ({fmt(lk.get('rss_limit_mb_per_h'))}) |"
                     f" {fmt(lk.get('vms_added'))} | {fmt(lk.get('fds_growth'))} |"
                     f" {fmt(lk.get('threads_growth'))} |"
                     f" {fmt(lk.get('cpu_pct_mean'))} |")
    lines += ["", "## Blocks", "", "| hash | miner | to all (s) | per node (s) |",
              "| --- | --- | --- | --- |"]
    for b in r["blocks"]:
        per = ", ".join(f"{n} {v:.3f}" for n, v in sorted(b["propagation_s"].items()))
        lines.append(f"| {b['hash'][:16]}… | {b['miner']} | {fmt(b['to_all_s'])} | {per} |")
    ev = r.get("evidence") or {}
    lines += ["", "## Evidence", "",
              f"- {ev.get('samples', 0)} samples over {fmt(ev.get('sampled_span_s'))} s;"
              f" short run: {r['options'].get('short')}; {ev.get('build', '')}",
              "- metrics not exported: " + (", ".join(ev.get("missing_metrics") or []) or "none"),
              f"- failed samples: {len(ev.get('sample_failures') or [])}"]
    if r["events"]:
        lines += ["", "## Events", ""] + [f"- {e['event']}" for e in r["events"]]
    if r["extra"]:
        lines += ["", "## Other figures", "", "```", *(f"{k}: {v}" for k, v in r["extra"].items()
                                                     if k not in ("leaks", "side_by_side")), "```"]
    lines += ["", "Plots: `propagation_cdf.png`, `hop_latency.png`, `resources.png`,"
              " `queue_depth.png`.", ""]
    (out / "report.md").write_text("\n".join(lines))
