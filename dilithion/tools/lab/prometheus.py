"""``dilithion-lab gate --prometheus URL``: the gates only a real network can
answer, from a live Prometheus that scrapes its nodes.

Everything is judged over the **measured span**: the span every node's
``chain_height`` series actually covers inside ``--window`` (from the data, not
the window asked for); rates, growth and alerts are read over that span.  The
rollout block counts are the blocks that reached every node in that span; "no
alert" reads Prometheus's own ``ALERTS`` series; "monitoring configured" reads
``/api/v1/rules`` and ``/api/v1/targets``.  A query without data is FAIL "no
evidence", never a pass.  The lab's scenarios stay with the lab's gate; what no
program can check stays MANUAL.  Propagation here is the ``receive`` histogram
(first heard of a block -> connected), the nearest a single node's metrics get
to "mined -> received".
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from dilithion.crypto.randomx_hash import VM_BYTES
from dilithion.tools.lab.gate import ROLLOUT_BLOCKS
from dilithion.tools.lab.labnode import LabError
from dilithion.tools.lab.leaks import CHAIN_BYTES_PER_BLOCK, leak_limits
from dilithion.tools.lab.verdict import NETWORK, Evidence, Verdict

__all__ = ["evaluate_prometheus", "query", "parse_duration", "measure_span", "Span",
           "PROMQL_METRICS", "DAY_S", "WEEK_S"]

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
#: Every node metric the PromQL below reads (tests/test_lab_metric_names.py checks
#: that a running node exports each of them).
PROMQL_METRICS = ("chain_height", "send_timeout_errors_total", "block_broadcast_failures_total",
                  "block_propagation_time_seconds_bucket", "block_propagation_time_seconds_sum",
                  "block_propagation_time_seconds_count", "connected_peers_count",
                  "process_resident_memory_bytes", "randomx_vms", "process_open_fds",
                  "process_cpu_seconds_total")
#: Points of the subquery that finds where each series starts.
SPAN_RESOLUTION_POINTS = 240
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """A Prometheus duration (``90s``, ``5m``, ``1h30m``, ``7d``) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise LabError(f"--window {text!r} is not a Prometheus duration (e.g. 30m, 24h, 7d)")
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


