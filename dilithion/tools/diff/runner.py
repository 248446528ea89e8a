"""Drive both nodes through a corpus, step by step, and classify every difference.

Both sides get each step at the same time (one thread per side); then each is
observed (``observe``), the two observations compared, and every difference
looked up in the catalogue.  A node that crashes or stops answering during a
step makes that step's outcome (with the last lines of its log) and is
replaced by a fresh node on a new datadir, so the run goes on.  Storage is
compared at every ``restart`` step and after the final clean stop.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loguru import logger

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.genesis import create_genesis_block
from dilithion.primitives.block import Block, Uint256
from dilithion.rpc.client import RPCCallError, RPCClientError
from dilithion.testing.node_process import NodeProcess, TargetError
from dilithion.testing.wire_peer import LoopbackHosts, NoReply, WirePeer

from .catalogue import Catalogue
from .corpus import Corpus, Step
from .observe import Difference, compare, normalise_rpc, normalise_wire, read_blocks_db
from .signature import StepSignatures

LOG_TAIL_LINES = 15
DRIVER_USER_AGENT = b"/dilithion-diff:0.1/"


@dataclass
class StepResult:
    corpus: str
    index: int
    name: str
    outcome: str                                   # same | differs (known: ...) | differs (UNEXPLAINED)
    differences: list[dict] = field(default_factory=list)
    observations: dict = field(default_factory=dict)
    expect_same_failed: list[str] = field(default_factory=list)
    on: str = ""                                   # the step's signature (signature.py)

    @property
    def unexplained(self) -> bool:
        return "UNEXPLAINED" in self.outcome


class Side:
    """One node, its driver connection, and what the corpus told it (for tip names)."""

    def __init__(self, target: NodeProcess, magic: int, step_timeout: float) -> None:
        self.target, self.magic, self.step_timeout = target, magic, step_timeout
        self.peer: WirePeer | None = None
        self.hosts = LoopbackHosts()

    def connect(self) -> list[tuple[str, bytes]]:
        """A new connection from the next loopback address; what the node sent on it."""
        self.close_peer()
        self.peer = WirePeer(self.magic, self.hosts.next(), DRIVER_USER_AGENT, keep_transcript=True)
        self.peer.connect(self.target.p2p_port, timeout=self.step_timeout)
        try:
            self.peer.handshake(timeout=self.step_timeout)
        except ConnectionError:
            pass                        # closed during the handshake: an observation
        return self.peer.barrier(self.step_timeout)

    def close_peer(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None

    def replace_node(self) -> None:
        """After a crash or hang: a fresh node on a new datadir."""
        self.close_peer()
        self.target.kill()
        self.target.stop()
        self.target.fresh()
        self.target.start()


def block_names(corpus: Corpus, params: ChainParams,
                signatures: StepSignatures | None = None) -> dict[str, str]:
    """16-digit prefix -> full hash of every block the corpus sends, and the genesis
    (hashed through ``signatures``' cache when given: the step signatures need them too)."""
    signatures = signatures or StepSignatures(params, RandomXHasher.for_key())
    names = {}
    blocks = [create_genesis_block(params)]
    for step in corpus.steps:
        if step.action == "send" and step.command == "block":
            try:
                blocks.append(Block.deserialize(step.payload, allow_trailing=True))
            except ValueError:
                continue
    for block in blocks:
        h = Uint256(signatures.block_hash(block)).get_hex()
        names[h[:16]] = h
    return names


def rpc_reply(node: NodeProcess, method: str, params) -> dict:
    """``{"result": ...}`` or ``{"error": {"code", "message"}}``, what the diff compares
    (the C++ params convention for both sides: an object is sent as ``[{...}]``)."""
    wire_params = [params] if isinstance(params, dict) else params
    try:
        return {"result": node.rpc(method, wire_params)}
    except RPCCallError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    except RPCClientError as exc:
        return {"error": {"code": None, "message": str(exc)}}


class Runner:
    def __init__(self, ref: NodeProcess, py: NodeProcess, catalogue: Catalogue,
                 params: ChainParams, step_timeout: float = 30.0) -> None:
        self.params = params
        self.sides = {"cpp": Side(ref, params.magic, step_timeout),
                      "python": Side(py, params.magic, step_timeout)}
        self.catalogue = catalogue
        self.signatures = StepSignatures(params)
        self.pool = ThreadPoolExecutor(2)

    # ---- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        list(self.pool.map(lambda s: s.target.start(), self.sides.values()))

    def stop(self) -> dict[str, dict]:
        """Stop both cleanly; the storage observation of each."""
        def one(side: Side) -> dict:
            side.close_peer()
            side.target.stop()
            obs = {"storage": read_blocks_db(side.target.datadir)}
            if side.target.killed_on_stop:
                obs["stop"] = "killed after SIGTERM timeout"
            return obs
        return dict(zip(self.sides, self.pool.map(one, self.sides.values())))

    def close(self) -> None:
        for side in self.sides.values():
            side.close_peer()
            side.target.kill()
            side.target.stop()
        self.pool.shutdown()

    # ---- steps ------------------------------------------------------------------
    def run_corpus(self, corpus: Corpus) -> list[StepResult]:
        """Every step of one corpus (after a handshake step of its own)."""
        names = block_names(corpus, self.params, self.signatures)
        steps = list(corpus.steps)
        results = []
        if steps[0].action == "fresh":              # a corpus that starts from the genesis
            results.append(self._do(corpus, steps.pop(0), names))
        results.append(self._do(corpus, Step(0, "connect and handshake", "reconnect"), names))
        for step in steps:
            results.append(self._do(corpus, step, names))
        return results

    def final_storage(self, label: str) -> StepResult:
        """Stop both cleanly and compare their block databases."""
        obs = self.stop()
        return self._classify(label, Step(0, "final clean stop: storage", "restart"), obs)

    def run_step(self, source: str, step: Step, names: dict) -> StepResult:
        """One step on both nodes, observed, compared and classified: what ``dilithion-diff
        fuzz`` drives, one generated step at a time (``names``: 16-digit block prefix ->
        full hash, for the C++ tip in its log)."""
        return self._do(Corpus(source, "testnet", ""), step, names)

    def _do(self, corpus: Corpus, step: Step, names: dict) -> StepResult:
        logger.info("step {} ({}): {}", step.index, corpus.source, step.name)
        if step.action in ("restart", "fresh"):
            obs = self.stop()
            for side, o in zip(self.sides.values(), obs.values()):
                if step.action == "fresh":          # the old state is discarded, not compared
                    o.pop("storage")
                    side.target.fresh()
                o.update(self._restart(side, names))
        else:
            obs = dict(zip(self.sides, self.pool.map(lambda s: self._observe(s, step, names),
                                                     self.sides.values())))
        return self._classify(corpus.source, step, obs)

    def _restart(self, side: Side, names: dict) -> dict:
        try:
            side.target.start()
            side.connect()
            return self._tip(side, names)
        except (TargetError, OSError, NoReply) as exc:
            tail = side.target.log_tail(LOG_TAIL_LINES)
            side.replace_node()
            side.connect()
            return {"process": "failed to restart", "error": str(exc), "log_tail": tail}

    def _tip(self, side: Side, names: dict) -> dict:
        tip, height = side.target.tip(names)
        return {"tip": tip, "height": height}

    def _observe(self, side: Side, step: Step, names: dict) -> dict:
        obs: dict = {}
        try:
            if step.action == "reconnect":
                obs["wire"] = normalise_wire(side.connect())
            elif step.action == "sleep":
                time.sleep(step.seconds)
            elif step.action == "rpc":
                obs["rpc"] = normalise_rpc(rpc_reply(side.target, step.method, step.params))
                obs["rpc_method"] = step.method
            else:
                obs.update(self._send(side, step))
            if obs.get("disconnect"):
                side.target.settle_exit()      # a closed connection may be a dying process
            if not side.target.is_running():
                raise NoReply()
            obs.update(self._tip(side, names))
        except NoReply:
            if step.action in ("send", "reconnect") and side.peer is not None \
                    and "wire" not in obs:      # what it did send before giving up is compared
                obs["wire"] = normalise_wire(side.peer.take_transcript())
            if side.target.is_running() and self._answers_new_connection(side):
                obs["no_reply"] = True          # this connection is stuck, the node is not
                if step.action == "send":
                    obs.update(disconnect=False, ban=False)
                obs.update(self._tip(side, names))
                return obs
            return self._replace(side, step, "hung" if side.target.is_running() else "crashed",
                                 "no reply")
        except (OSError, TargetError) as exc:
            return self._replace(side, step, "hung" if side.target.is_running() else "crashed",
                                 str(exc) or type(exc).__name__)
        return obs

    def _answers_new_connection(self, side: Side) -> bool:
        """A node that left one connection unanswered: does it still handshake on a new one?"""
        try:
            side.connect()
            return not side.peer.closed
        except (OSError, NoReply):
            return False

    def _replace(self, side: Side, step: Step, what: str, error: str) -> dict:
        """That step's outcome for a crashed or hung node, which a fresh node replaces."""
        obs = {"process": what, "error": error, "log_tail": side.target.log_tail(LOG_TAIL_LINES)}
        logger.warning("{} node {} at step {}; starting a fresh one", side.target.name, what,
                       step.index)
        side.replace_node()
        side.connect()
        return obs

    def _send(self, side: Side, step: Step) -> dict:
        if side.peer is None or side.peer.closed or step.new_connection:
            side.connect()
        peer = side.peer
        try:
            peer.send_frame(step.command, step.payload, checksum=step.checksum, size=step.size,
                            magic=step.magic)
        except OSError:
            pass                        # the node closed: the barrier reports the disconnect
        wire = peer.barrier(side.step_timeout)
        obs = {"wire": normalise_wire(wire), "disconnect": peer.closed, "ban": False}
        if peer.closed:
            obs["ban"] = not peer.accepted_again()
            side.close_peer()
        return obs

    def _classify(self, source: str, step: Step, obs: dict) -> StepResult:
        diffs = compare(obs["cpp"], obs["python"])
        on = self.signatures.of(step)
        known, unexplained, out = [], 0, []
        for d in diffs:
            entry = self.catalogue.explain(d, on)
            row = d.to_json()
            row["known"] = entry.id if entry else None
            out.append(row)
            if entry is None:
                unexplained += 1
            elif entry.id not in known:
                known.append(entry.id)
        failed = [k for k in step.expect_same
                  if any(_comparison_of(d) == k for d in diffs)]
        if unexplained or failed:
            outcome = "differs (UNEXPLAINED)"
        elif diffs:
            outcome = f"differs (known: {', '.join(known)})"
        else:
            outcome = "same"
        return StepResult(source, step.index, step.name, outcome, out,
                          {k: _summary(v) for k, v in obs.items()}, failed, on)


def _comparison_of(diff: Difference) -> str:
    return diff.subject if diff.kind == "consensus" else diff.kind


def _summary(obs: dict) -> dict:
    """The observation as stored in report.json (storage as a key count, not every byte)."""
    out = {k: v for k, v in obs.items() if k != "storage"}
    if "storage" in obs:
        out["storage_keys"] = len(obs["storage"])
    return out
