"""The operator documents fit the network they describe (issue 23 item 6).

* the block-interval table in ``docs/MAINNET-OPERATIONS.md`` 1.1 is exactly what
  ``contrib/devtools/block_interval_table.py`` computes from the chain
  parameters and the shipped alert rule (a changed ``nBits``, hash rate or
  alert window without a regenerated table fails here);
* the arithmetic is the real one: work per block = 2^256 / target of mainnet's
  ``nBits``, and one two-core miner's interval is what the mining guide says;
* the shipped no-block window keeps false pages under one a month on the
  stage-one network (three two-core miners);
* no operator document promises a 240 s block interval without the table's
  assumption, and every headline ratio against the C++ node says that the C++
  node hashes in light mode behind one lock.

Pure arithmetic and text: no node, no RandomX.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from dilithion.consensus.pow import compact_to_big
from dilithion.core.chainparams import ChainParams

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
OPS = DOCS / "MAINNET-OPERATIONS.md"
GUIDE = DOCS / "MAINNET-MINING-GUIDE.md"
SCRIPT = REPO / "contrib" / "devtools" / "block_interval_table.py"
BEGIN, END = "<!-- block-interval-table: begin -->", "<!-- block-interval-table: end -->"
#: Operator-facing documents whose promises about the block interval are checked.
OPERATOR_DOCS = [OPS, GUIDE, DOCS / "OPERATIONS.md", DOCS / "LAB.md", REPO / "README.md"]
#: The stage-one network the shipped no-block window is chosen for (section 9).
STAGE_ONE_MINERS = 3


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("block_interval_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def _between_markers(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def test_the_doc_holds_the_scripts_table(table):
    assert _between_markers(OPS.read_text()) == table.render(), (
        "docs/MAINNET-OPERATIONS.md 1.1 is stale: paste the output of "
        "`python contrib/devtools/block_interval_table.py` between the markers")


def test_the_comparison_can_fail(table):
    """A table made for another hash rate or window differs from the doc's."""
    doc = _between_markers(OPS.read_text())
    assert table.render(window_s=480) != doc
    assert table.render(ChainParams.testnet()) != doc


def test_work_per_block_is_two_to_the_256_over_the_target(table):
    bits = ChainParams.mainnet().genesis_bits
    assert compact_to_big(bits) == 0xFFFF << 216
    work = table.expected_hashes(bits)
    assert work == Fraction(1 << 256, 0xFFFF << 216) == Fraction(1 << 40, 0xFFFF)
    assert round(float(work)) == 16_777_472
    # One two-core miner in full mode: the 10.5 h the mining guide states.
    one = table.mean_interval_s(bits, table.TWO_CORE_FULL_MODE_HS)
    assert round(one / 3600, 1) == 10.5
    assert "about 10.5 hours on average for one two-core miner" in GUIDE.read_text()


def test_false_pages_follow_the_exponential_gap(table):
    mean = 3600.0
    # a window of k mean intervals is exceeded by a fraction exp(-k) of the gaps
    assert table.false_pages(2 * mean, mean, horizon_s=100 * mean) == pytest.approx(100 * 0.1353, rel=1e-3)
    quiet = table.quiet_window_s(mean)
    assert table.false_pages(quiet, mean) == pytest.approx(1.0)


def test_the_shipped_no_block_window_is_quiet_on_the_stage_one_network(table):
    params = ChainParams.mainnet()
    window = table.shipped_no_block_window_s()
    mean = table.mean_interval_s(params.genesis_bits, STAGE_ONE_MINERS * table.TWO_CORE_FULL_MODE_HS)
    assert table.false_pages(window, mean) <= 1.0
    # ... and the former "two block times of 240 s" would page on most blocks there.
    assert table.false_pages(table.FORMER_NO_BLOCK_WINDOW_S, mean) > 0.9 * (30 * 86400 / mean)


def test_strict_retargeting_follows_the_consensus_rule(table):
    params = ChainParams.mainnet()
    at_target = table.strict_schedule(params, table.miners_for_target(params) * table.TWO_CORE_FULL_MODE_HS)
    assert at_target.settled_s == 0
    three = table.strict_schedule(params, 3 * table.TWO_CORE_FULL_MODE_HS)
    # heights 1..2015 at genesis work before the first new nBits (height 2016)
    assert three.first_retarget_s == pytest.approx(2015 * table.mean_interval_s(
        params.genesis_bits, 3 * table.TWO_CORE_FULL_MODE_HS))
    assert three.settled_s > three.first_retarget_s


