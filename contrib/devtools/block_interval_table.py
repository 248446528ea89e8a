#!/usr/bin/env python3
"""Expected mainnet block interval from the network's hash rate, and what it means
for the alerts and the rollout stages (issue 23 item 6).

    PYTHONPATH=. python contrib/devtools/block_interval_table.py   # prints the tables

``docs/MAINNET-OPERATIONS.md`` section 1.1 holds this script's output between
the ``block-interval-table`` markers; ``tests/test_block_interval_table.py``
checks the two match, so change the parameters here and paste the new output.

Everything is derived from the chain parameters and two measured figures:

* **Work per block.**  A header is a block when its RandomX hash, read as a
  256-bit number, is below the target of its ``nBits``; with uniformly
  distributed hashes the expected number of hashes per block is
  ``2^256 / target``.  Mainnet's genesis ``nBits`` ``0x1e00ffff`` is a target of
  ``0xffff * 2^216``: ``2^40 / 0xffff``, about 16.78 million hashes.
* **Difficulty never moves by default.**  The C++ node always mines and accepts
  the genesis ``nBits`` (``chain D12``), and so does our node in default mode:
  the interval is the work per block divided by the network hash rate, for
  good.  240 s (``blockTime``) is only the target of a retarget nobody applies.
  Under ``--strict`` on *every* node the intended rule applies: every 2016
  blocks the target is scaled by the last 2015 intervals over ``2016 * 240 s``,
  clamped to a factor of 4 and to the ``nBits`` range (``pow.retarget``).  The
  ``--strict`` columns follow that rule with each period lasting its expected
  length.
* **Hash rate per miner.**  One two-core machine mining in full RandomX mode
  with 2 threads: 429-459 H/s measured (``contrib/bench/bench_mining.py``,
  ``docs/OPERATIONS.md`` 5.1); 444 H/s is used.  In light mode the same machine
  makes 55 H/s, so a light-mode miner counts as about 1/8 of a row's miner.
* **Inter-block times are exponential** (mining is memoryless), so the chance
  that a gap exceeds a window ``w`` is ``exp(-w / mean)``, and a "no block for
  ``w``" alert fires falsely about ``(blocks per period) * exp(-w / mean)``
  times per period.  The window with at most one false page per 30 days is
  ``mean * ln(blocks per 30 days)``.

The shipped no-block window is read from ``contrib/prometheus/alerts.yml``, so
the table always describes the rule that is really shipped.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dilithion.consensus.pow import compact_to_big, retarget  # noqa: E402
from dilithion.core.chainparams import ChainParams  # noqa: E402

#: Two-core miners in full mode, one row each (the issue's examples).
MINER_COUNTS = (1, 3, 5, 10, 30, 100)
#: Hash rate of one two-core machine, full mode, 2 threads (H/s): the middle of the
#: 429-459 H/s measured by ``contrib/bench/bench_mining.py`` on the reference machine.
TWO_CORE_FULL_MODE_HS = 444
#: The same machine in light mode (H/s), for the note under the table.
TWO_CORE_LIGHT_MODE_HS = 55
#: The false-alarm budget the no-block window is chosen for: one false page per 30 days.
QUIET_HORIZON_S = 30 * 86400
#: The no-block window shipped before issue 23 ("two block times" of 240 s), shown so
#: the table says what it would have cost.
FORMER_NO_BLOCK_WINDOW_S = 480
#: Block counts the rollout stages ask for (``MAINNET-OPERATIONS.md`` section 9).
STAGE_BLOCK_COUNTS = (100, 500)
#: A ``--strict`` network counts as settled when its interval is within 10 % of the target.
SETTLED_TOLERANCE = 0.10
#: Retarget periods simulated at most (each multiplies the work by 1/4..4).
MAX_PERIODS = 40

ALERTS = REPO / "contrib" / "prometheus" / "alerts.yml"
NO_BLOCK_RULE = "DilithionNoBlockPropagated"
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def expected_hashes(bits: int) -> Fraction:
    """Expected RandomX hashes per block at ``bits``: ``2^256 / target`` (exact)."""
    return Fraction(1 << 256, compact_to_big(bits))


def mean_interval_s(bits: int, network_hs: float) -> float:
    """Mean seconds between blocks for a network hashing ``network_hs`` per second."""
    return float(expected_hashes(bits)) / network_hs


def false_pages(window_s: float, mean_s: float, horizon_s: float = QUIET_HORIZON_S) -> float:
    """Expected false "no block for ``window_s``" pages in ``horizon_s`` (exponential gaps)."""
    return horizon_s / mean_s * math.exp(-window_s / mean_s)


def quiet_window_s(mean_s: float, horizon_s: float = QUIET_HORIZON_S) -> float:
    """The shortest no-block window with at most one expected false page in ``horizon_s``."""
    return mean_s * max(math.log(horizon_s / mean_s), 0.0)


def shipped_no_block_window_s(alerts: Path = ALERTS) -> int:
    """The range of ``increase(...[<w>])`` in the shipped no-block rule, in seconds."""
    text = alerts.read_text()
    rule = text[text.index(f"alert: {NO_BLOCK_RULE}"):]
    match = re.search(r"block_propagation_time_seconds_count\[(\d+)([smhd])\]", rule)
    if match is None:
        raise ValueError(f"{alerts}: no window found in {NO_BLOCK_RULE}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class StrictSchedule:
    """How a network of constant hash rate would retarget if every node ran ``--strict``."""

    first_retarget_s: float     # when the first new nBits applies (2015 blocks at genesis work)
    settled_s: float | None     # when the interval is within SETTLED_TOLERANCE of the target
    #: Shortest and longest mean interval of the last periods simulated (when not settled:
    #: the swing of ``chain D8``, a target whose mantissa has its top bit set halves).
    last_intervals_s: tuple[float, float]


def strict_schedule(params: ChainParams, network_hs: float) -> StrictSchedule:
    """Follow ``pow.retarget`` period by period, each period lasting its expected time.

    The first new ``nBits`` applies at height 2016, after the 2015 blocks mined on
    genesis; later periods are 2016 blocks.  Each retarget reads the span of the
    last 2015 intervals (``chain`` 3.5: the walk goes 2015 steps back).
    """
    span = params.difficulty_adjustment * params.block_time
    bits, elapsed, first, settled = params.genesis_bits, 0.0, None, None
    intervals: list[float] = []
    for _ in range(MAX_PERIODS):
        interval = mean_interval_s(bits, network_hs)
        intervals.append(interval)
        if abs(interval / params.block_time - 1) <= SETTLED_TOLERANCE:
            settled = elapsed
            break
        blocks = params.difficulty_adjustment - (1 if first is None else 0)
        elapsed += blocks * interval
        first = elapsed if first is None else first
        new_bits = retarget(bits, int((params.difficulty_adjustment - 1) * interval), span,
                            params.pow_min_bits, params.pow_max_bits)
        if new_bits == bits:          # pinned at a clamp of the nBits range
            break
        bits = new_bits
    last = intervals[-4:]
    return StrictSchedule(first_retarget_s=first if first is not None else 0.0,
                          settled_s=settled, last_intervals_s=(min(last), max(last)))


def duration(seconds: float) -> str:
    """A duration for people: s, min, h, days or years, one decimal (none when it is 0)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        value, unit = seconds / 3600, "h"
    elif seconds < 2 * 365.25 * 86400:
        value, unit = seconds / 86400, "days"
    else:
        value, unit = seconds / (365.25 * 86400), "years"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def count(value: float) -> str:
    """A count or rate for people: < 0.001, three decimals below 0.1, two below 10, whole above."""
    if value < 0.001:
        return "< 0.001"
    if value < 0.1:
        return f"{value:.3f}"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def miners_for_target(params: ChainParams) -> float:
    """Two-core full-mode miners that make the mean interval equal ``blockTime``."""
    return float(expected_hashes(params.genesis_bits)) / params.block_time / TWO_CORE_FULL_MODE_HS


