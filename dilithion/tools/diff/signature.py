"""A step's signature: short, stable text saying what a corpus step *is*, for the catalogue.

A catalogue matcher's ``on`` regex must fullmatch the signature of the step a
difference was seen on (``docs/DIFF.md``, "The divergence catalogue").  Step
*names* are free text (the fuzzer makes them up), so nothing is decided by
them; the signature is computed from the step's bytes alone:

* ``send <command>`` then tags, each a word:

  - framing, in header order: ``bad-magic`` (not the testnet magic),
    ``bad-size`` (announced size is not the payload's), ``bad-checksum``; a step
    with a framing tag gets no payload tags (the node never reads the payload
    as that command);
  - payload of a command the node decodes: ``oversized`` (over the command's
    own limit, refused before decoding), ``undecodable``, ``trailing`` (bytes
    after the last field);
  - a decodable ``block``: ``bad-bits`` (``nBits`` outside the testnet range)
    or ``bad-pow`` (RandomX hash not below the target), so a refused block
    never shares a signature with a valid one.

  The command is written as sent; a byte that is not printable ASCII, a space
  or a backslash is written ``\\xNN``.  Payload tags are those of the command
  both nodes dispatch on, the field up to its first NUL (``inv\\x00x`` with a
  byte after its last item is ``send inv\\x00x trailing``).
* ``rpc <method>``, then `` <params>`` (canonical JSON) when the step has any;
* ``reconnect``, ``restart`` (also the final clean stop), ``fresh``, ``sleep``.

Examples: ``send block``, ``send block bad-pow``, ``send ping bad-checksum``,
``send block bad-size``, ``send pingpingping``, ``send inv trailing``,
``rpc getblockhash {"height": 1}``, ``restart``.
"""
from __future__ import annotations

from dilithion.consensus.pow import compact_to_big, hash_less_than
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.net.protocol import MESSAGE_TYPES
from dilithion.net.serialize import DataStream, calculate_checksum
from dilithion.primitives.block import Block

from .corpus import Step
from .observe import dumps

TESTNET = ChainParams.testnet()


def command_text(command: str) -> str:
    """The command as signature text: printable ASCII as is, anything else ``\\xNN``."""
    return "".join(c if "!" <= c <= "~" and c != "\\" else f"\\x{ord(c) & 0xFF:02x}"
                   for c in command.encode("ascii", "replace").decode("ascii"))


def dispatched_command(command: str) -> str:
    """The command both nodes act on: the field up to its first NUL (the C++ ``GetCommand``),
    so ``block\\x00x`` is read as a ``block`` and its payload gets a ``block``'s tags."""
    return command.split("\0", 1)[0]


def framing_tags(step: Step, params: ChainParams = TESTNET) -> list[str]:
    """What is wrong with the frame's header, in header order."""
    tags = []
    if step.magic is not None and step.magic != params.magic:
        tags.append("bad-magic")
    if step.size is not None and step.size != len(step.payload):
        tags.append("bad-size")
    if step.checksum is not None and step.checksum != calculate_checksum(step.payload):
        tags.append("bad-checksum")
    return tags


def payload_tags(command: str, payload: bytes) -> list[str]:
    """What is wrong with the payload of a command our decoder knows (none for others)."""
    cls = MESSAGE_TYPES.get(command)
    if cls is None:
        return []
    if cls.max_payload_size is not None and len(payload) > cls.max_payload_size:
        return ["oversized"]
    stream = DataStream(payload)
    try:
        cls.deserialize_from(stream)
    except ValueError:                      # SerializationError and its relatives
        return ["undecodable"]
    return ["trailing"] if stream.remaining() else []


class StepSignatures:
    """Computes signatures; keeps the RandomX hash of every block header it has judged
    (a run signs each block step once per difference, the depth corpus has 203 blocks)."""

    def __init__(self, params: ChainParams = TESTNET, hasher: RandomXHasher | None = None) -> None:
        self.params = params
        self._hasher = hasher
        self._hashes: dict[bytes, bytes] = {}

    def of(self, step: Step) -> str:
        """The signature of ``step`` (module docstring)."""
        if step.action == "send":
            return " ".join([f"send {command_text(step.command)}", *self._send_tags(step)])
        if step.action == "rpc":
            return f"rpc {step.method}" + (f" {dumps(step.params)}" if step.params is not None
                                           else "")
        return step.action

    def _send_tags(self, step: Step) -> list[str]:
        tags = framing_tags(step, self.params)
        if tags:
            return tags
        command = dispatched_command(step.command)
        tags = payload_tags(command, step.payload)
        if command == "block" and "undecodable" not in tags and "oversized" not in tags:
            tags += self._proof_of_work_tags(Block.deserialize(step.payload, allow_trailing=True))
        return tags

    def _proof_of_work_tags(self, block: Block) -> list[str]:
        bits = block.header.bits
        if not self.params.pow_min_bits <= bits <= self.params.pow_max_bits:
            return ["bad-bits"]
        return [] if hash_less_than(self.block_hash(block), compact_to_big(bits)) else ["bad-pow"]

    def block_hash(self, block: Block) -> bytes:
        """The block's RandomX hash (cached by header bytes)."""
        header = block.header.serialize()
        if header not in self._hashes:
            if self._hasher is None:
                self._hasher = RandomXHasher.for_key()
            self._hashes[header] = self._hasher.hash(header)
        return self._hashes[header]
