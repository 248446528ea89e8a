"""``dilithion-diff fuzz``: generated inputs fed to both nodes, every finding minimised.

Both nodes are started once and brought to the base state (the C++ vector
chain ``V1``..``V6``).  Each execution is one input of ``fuzz_inputs``: one to
three steps, the first on a new connection from a new loopback address, each
step run through the diff runner (``Runner.run_step``: sent to both at once,
observed, compared, each difference looked up in the catalogue).  An
execution stops at its first finding:

* **unexplained**: a difference the catalogue does not explain;
* **crash** / **hang**: a node exited, or stopped answering even a new
  connection, during a step (whether or not the other did the same).

Differences the catalogue explains are counted by entry ID, nothing more.
The first time a finding's signature (class, subject, step signature such as
``send block``) is seen it is minimised (``fuzz_minimise``, replaying
candidates on new connections) and written to ``DIR/found/`` as a corpus that
``dilithion-diff run --corpus`` replays from empty datadirs: ``fresh``, the
base chain, the minimised steps.  Later findings with the same signature are
counted only.  After a finding, or any step that leaves the two tips apart or
off the base tip, both nodes are started again on empty datadirs and the base
is sent again (``rebase``), so one input's effects do not leak into the next.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loguru import logger

from dilithion.testing.node_process import TargetError

from .corpus import Step
from .fuzz_inputs import (BlockNames, InputGenerator, Seeds, input_size, step_json,
                          step_signature)
from .fuzz_minimise import Budget, minimise
from .runner import Runner, StepResult

#: The fuzzer's default ``--step-timeout``: a step the C++ node leaves unanswered (it
#: ignores a connection after an invalid header, ``net D-03``) costs this much.
FUZZ_STEP_TIMEOUT_S = 3.0
#: A minimisation's bounds: predicate calls and seconds.
MINIMISE_ATTEMPTS = 40
MINIMISE_SECONDS = 30.0
SOURCE = "fuzz"
#: Errors of the harness itself (a node that will not start again) before a run gives up.
MAX_HARNESS_ERRORS = 5


class WideLoopbackHosts:
    """Source addresses ``127.A.B.C`` (A 1..254, B 0..255, C 1..254) in turn: an hour of
    executions opens tens of thousands of connections, and the runner's 250 addresses
    would come round again to one a node banned earlier in the same process."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> str:
        n, self._n = self._n, self._n + 1
        c, n = n % 254 + 1, n // 254
        b, a = n % 256, n // 256 % 254 + 1
        return f"127.{a}.{b}.{c}"


def inputs_bytes(steps: list[Step]) -> bytes:
    """One input as the bytes :attr:`FuzzStats.inputs_digest` hashes (its corpus JSON)."""
    return json.dumps([step_json(s) for s in steps], sort_keys=True).encode()


@dataclass(frozen=True)
class Finding:
    cls: str                    # unexplained | crash | hang
    subject: str                # the difference's subject, or the side that crashed or hung
    step: str                   # step signature: "send block", "rpc getblockhash"

    def describe(self) -> str:
        return f"{self.cls} {self.subject} at '{self.step}'"


def finding_of(result: StepResult, step: Step) -> Finding | None:
    """The finding a step's result makes, if any (module docstring)."""
    sig = step_signature(step)
    for side in sorted(result.observations):
        process = result.observations[side].get("process")
        if process == "crashed":
            return Finding("crash", side, sig)
        if process is not None:
            return Finding("hang", side, sig)
    if result.unexplained:
        subjects = sorted(f"{d['kind']}:{d['subject']}" for d in result.differences
                          if d["known"] is None)
        return Finding("unexplained", subjects[0] if subjects else "expect_same", sig)
    return None


@dataclass
class Played:
    results: list[StepResult]
    finding: Finding | None = None
    at: int = -1                         # index of the step that made it


@dataclass
class FuzzStats:
    seed: int
    executions: int = 0
    steps: int = 0
    fuzz_seconds: float = 0.0            # executing inputs
    minimise_seconds: float = 0.0
    setup_seconds: float = 0.0           # starts and rebases
    rebases: int = 0
    known: Counter = field(default_factory=Counter)          # catalogue ID -> steps
    unexplained: Counter = field(default_factory=Counter)    # subject -> executions
    crashes: Counter = field(default_factory=Counter)        # side -> executions
    hangs: Counter = field(default_factory=Counter)
    findings: list[dict] = field(default_factory=list)       # one per new signature
    harness_errors: list[str] = field(default_factory=list)
    aborted: str = ""
    inputs_digest: str = ""              # of every input run: equal for equal --seed and --runs

    @property
    def exec_per_s(self) -> float:
        return self.executions / self.fuzz_seconds if self.fuzz_seconds else 0.0

    def count(self, finding: Finding) -> None:
        {"unexplained": self.unexplained, "crash": self.crashes,
         "hang": self.hangs}[finding.cls][finding.subject] += 1

    @property
    def failing(self) -> bool:
        return bool(self.unexplained or self.crashes or self.hangs or self.aborted)