def _paragraphs(text: str) -> list[str]:
    """The paragraphs of a document, the generated table left out (it is checked above)."""
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + text[text.index(END):]
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def test_no_document_promises_240_s_blocks_without_the_assumption():
    """A paragraph naming a 240 s block interval also names the table or the hash rate
    that interval needs; the alert table no longer says "two block times"."""
    offenders = []
    for doc in OPERATOR_DOCS:
        for para in _paragraphs(doc.read_text()):
            if re.search(r"240[\s-]?s(econd)?\b", para) and not re.search(
                    r"1\.1|block.interval table|157 two-core|hash rate", para):
                offenders.append(f"{doc.name}: {para[:120]!r}")
            if re.search(r"two\s+block\s+times|2\s+block\s+times|rising\s+about\s+every", para):
                offenders.append(f"{doc.name}: {para[:120]!r}")
    assert offenders == []


def test_every_ratio_against_the_cpp_node_says_what_it_compares():
    """"N x the C++ node" / "faster than the C++ node" must say light mode and the lock."""
    offenders = []
    for doc in OPERATOR_DOCS:
        for para in _paragraphs(doc.read_text()):
            if re.search(r"\d+(\.\d+)?x\s+(the\s+C\+\+|faster\s+than\s+the\s+C\+\+)", para) and not (
                    "light mode" in para and "lock" in para):
                offenders.append(f"{doc.name}: {para[:120]!r}")
    assert offenders == []


def test_the_rollout_stages_durations_are_the_tables(table):
    """Section 9's stage durations are the table's figures (a stale copy fails here)."""
    params = ChainParams.mainnet()
    text = " ".join(OPS.read_text().split())
    section = text[text.index("## 9. Staged rollout"):text.index("## 10. Measured figures")]

    def mean(miners: int) -> float:
        return table.mean_interval_s(params.genesis_bits, miners * table.TWO_CORE_FULL_MODE_HS)

    def blocks(miners: int, hours: int) -> str:
        return table.count(hours * 3600 / mean(miners))

    expected = [
        f"until 100+ blocks: {table.duration(100 * mean(3))} at 3 two-core miners, "
        f"{table.duration(100 * mean(5))} at 5 ({table.duration(100 * mean(1))} at 1)",
        f"until 500+ blocks: {table.duration(500 * mean(10))} at 10 two-core miners, "
        f"{table.duration(500 * mean(30))} at 30",
        f"A 24 h window holds only {blocks(10, 24)} blocks at 10 miners ({round(24 * 3600 / mean(3))} at 3)",
        f"72 h: {blocks(10, 72)} blocks at 10 miners, {blocks(30, 72)} at 30",
    ]
    missing = [phrase for phrase in expected if phrase not in section]
    assert missing == []


def test_the_no_block_window_figures_in_prose_are_the_tables(table):
    """The figures quoted around the table and in the rule's comment are the script's."""
    params = ChainParams.mainnet()
    window = table.shipped_no_block_window_s()
    three = table.mean_interval_s(params.genesis_bits, 3 * table.TWO_CORE_FULL_MODE_HS)
    one = table.mean_interval_s(params.genesis_bits, table.TWO_CORE_FULL_MODE_HS)
    at_target = float(params.block_time)
    text = " ".join(OPS.read_text().split())
    rule = " ".join(table.ALERTS.read_text().split())
    three_pages = table.count(table.false_pages(window, three))
    assert f"{three_pages} false pages a month at three" in text
    assert f"{three_pages} false pages a month at three miners" in rule.replace("# ", "")
    assert f"({table.duration(table.quiet_window_s(three))} is the shortest" in rule.replace("# ", "")
    assert f"{round(table.false_pages(window, one))} a month at one miner" in text
    assert f"{table.count(table.false_pages(table.FORMER_NO_BLOCK_WINDOW_S, at_target))} times a month" in text
