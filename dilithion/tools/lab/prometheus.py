"""``dilithion-lab gate --prometheus URL``: the same gates from a live Prometheus
that scrapes real nodes, as PromQL over the node's metrics (docs/OPERATIONS.md).

What a metric cannot show (scenario runs, 24 h lab soak) is left to the lab
results; what no program can check stays MANUAL.  Propagation here is the
``receive`` histogram (first heard of a block -> connected), the nearest a
single node's metrics get to "mined -> received".
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from dilithion.crypto.randomx_hash import VM_BYTES
from dilithion.tools.lab.gate import GateResult
from dilithion.tools.lab.leaks import CHAIN_BYTES_PER_BLOCK
from dilithion.tools.lab.labnode import LabError

__all__ = ["evaluate_prometheus", "query"]


def query(url: str, promql: str, timeout: float = 10.0) -> list[dict]:
    """One instant query; the result vector.  Any failure is a one-line LabError."""
    full = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(full, timeout=timeout) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise LabError(f"Prometheus at {url} refused the query ({exc.code} {exc.reason}):"
                       f" {promql}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LabError(f"cannot reach Prometheus at {url}: {reason}") from None
    except ValueError:
        raise LabError(f"{url} did not answer like a Prometheus server (not JSON)") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise LabError(f"{url} did not answer like a Prometheus server: {str(body)[:120]}")
    return body["data"]["result"]


def _value(url: str, promql: str) -> float | None:
    result = query(url, promql)
    if not result:
        return None
    return float(result[0]["value"][1])


def evaluate_prometheus(url: str, window: str = "1h") -> list[GateResult]:
    w = window
    checks = [
        ("nodes scraped", "at least 3 nodes up", "count(chain_height)",
         lambda v: v is not None and v >= 3),
        ("blocks propagated (highest node height)", ">= 50 / 100 / 500 by stage",
         "max(chain_height)", lambda v: v is not None and v >= 50),
        ("send timeouts", f"0 in the last {w}", f"sum(increase(send_timeout_errors_total[{w}]))",
         lambda v: v is not None and v == 0),
        ("announcements given up", f"0 in the last {w} (100% success)",
         f"sum(increase(block_broadcast_failures_total[{w}]))", lambda v: v is not None and v == 0),
        ("propagation p95 (receive)", "<= 10 s",
         "histogram_quantile(0.95, sum by (le) (rate(block_propagation_time_seconds_bucket"
         f"{{role=\"receive\"}}[{w}])))", lambda v: v is not None and v <= 10),
        ("propagation mean (receive)", "< 5 s",
         f"sum(rate(block_propagation_time_seconds_sum{{role=\"receive\"}}[{w}])) /"
         f" sum(rate(block_propagation_time_seconds_count{{role=\"receive\"}}[{w}]))",
         lambda v: v is not None and v < 5),
        ("fewest peers on a node", ">= 3", "min(connected_peers_count)",
         lambda v: v is not None and v >= 3),
        ("RSS growth beyond chain and RandomX VMs (worst node)", "<= 20 MB/h",
         f"max(deriv(process_resident_memory_bytes[{w}]) - {VM_BYTES} * deriv(randomx_vms[{w}])"
         f" - {CHAIN_BYTES_PER_BLOCK} * deriv(chain_height[{w}])) * 3600 / 1048576",
         lambda v: v is not None and v <= 20),
        ("descriptor growth (worst node)", "<= 1 /h",
         f"max(deriv(process_open_fds[{w}])) * 3600", lambda v: v is not None and v <= 1),
        ("CPU (busiest node)", "< 90 % of a core",
         f"max(rate(process_cpu_seconds_total[{w}])) * 100", lambda v: v is not None and v < 90),
    ]
    gates = []
    for name, criterion, promql, ok in checks:
        v = _value(url, promql)
        gates.append(GateResult(name, "PASS" if ok(v) else "FAIL",
                                "no data" if v is None else f"{v:.4g}", criterion))
    for name, criterion in (("7+ days validated on testnet", "testnet history"),
                            ("failure scenarios", "dilithion-lab run all + gate on its folder"),
                            ("on-call engineer 24/7", "a rota")):
        gates.append(GateResult(name, "MANUAL", "-", criterion))
    return gates
