"""The twelve targets, by the name of the C++ libFuzzer target each one answers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dilithion.tools.fuzz import targets_codec, targets_consensus, targets_hash, targets_state
from dilithion.tools.fuzz.seeds import SEEDS

__all__ = ["Target", "TARGETS", "target_named"]


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``run(data)`` with the node's own subject, and its seed builder."""

    name: str
    cpp_target: str
    subject: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


def _target(name: str, subject: str, run: Callable[[bytes], None]) -> Target:
    return Target(name, f"fuzz_{name}", subject, run, SEEDS[name])


TARGETS: dict[str, Target] = {t.name: t for t in (
    _target("address", "dilithion.crypto.mldsa Base58Check and addresses", targets_hash.fuzz_address),
    _target("block", "dilithion.primitives.block.Block and the block body checks", targets_codec.fuzz_block),
    _target("compactsize", "dilithion.net.serialize CompactSize", targets_codec.fuzz_compactsize),
    _target("difficulty", "dilithion.consensus.pow.retarget", targets_consensus.fuzz_difficulty),
    _target("merkle", "dilithion.consensus.validation.compute_merkle_root", targets_hash.fuzz_merkle),
    _target("network_message", "dilithion.net.serialize.NetMessage and dilithion.net.protocol payloads",
            targets_codec.fuzz_network_message),
    _target("sha3", "dilithion.crypto.sha3 and the message checksum", targets_hash.fuzz_sha3),
    _target("subsidy", "dilithion.consensus.pow.calculate_block_subsidy", targets_consensus.fuzz_subsidy),
    _target("template", "dilithion.mining.template.create_block_template", targets_state.fuzz_template),
    _target("transaction", "dilithion.primitives.transaction.Transaction", targets_codec.fuzz_transaction),
    _target("tx_validation", "dilithion.consensus.tx_validation basic and input checks",
            targets_consensus.fuzz_tx_validation),
    _target("utxo", "dilithion.node.utxo_set.UTXOSet (LevelDB)", targets_state.fuzz_utxo),
)}


def target_named(name: str) -> Target:
    """The target called ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown fuzz target {name!r} (known: {', '.join(TARGETS)})") from None