def _get(url: str, path: str, params: dict | None = None, timeout: float = 30.0):
    full = url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(full, timeout=timeout) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise LabError(f"Prometheus at {url} refused {path} ({exc.code} {exc.reason}):"
                       f" {params or ''}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LabError(f"cannot reach Prometheus at {url}: {reason}") from None
    except ValueError:
        raise LabError(f"{url} did not answer like a Prometheus server (not JSON)") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise LabError(f"{url} did not answer like a Prometheus server: {str(body)[:120]}")
    return body["data"]


def query(url: str, promql: str, timeout: float = 30.0) -> list[dict]:
    """One instant query; the result vector.  Any failure is a one-line LabError."""
    return _get(url, "/api/v1/query", {"query": promql}, timeout)["result"]


def _value(url: str, promql: str) -> float | None:
    result = query(url, promql)
    if not result:
        return None
    return float(result[0]["value"][1])


def _by_instance(url: str, promql: str) -> dict[str, float]:
    return {r["metric"].get("instance", "?"): float(r["value"][1]) for r in query(url, promql)}


@dataclass(frozen=True)
class Span:
    """Where the nodes' data lies inside the window asked for."""

    asked_s: float
    per_node_s: dict
    samples: int

    @property
    def seconds(self) -> float:
        """The span every node covers (the shortest node's): the network's span."""
        return min(self.per_node_s.values()) if self.per_node_s else 0.0

    @property
    def promql(self) -> str:
        """The span as a PromQL range (whole seconds, at least 1 s)."""
        return f"{max(1, int(self.seconds))}s"

    def evidence(self, url: str, samples: int | None = None, gaps=()) -> Evidence:
        return Evidence(NETWORK, (f"prometheus {url}",), tuple(sorted(self.per_node_s)),
                        self.samples if samples is None else samples,
                        self.seconds if self.per_node_s else None, tuple(gaps))


def measure_span(url: str, window: str) -> Span:
    """Per node (``instance``): from its first ``chain_height`` sample in the window
    (or the window's start) to its latest sample."""
    asked = parse_duration(window)
    step = f"{max(1, int(asked / SPAN_RESOLUTION_POINTS))}s"
    first = _by_instance(url, f"min_over_time(timestamp(chain_height)[{window}:{step}])")
    last = _by_instance(url, "timestamp(chain_height)")
    now_t = float(_get(url, "/api/v1/query", {"query": "time()"})["result"][1])
    spans = {}
    for inst, t_last in last.items():
        # the subquery finds a series' start to within one step; data that reaches the
        # window's first step started before the window
        start = first.get(inst, t_last)
        if start <= now_t - asked + parse_duration(step):
            start = now_t - asked
        start = max(start, now_t - asked)
        spans[inst] = max(0.0, t_last - start)
    counts = _by_instance(url, f"count_over_time(chain_height[{window}])")
    return Span(asked, spans, int(sum(counts.values())))


def _alerting_rules(url: str) -> list[str]:
    groups = _get(url, "/api/v1/rules")["groups"]
    return [r["name"] for g in groups for r in g.get("rules", []) if r.get("type") == "alerting"]


def _targets(url: str) -> list[dict]:
    return _get(url, "/api/v1/targets")["activeTargets"]


def _measured_gates(url: str, span: Span) -> list[Verdict]:
    w = span.promql
    hours = max(span.seconds, 1.0) / 3600
    rss_limit = leak_limits(span.seconds, span.seconds)["rss_limit_mb_per_h"]
    fd_limit = round(leak_limits(span.seconds, span.seconds * 1.5)["count_limit"] / hours, 2)
    checks = [
        ("nodes scraped", "at least 3 nodes with data", "count(chain_height)",
         lambda v: v >= 3),
        ("send timeouts", f"0 in the measured span ({w})",
         f"sum(increase(send_timeout_errors_total[{w}]))", lambda v: v == 0),
        ("announcements given up", f"0 in the measured span ({w}) (100% success)",
         f"sum(increase(block_broadcast_failures_total[{w}]))", lambda v: v == 0),
        ("propagation p95 (receive)", "<= 10 s",
         "histogram_quantile(0.95, sum by (le) (rate(block_propagation_time_seconds_bucket"
         f"{{role=\"receive\"}}[{w}])))", lambda v: v <= 10),
        ("propagation mean (receive)", "< 5 s",
         f"sum(rate(block_propagation_time_seconds_sum{{role=\"receive\"}}[{w}])) /"
         f" sum(rate(block_propagation_time_seconds_count{{role=\"receive\"}}[{w}]))",
         lambda v: v < 5),
        ("fewest peers on a node", ">= 3", "min(connected_peers_count)", lambda v: v >= 3),
        ("RSS growth beyond chain and RandomX VMs (worst node)",
         f"<= {rss_limit:g} MB/h (the lab's limit for a {hours:.3g} h window)",
         f"max(deriv(process_resident_memory_bytes[{w}]) - {VM_BYTES} * deriv(randomx_vms[{w}])"
         f" - {CHAIN_BYTES_PER_BLOCK} * deriv(chain_height[{w}])) * 3600 / 1048576",
         lambda v: v <= rss_limit),
        ("descriptor growth (worst node)", f"<= {fd_limit:g} /h (the lab's limit over {hours:.3g} h)",
         f"max(deriv(process_open_fds[{w}])) * 3600", lambda v: v <= fd_limit),
        ("CPU (busiest node)", "< 90 % of a core",
         f"max(rate(process_cpu_seconds_total[{w}])) * 100", lambda v: v < 90),
    ]
    gates = []
    for name, criterion, promql, ok in checks:
        v = _value(url, promql) if span.per_node_s else None
        if v is None or v != v:            # no series, or NaN (no rate in the span)
            gates.append(Verdict.no_evidence(name, criterion, f"no data for {promql}",
                                             span.evidence(url), NETWORK))
        else:
            gates.append(Verdict.judge(name, criterion, ok(v), v, span.evidence(url), NETWORK))
    return gates


def _rollout_gates(url: str, span: Span) -> list[Verdict]:
    """Blocks that reached every node in the span: the lowest node's height now minus
    the highest node's lowest height in the span."""
    w = span.promql
    low_now = _value(url, "min(chain_height)") if span.per_node_s else None
    start = _value(url, f"max(min_over_time(chain_height[{w}]))") if span.per_node_s else None
    out = []
    for need, stage in ROLLOUT_BLOCKS:
        name = f"{need}+ blocks propagated ({stage})"
        crit = f">= {need} blocks reached every node in the measured span"
        if low_now is None or start is None:
            out.append(Verdict.no_evidence(name, crit, "no chain_height data", span.evidence(url),
                                           NETWORK))
            continue
        blocks = max(0, int(low_now - start))
        out.append(Verdict.judge(name, crit, blocks >= need, f"{blocks} blocks (network)",
                                 span.evidence(url), NETWORK))
    return out


def _alert_gates(url: str, span: Span) -> list[Verdict]:
    rules = _alerting_rules(url)
    targets = _targets(url)
    down = [t["labels"].get("instance", t.get("scrapeUrl", "?")) for t in targets
            if t.get("health") != "up"]
    ev = span.evidence(url, samples=len(rules) + len(targets))
    gaps = [] if rules else ["no alerting rule loaded (/api/v1/rules): no alert could fire"]
    if not targets:
        gaps.append("no scrape target (/api/v1/targets)")
    configured = Verdict.judge(
        "monitoring and alerting configured", "alert rules loaded, every target scraped and up",
        not down, f"{len(rules)} alerting rules, {len(targets)} targets"
        + (f", down: {', '.join(down)}" if down else ""), ev.with_gaps(*gaps), NETWORK)
    fired = []
    if span.per_node_s:
        fired = sorted({r["metric"].get("alertname", "?") for r in query(
            url, f"max_over_time(ALERTS{{alertstate=\"firing\"}}[{span.promql}])")})
    fired_text = "fired: " + ", ".join(fired) if fired else "none fired"
    alert_ev = span.evidence(url, gaps=gaps)
    out = [configured, Verdict.judge("no alert fired", "no ALERTS series firing in the measured"
                                     " span", not fired, fired_text, alert_ev, NETWORK)]
    for name, need, crit in (("24-hour run", DAY_S, ">= 24 h of every node's data, no alert"
                              " firing"),
                             ("7+ days validated on testnet", WEEK_S, ">= 7 d of every node's"
                              " data, no alert firing (the testnet's Prometheus)")):
        if span.seconds < need:
            out.append(Verdict.no_evidence(name, crit, f"measured span {span.seconds / 3600:.2f} h"
                                           f" of the {need / 3600:g} h needed", alert_ev, NETWORK,
                                           f"{span.seconds / 3600:.2f} h"))
        else:
            out.append(Verdict.judge(name, crit, not fired, f"{span.seconds / 3600:.1f} h,"
                                     f" {fired_text}", alert_ev, NETWORK))
    return out


def evaluate_prometheus(url: str, window: str = "1h") -> list[Verdict]:
    span = measure_span(url, window)
    gates = _measured_gates(url, span) + _alert_gates(url, span) + _rollout_gates(url, span)
    gates.append(Verdict.not_run("failure scenarios", "each runs and passes",
                                 "the lab's: dilithion-lab run all, then gate on its folder"))
    gates.append(Verdict.manual("on-call engineer 24/7", "a rota"))
    return gates
