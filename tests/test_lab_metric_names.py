"""Every metric name ``dilithion-lab`` reads exists in what a running node exports.

The lab samples ``SAMPLED_METRICS`` from each node's ``/metrics`` and
``gate --prometheus`` queries ``PROMQL_METRICS``; a name the node does not
export is a missing figure (FAIL "no evidence" since issue 23), so a rename on
either side must fail here first.  The names are scraped from a real node
process's ``/metrics`` (a labelled family with no child yet still declares its
name and type in the exposition, so its sample names are derived from those).
"""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from dilithion.tools.lab.lab import SAMPLED_METRICS
from dilithion.tools.lab.prometheus import PROMQL_METRICS

#: The sample names each family type exports (OpenMetrics / prometheus_client).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "gauge": ("",), "info": ("_info",),
            "untyped": ("",), "unknown": ("",)}


def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_metric_the_lab_reads_is_exported_by_a_running_node(process_node):
    node = process_node("M").start()
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10) as r:
        exported = exported_names(r.read().decode())
    assert "chain_height" in exported                       # the scrape itself worked
    lab_reads = set(SAMPLED_METRICS) | set(PROMQL_METRICS)
    assert not lab_reads - exported, sorted(lab_reads - exported)


def test_the_name_check_sees_a_name_the_node_does_not_export():
    text = ("# TYPE send_timeout_errors counter\nsend_timeout_errors_total 0\n"
            "# TYPE block_propagation_time_seconds histogram\n")
    names = exported_names(text)
    assert {"send_timeout_errors_total", "block_propagation_time_seconds_bucket"} <= names
    assert "send_timeouts_total" not in names
