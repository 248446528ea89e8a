"""The inputs of ``dilithion-diff fuzz``: the seeds, the base state, and one input per execution.

Seeds are the built-in corpus's ``send`` and ``rpc`` steps and the blocks with
real proof of work (the C++ vector chain ``V1``..``V6`` and the committed
mined blocks of the main corpus and the depth corpus's edge blocks; the
100-block ``A``/``B`` branches are left out: ``A7`` extending the base tip would
move it on almost every draw).  The base state both nodes are brought to
before the executions is the vector chain.

An input is one to :data:`MAX_STEPS` steps, each a seed with one or two
mutations, sometimes with a step-level change (a step duplicated, two swapped,
a step spliced in from another seed).  Input ``i`` of seed ``S`` is drawn from
``random.Random(f"{S}:{i}")`` alone, so it is the same in every run, whatever
the nodes answered before it.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.genesis import create_genesis_block
from dilithion.core.chainparams import ChainParams
from dilithion.primitives.block import Block, BlockHeader, HEADER_SIZE

from .corpus import Step, load_corpus
from .fuzz_mutate import all_mutators

#: Steps in one execution (each on a new connection: a short input keeps findings small).
MAX_STEPS = 3
#: Draws for a mutation that applies before the seed is used as it is.
MUTATION_TRIES = 6
#: Chance that a step is a seed block (with a mutated body or header), or an RPC call.
P_BLOCK, P_RPC = 0.2, 0.08
#: Chance of a second mutation on the same step, and of a step-level change.
P_SECOND, P_STEP_LEVEL = 0.3, 0.2
#: Mined blocks left out of the seeds (module docstring).
LONG_BRANCH = re.compile(r"[AB]\d+$")


class BlockNames:
    """16-digit prefix -> full hash of every block sent (the C++ tip is read from its
    log by that prefix); each new header is hashed once (RandomX, light mode)."""

    def __init__(self, params: ChainParams) -> None:
        self.hasher = RandomXHasher.for_key()
        self.names: dict[str, str] = {}
        self._headers: dict[bytes, bytes] = {}
        self.register_block(create_genesis_block(params).serialize())

    def register_block(self, payload: bytes) -> bytes | None:
        """The block's hash (registered), or None if the payload has no whole header."""
        if len(payload) < HEADER_SIZE:
            return None
        header = payload[:HEADER_SIZE]
        if header not in self._headers:
            h = BlockHeader.deserialize(header).get_hash(self.hasher)
            self._headers[header] = bytes(h)
            self.names[h.get_hex()[:16]] = h.get_hex()
        return self._headers[header]

    def register(self, steps: list[Step]) -> None:
        for step in steps:
            if step.action == "send" and step.command == "block":
                self.register_block(step.payload)


@dataclasses.dataclass
class Seeds:
    base: list[Step]                 # the vector chain V1..V6, in order
    sends: list[Step]
    rpcs: list[Step]
    blocks: list[Step]               # blocks with real proof of work
    hashes: list[bytes]              # their hashes (for inv, getdata, getblocks)


def load_seeds(corpus_file: Path, vectors_file: Path, mined_file: Path,
               names: BlockNames) -> Seeds:
    """The seeds (module docstring); every seed block is registered in ``names``."""
    corpus = load_corpus(corpus_file)
    vectors = json.loads(vectors_file.read_text())["blocks"]
    base = [Step(0, f"base: vector block {b['height']}", "send", command="block",
                 payload=bytes.fromhex(b["block_message_payload_hex"]))
            for b in vectors if b["height"] > 0]
    mined = json.loads(mined_file.read_text())
    blocks = base + [Step(0, f"mined block {name}", "send", command="block",
                          payload=bytes.fromhex(payload))
                     for name, payload in mined.items() if not LONG_BRANCH.match(name)]
    hashes = [names.register_block(b.payload) for b in blocks]
    sends = [dataclasses.replace(s, expect_same=(), new_connection=False)
             for s in corpus.steps if s.action == "send"]
    rpcs = [dataclasses.replace(s, expect_same=()) for s in corpus.steps if s.action == "rpc"]
    return Seeds(base, sends, rpcs, blocks, hashes)


