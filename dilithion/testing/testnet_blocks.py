"""Testnet blocks with real proof of work, mined once: the C++ vector chain and ours.

Testnet RandomX in light mode runs at a few dozen hashes a second here, so no
run mines a testnet block.  Two sources hold blocks mined before:

* the C++ vector chain ``V0``..``V6`` (``shared/vectors/cpp-testnet-chain.json``,
  beside the repository; :data:`DEFAULT_VECTORS`), blocks as the C++ node sent them;
* :data:`MINED_FILE` (committed), the blocks ``dilithion-diff mine-corpus`` mined
  on that chain, keyed by name (``dilithion/tools/diff/mine.py`` says which).

``dilithion-diff`` builds its corpora from both; ``dilithion-lab``'s ``mixed``
scenario feeds them to a network of Python and C++ nodes.
"""
from __future__ import annotations

import json
from pathlib import Path

from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.primitives.block import Block, Uint256

__all__ = ["DEFAULT_VECTORS", "MINED_FILE", "known_blocks", "vector_blocks"]

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Name -> hex block payload of every block ``dilithion-diff mine-corpus`` mined.
MINED_FILE = DATA_DIR / "mined-blocks.json"
#: The C++ vector chain, in the ``shared/`` directory beside the repository.
DEFAULT_VECTORS = (Path(__file__).resolve().parents[3] / "shared" / "vectors"
                   / "cpp-testnet-chain.json")


def vector_blocks(vectors_file: Path) -> dict[str, tuple[Block, Uint256]]:
    """``V0``..``V6`` from the C++ vector chain, as the C++ node sent them."""
    data = json.loads(vectors_file.read_text())
    return {f"V{b['height']}": (Block.deserialize(bytes.fromhex(b["block_message_payload_hex"]),
                                                  allow_trailing=True),
                                Uint256.from_hex(b["hash"])) for b in data["blocks"]}


def known_blocks(vectors_file: Path, mined: dict[str, str],
                 hasher: RandomXHasher) -> dict[str, tuple[Block, Uint256]]:
    """The vector chain and every mined block (name -> hex payload), each with its hash."""
    known = vector_blocks(vectors_file)
    for name, payload in mined.items():
        block = Block.deserialize(bytes.fromhex(payload))
        known[name] = (block, block.get_hash(hasher))
    return known
