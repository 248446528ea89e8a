"""Minimising a failing input: fewer steps (delta debugging), fewer list entries, a shorter
block body, fewer bytes.

Pure: ``still_fails(steps) -> bool`` is the only contact with the nodes (in
``dilithion-diff fuzz`` it replays the candidate on a new connection and asks
whether the same finding comes back), so the algorithm is tested on plain
predicates.  A :class:`Budget` bounds it by attempts and by seconds: every
attempt costs a node round trip (or a step timeout), and a finding is worth a
bounded share of the run.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence, TypeVar

from dilithion.net.protocol import decode_payload
from dilithion.primitives.block import Block

from .corpus import Step

T = TypeVar("T")


class Budget:
    """At most ``attempts`` predicate calls and ``seconds`` of wall time."""

    def __init__(self, attempts: int, seconds: float, clock=time.monotonic) -> None:
        self.left, self.clock = attempts, clock
        self.deadline = clock() + seconds
        self.used = 0

    def take(self) -> bool:
        if self.left <= 0 or self.clock() >= self.deadline:
            return False
        self.left -= 1
        self.used += 1
        return True


def ddmin(items: Sequence[T], still_fails: Callable[[list[T]], bool], budget: Budget) -> list[T]:
    """Zeller's delta debugging: a 1-minimal sublist (as far as the budget goes) on
    which ``still_fails`` holds; ``items`` itself is assumed to fail."""
    current, n = list(items), 2
    while len(current) >= 2:
        chunk = -(-len(current) // n)
        subsets = [current[i:i + chunk] for i in range(0, len(current), chunk)]
        complements = [[x for j, s in enumerate(subsets) if j != i for x in s]
                       for i in range(len(subsets))]
        found = None
        for cand, next_n in [(s, 2) for s in subsets] + [(c, max(n - 1, 2)) for c in complements]:
            if not cand or len(cand) >= len(current):
                continue
            if not budget.take():
                return current
            if still_fails(cand):
                found = cand, next_n
                break
        if found:
            current, n = found
        elif n >= len(current):
            break
        else:
            n = min(n * 2, len(current))
    return current


def shrink_bytes(data: bytes, still_fails: Callable[[bytes], bool], budget: Budget) -> bytes:
    """Shorter payloads on which ``still_fails`` holds: the shortest failing prefix
    (bisection), then chunks removed, halving the chunk size down to one byte."""
    lo, hi = 0, len(data)                      # data[:hi] fails; look for a shorter prefix
    while lo < hi and budget.take():
        mid = (lo + hi) // 2
        if still_fails(data[:mid]):
            hi = mid
        else:
            lo = mid + 1
    data = data[:hi]
    chunk = max(len(data) // 2, 1)
    while chunk >= 1 and data:
        i = 0
        while i < len(data):
            cand = data[:i] + data[i + chunk:]
            if not budget.take():
                return data
            if still_fails(cand):
                data = cand
            else:
                i += chunk
        if chunk == 1:
            break
        chunk //= 2
    return data


#: The list a message carries, by command: what :func:`shrink_items` drops entries from.
ITEM_LISTS = {"inv": "inv", "getdata": "inv", "addr": "addrs", "getblocks": "locator"}


def shrink_items(step: Step, still_fails: Callable[[Step], bool], budget: Budget) -> Step:
    """For a message with a list (``ITEM_LISTS``): fewer entries, the message still
    decodable (a byte-level cut would break its count).  Only when the payload is
    exactly the list's serialisation (no trailing bytes to lose)."""
    attr = ITEM_LISTS.get(step.command) if step.action == "send" else None
    if attr is None:
        return step
    try:
        msg = decode_payload(step.command, step.payload)
    except ValueError:
        return step
    items = getattr(msg, attr)

    def with_items(sub: list) -> Step:
        return dataclasses.replace(step, payload=dataclasses.replace(msg, **{attr: sub})
                                   .serialize())
    if len(items) < 2 or with_items(items).payload != step.payload:
        return step
    return with_items(ddmin(items, lambda sub: still_fails(with_items(sub)), budget))


def shrink_block(step: Step, still_fails: Callable[[Step], bool], budget: Budget) -> Step:
    """For a ``block`` that decodes: a shorter ``vtx`` with its length prefix kept right
    (a byte-level cut inside ``vtx`` only breaks the prefix), the header and any bytes
    after ``vtx`` kept."""
    if step.action != "send" or step.command != "block":
        return step
    try:
        block = Block.deserialize(step.payload, allow_trailing=True)
    except ValueError:
        return step
    trailing = step.payload[len(block.serialize()):]

    def with_vtx(vtx: bytes) -> Step:
        return dataclasses.replace(step, payload=Block(block.header, vtx).serialize() + trailing)
    if with_vtx(block.vtx).payload != step.payload:     # a non-canonical length prefix: leave it
        return step
    return with_vtx(shrink_bytes(block.vtx, lambda vtx: still_fails(with_vtx(vtx)), budget))


def minimise(steps: list[Step], still_fails: Callable[[list[Step]], bool],
             budget: Budget) -> list[Step]:
    """Fewer steps, then for each ``send`` step fewer list entries, a shorter block body
    and fewer payload bytes, within ``budget``."""
    steps = ddmin(steps, still_fails, budget)
    for k in range(len(steps)):
        if steps[k].action != "send" or not steps[k].payload:
            continue

        def step_fails(step: Step, k=k) -> bool:
            return still_fails(steps[:k] + [step] + steps[k + 1:])
        steps[k] = shrink_items(steps[k], step_fails, budget)
        steps[k] = shrink_block(steps[k], step_fails, budget)
        steps[k] = dataclasses.replace(steps[k], payload=shrink_bytes(
            steps[k].payload, lambda p, k=k: step_fails(dataclasses.replace(steps[k], payload=p)),
            budget))
    return steps


__all__ = ["Budget", "ddmin", "shrink_bytes", "shrink_items", "shrink_block", "minimise", "ITEM_LISTS"]