class Fuzzer:
    """The execution loop (module docstring); ``writer`` stores what it finds."""

    def __init__(self, runner: Runner, seeds: Seeds, generator: InputGenerator,
                 names: BlockNames, writer, clock=time.monotonic) -> None:
        self.runner, self.seeds, self.generator = runner, seeds, generator
        self.names, self.writer, self.clock = names, writer, clock
        self.stats = FuzzStats(generator.seed)
        self.base_tip: tuple | None = None
        self.dirty = True
        self.seen: set[Finding] = set()
        self._digest = hashlib.sha3_256()
        for side in runner.sides.values():
            side.hosts = WideLoopbackHosts()

    # ---- state ------------------------------------------------------------------
    def start(self) -> None:
        t0 = self.clock()
        self.runner.start()
        self._send_base()
        self.stats.setup_seconds += self.clock() - t0

    def rebase(self) -> None:
        """Both nodes on empty datadirs again, then the base chain.  Killed, not stopped:
        nothing of the old state is compared, and the C++ node can take the whole 15 s
        stop timeout to exit (a clean ``fresh`` step cost some 18 s a rebase)."""
        t0 = self.clock()
        sides = list(self.runner.sides.values())
        with ThreadPoolExecutor(len(sides)) as pool:
            list(pool.map(lambda side: side.replace_node(), sides))
        self._send_base()
        self.stats.rebases += 1
        self.stats.setup_seconds += self.clock() - t0

    def _send_base(self) -> None:
        steps = [Step(0, "connect and handshake", "reconnect")] + self.seeds.base
        for step in steps:
            result = self.runner.run_step(SOURCE, step, self.names.names)
            if result.outcome != "same":
                logger.info("base step {}: {}", step.name, result.outcome)
        self.base_tip = self._tips(result)
        self.dirty = self.base_tip is None

    @staticmethod
    def _tips(result: StepResult) -> tuple | None:
        """Both sides' (tip, height) if they agree, else None."""
        tips = {(o.get("tip"), o.get("height")) for o in result.observations.values()}
        if len(tips) != 1 or (None, None) in tips:
            return None
        return tips.pop()

    def _note_state(self, result: StepResult) -> None:
        if self.base_tip is None or self._tips(result) != self.base_tip:
            self.dirty = True

    # ---- executions -------------------------------------------------------------
    def play(self, steps: list[Step]) -> Played:
        """The steps in order (the first on a new connection) until the first finding."""
        if self.dirty:
            self.rebase()
        self.names.register(steps)
        played = Played([])
        for k, step in enumerate(steps):
            step = dataclasses.replace(step, new_connection=step.new_connection or k == 0)
            result = self.runner.run_step(SOURCE, step, self.names.names)
            played.results.append(result)
            self._note_state(result)
            finding = finding_of(result, step)
            if finding:
                played.finding, played.at = finding, k
                if finding.cls != "unexplained":       # a node was replaced: not the base
                    self.dirty = True
                break
        return played

    def execute(self, index: int) -> Played:
        steps = self.generator.input(index)
        self._digest.update(inputs_bytes(steps))
        self.stats.inputs_digest = self._digest.hexdigest()
        t0 = self.clock()
        played = self.play(steps)
        self.stats.fuzz_seconds += self.clock() - t0
        self.stats.executions += 1
        self.stats.steps += len(played.results)
        for result in played.results:
            for entry_id in {d["known"] for d in result.differences if d["known"]}:
                self.stats.known[entry_id] += 1
        finding = played.finding
        if finding is not None:
            self.stats.count(finding)
            if finding not in self.seen:
                self.seen.add(finding)
                logger.warning("input {}: {}", index, finding.describe())
                self._report(index, finding, steps[:played.at + 1])
        return played

    def _reproduces(self, finding: Finding, steps: list[Step]) -> bool:
        return bool(steps) and self.play(steps).finding == finding

    def _report(self, index: int, finding: Finding, steps: list[Step]) -> None:
        t0 = self.clock()
        budget = Budget(MINIMISE_ATTEMPTS, MINIMISE_SECONDS, self.clock)
        small = minimise(steps, lambda cand: self._reproduces(finding, cand), budget)
        small = [dataclasses.replace(s, index=k, new_connection=(k == 1))
                 for k, s in enumerate(small, 1)]
        self.dirty = True                              # replay from empty datadirs, as `run` will
        replayed = self._reproduces(finding, small)
        if not replayed and small != steps:
            self.dirty = True
            if self._reproduces(finding, steps):
                small, replayed = steps, True
        self.dirty = True
        self.stats.minimise_seconds += self.clock() - t0
        record = {"input": index, "class": finding.cls, "subject": finding.subject,
                  "step": finding.step, "attempts": budget.used,
                  "size_before": list(input_size(steps)), "size_after": list(input_size(small)),
                  "replayed_from_base": replayed}
        record["file"] = str(self.writer.write_finding(finding, self.seeds.base, small, record))
        self.stats.findings.append(record)

    def run(self, runs: int | None, seconds: float | None, progress) -> FuzzStats:
        """Executions until ``runs`` are done or ``seconds`` have passed; ``progress(stats,
        elapsed)`` is called after each."""
        t0, index = self.clock(), 0
        while (runs is None or index < runs) and (seconds is None or self.clock() - t0 < seconds):
            try:
                self.execute(index)
            except KeyboardInterrupt:                    # Ctrl-C: stop, but keep the summary
                self.stats.aborted = f"interrupted at input {index}"
                break
            except (TargetError, OSError) as exc:       # the harness lost a node: start again
                logger.warning("input {}: {}; starting both nodes again", index, exc)
                self.stats.harness_errors.append(f"input {index}: {exc}")
                self.dirty = True
                if len(self.stats.harness_errors) >= MAX_HARNESS_ERRORS:
                    self.stats.aborted = f"{MAX_HARNESS_ERRORS} harness errors; the last: {exc}"
                    break
            index += 1
            progress(self.stats, self.clock() - t0)
        return self.stats


__all__ = ["WideLoopbackHosts", "inputs_bytes", "Finding", "FuzzStats", "Fuzzer", "finding_of",
           "FUZZ_STEP_TIMEOUT_S", "MINIMISE_ATTEMPTS", "MINIMISE_SECONDS", "MAX_HARNESS_ERRORS"]
