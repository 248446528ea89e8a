"""The resource-budget table of ``docs/P2P.md`` stays complete and true (issue 21).

Every message a peer can send has a row (every class of ``protocol.MESSAGE_TYPES``
and unknown commands), so does every per-connection structure and shared
resource a peer can make the node spend, every row names its per-peer and
node-wide limits and what happens at them, and every metric a row cites is one
the node exports.  A message type added without a row, or a metric renamed
without the table, fails here.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dilithion.net.protocol import MESSAGE_TYPES
from dilithion.node.metrics import NodeMetrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "P2P.md"
SECTION = "## Resource budget"
COLUMNS = ["Message or structure", "Resource", "Per peer", "Node-wide", "At the limit", "Metric"]
#: Costs that are not one message: each must have its own row.
STRUCTURES = ["network thread pass", "handler turn", "receive buffer", "inbound backlog",
              "send queue", "connection slots", "proof-of-work prefetch", "orphan pool",
              "mempool", "propagation record", "log lines", "misbehaviour and discouragement"]


def budget_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first table after ``SECTION`` as column -> cell."""
    start = text.index(SECTION)
    lines = text[start:].splitlines()
    table = []
    for line in lines[1:]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    header, rule, *body = table
    assert header == COLUMNS, f"budget table columns are {header}, expected {COLUMNS}"
    assert all(set(cell) <= set("-: ") for cell in rule)
    return [dict(zip(header, row)) for row in body]


def exported_metric_names() -> set[str]:
    names = set()
    for family in NodeMetrics(process_metrics=True).registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return budget_rows(DOC.read_text())


def row_names(rows) -> list[str]:
    return [row["Message or structure"] for row in rows]


def test_every_message_type_has_a_row(rows):
    names = " ".join(row_names(rows))
    missing = [cmd for cmd in MESSAGE_TYPES if f"`{cmd}`" not in names]
    assert not missing, f"no budget row for message(s) {missing} in {DOC.name}"
    assert "unknown command" in names


def test_every_shared_structure_has_a_row(rows):
    names = " ".join(row_names(rows)).lower()
    missing = [s for s in STRUCTURES if s not in names]
    assert not missing, f"no budget row for {missing}"


def test_every_row_states_both_limits_and_the_consequence(rows):
    for row in rows:
        for column in ("Resource", "Per peer", "Node-wide", "At the limit"):
            assert row[column] and row[column] not in ("?", "-", "TODO"), (row, column)


def test_every_cited_metric_is_exported(rows):
    exported = exported_metric_names()
    cited = {name for row in rows for name in re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", row["Metric"])}
    assert cited, "the table cites no metric"
    unknown = sorted(c for c in cited if c not in exported)
    assert not unknown, f"budget table cites metrics the node does not export: {unknown}"


def test_the_checks_fail_on_a_table_missing_a_message(rows):
    """The completeness check itself can fail: drop the ``block`` row and it does."""
    without = [r for r in rows if "`block`" not in r["Message or structure"]]
    with pytest.raises(AssertionError):
        test_every_message_type_has_a_row(without)
    bad = [dict(rows[0], Metric="`no_such_metric_total`")]
    with pytest.raises(AssertionError):
        test_every_cited_metric_is_exported(bad)