def rows(params: ChainParams) -> list[tuple[str, float]]:
    """(label, network hash rate) per row: the miner counts and the 240 s network."""
    at_target = miners_for_target(params)
    listed = [(f"{n}", n * TWO_CORE_FULL_MODE_HS) for n in MINER_COUNTS]
    listed.append((f"{at_target:.0f} (the {params.block_time} s network)",
                   at_target * TWO_CORE_FULL_MODE_HS))
    return sorted(listed, key=lambda row: row[1])


def alert_table(params: ChainParams, window_s: int) -> list[str]:
    head = ["two-core miners (full mode)", "network H/s", "mean block interval", "blocks per day",
            f"false no-block pages / 30 days, shipped window ({duration(window_s)})",
            f"same, former window ({duration(FORMER_NO_BLOCK_WINDOW_S)})",
            "window for <= 1 false page / 30 days"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, hs in rows(params):
        mean = mean_interval_s(params.genesis_bits, hs)
        cells = [label, f"{hs:,.0f}", duration(mean), count(86400 / mean),
                 count(false_pages(window_s, mean)), count(false_pages(FORMER_NO_BLOCK_WINDOW_S, mean)),
                 duration(quiet_window_s(mean))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def rollout_table(params: ChainParams) -> list[str]:
    head = ["two-core miners (full mode)"]
    head += [f"{n} blocks take" for n in STAGE_BLOCK_COUNTS]
    head += ["blocks in 24 h", "blocks in 72 h", "blocks in 7 days",
             "`--strict` everywhere: first retarget after",
             f"`--strict`: within 10 % of {params.block_time} s after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, hs in rows(params):
        mean = mean_interval_s(params.genesis_bits, hs)
        strict = strict_schedule(params, hs)
        settled = "from the start" if strict.settled_s == 0 else (
            duration(strict.settled_s) if strict.settled_s is not None
            else "never: swings {} - {} (`chain D8`)".format(*map(duration, strict.last_intervals_s)))
        first = "not needed" if strict.settled_s == 0 else duration(strict.first_retarget_s)
        cells = [label] + [duration(n * mean) for n in STAGE_BLOCK_COUNTS]
        cells += [count(hours * 3600 / mean) for hours in (24, 72, 168)]
        cells += [first, settled]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(params: ChainParams | None = None, window_s: int | None = None) -> str:
    """The markdown between the doc's markers: work per block, then both tables."""
    params = params or ChainParams.mainnet()
    window_s = shipped_no_block_window_s() if window_s is None else window_s
    target = compact_to_big(params.genesis_bits)
    work = expected_hashes(params.genesis_bits)
    one = mean_interval_s(params.genesis_bits, TWO_CORE_FULL_MODE_HS)
    out = [
        f"Mainnet `nBits` `0x{params.genesis_bits:08x}`: target `0x{target >> 216:x} * 2^216`; "
        f"expected hashes per block = 2^256 / target = {float(work):,.0f}. "
        f"One two-core miner in full mode ({TWO_CORE_FULL_MODE_HS} H/s): "
        f"{float(work):,.0f} / {TWO_CORE_FULL_MODE_HS} = {one:,.0f} s = {duration(one)} per block "
        f"on average; in light mode ({TWO_CORE_LIGHT_MODE_HS} H/s) "
        f"{duration(mean_interval_s(params.genesis_bits, TWO_CORE_LIGHT_MODE_HS))}.",
        "",
        *alert_table(params, window_s),
        "",
        *rollout_table(params),
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