class InputGenerator:
    """Input ``i`` for a seed (module docstring)."""

    def __init__(self, seeds: Seeds, seed: int) -> None:
        self.seeds, self.seed = seeds, seed
        self.mutators = all_mutators(seeds.hashes, [b.payload for b in seeds.blocks])

    def input(self, index: int) -> list[Step]:
        rng = random.Random(f"{self.seed}:{index}")
        steps = [self._one(rng) for _ in range(rng.randint(1, MAX_STEPS))]
        if rng.random() < P_STEP_LEVEL:
            steps = self._step_level(rng, steps)
        out = []
        for k, step in enumerate(steps[:MAX_STEPS + 1], 1):
            out.append(dataclasses.replace(step, index=k, new_connection=(k == 1),
                                           name=f"fuzz {self.seed}:{index}.{k} {step.name}"))
        return out

    def _one(self, rng: random.Random) -> Step:
        draw = rng.random()
        pool = (self.seeds.blocks if draw < P_BLOCK
                else self.seeds.rpcs if draw < P_BLOCK + P_RPC else self.seeds.sends)
        step = rng.choice(pool)
        for _ in range(1 + (rng.random() < P_SECOND)):
            step = self.mutate(rng, step)
        return step

    def mutate(self, rng: random.Random, step: Step) -> Step:
        """``step`` with one mutation that applies (the seed itself if none did)."""
        mutators = [m for m in self.mutators if m.action == step.action]
        weights = [m.weight for m in mutators]
        for _ in range(MUTATION_TRIES if mutators else 0):
            mutated = rng.choices(mutators, weights)[0](rng, step)
            if mutated is not None:
                return mutated
        return step

    def _step_level(self, rng: random.Random, steps: list[Step]) -> list[Step]:
        op = rng.choice(("duplicate", "swap", "splice"))
        steps = list(steps)
        if op == "duplicate":
            i = rng.randrange(len(steps))
            steps.insert(i, dataclasses.replace(steps[i], name=steps[i].name + "; step: again"))
        elif op == "swap" and len(steps) > 1:
            i, j = rng.sample(range(len(steps)), 2)
            steps[i], steps[j] = steps[j], steps[i]
        else:
            other = self._one(rng)
            steps.insert(rng.randrange(len(steps) + 1),
                         dataclasses.replace(other, name=other.name + "; step: spliced"))
        return steps


def step_signature(step: Step) -> str:
    """What kind of step it is, without its bytes: ``send block``, ``rpc getblockhash``."""
    if step.action == "send":
        return f"send {step.command}"
    if step.action == "rpc":
        return f"rpc {step.method}"
    return step.action


def step_json(step: Step) -> dict:
    """A step as a corpus file writes it (``docs/DIFF.md``, corpus format)."""
    out: dict = {"name": step.name}
    if step.action == "send":
        out.update(send=step.command, payload_hex=step.payload.hex())
        if step.checksum is not None:
            out["checksum_hex"] = step.checksum.hex()
        for key in ("size", "magic"):
            if getattr(step, key) is not None:
                out[key] = getattr(step, key)
        if step.new_connection:
            out["new_connection"] = True
    elif step.action == "rpc":
        out["rpc"] = step.method
        if step.params is not None:
            out["params"] = step.params
    elif step.action == "sleep":
        out["sleep"] = step.seconds
    else:
        out[step.action] = True
    if step.expect_same:
        out["expect_same"] = list(step.expect_same)
    return out


def input_size(steps: list[Step]) -> tuple[int, int]:
    """(steps, payload bytes): what minimisation makes smaller."""
    return len(steps), sum(len(s.payload) for s in steps)


__all__ = ["BlockNames", "Seeds", "load_seeds", "InputGenerator", "step_signature", "step_json",
           "input_size", "MAX_STEPS"]
