"""Mutants of our node that ``dilithion-diff`` exists to catch (issue 24, item 2).

Each is a small difference a port of the C++ node could really have: a tie
decided the other way, a getdata answered wrongly, an extra disconnect, an RPC
error with another code, a storage record with a byte changed.
``tests/test_diff_mutants.py`` runs each one as the Python side of
``dilithion-diff run --self`` against the unmutated node, with the real
divergence catalogue, and asserts the run reports it UNEXPLAINED at the step
(and as the difference) named in :data:`CAUGHT_AT`.  Every patch changes the
node only in the mutant's own process; nothing here ships.
"""
from __future__ import annotations

from dataclasses import dataclass

from defects import defect

HEX_DIGITS = "0123456789abcdef"
#: The built-in main corpus's last step: both nodes stop, their block databases are compared.
RESTART_STEP = "restart both nodes (after the orphan case)"


@dataclass(frozen=True)
class Caught:
    """Where a mutant must be caught: the step name (in the built-in main corpus) and the
    unexplained difference's kind and subject."""

    step: str
    kind: str
    subject: str


#: mutant name -> where ``dilithion-diff`` must report it.
CAUGHT_AT: dict[str, Caught] = {}


def diff_mutant(name: str, what: str, caught: Caught):
    """Register a defect (:func:`defects.defect`) and where the diff must catch it."""
    def wrap(func):
        CAUGHT_AT[name] = caught
        return defect(name, what)(func)
    return wrap


# ---- consensus ------------------------------------------------------------------------
@diff_mutant("tie-newcomer-wins", "a block with exactly the tip's chain work replaces the tip"
             " (strictly-more-work compared with >= instead of >): the first seen must stay",
             Caught("block G8: a tie (first seen stays the tip)", "consensus", "tip"))
def tie_newcomer_wins() -> None:
    from dilithion.consensus.chain import ChainState
    accept, store_side = ChainState._accept, ChainState._store_side

    def _accept(self, block, block_hash, change, requested=True):
        self._mutant_change = change            # under the chain lock, for _store_side
        return accept(self, block, block_hash, change, requested)

    def _store_side(self, index, block, tip, quiet=False):
        if not quiet and index.chain_work == tip.chain_work:
            return self._activate(index, block, self.find_fork(tip, index), self._mutant_change)
        return store_side(self, index, block, tip, quiet)
    ChainState._accept, ChainState._store_side = _accept, _store_side


@diff_mutant("no-reorganisation", "a branch that outweighs the tip is stored as a side branch"
             " and never made the tip: only blocks that extend the tip are connected",
             Caught("block F8: the side branch outweighs V6 (reorganisation, depth 1)",
                    "consensus", "tip"))
def no_reorganisation() -> None:
    from dilithion.consensus.chain import ChainState
    activate = ChainState._activate

    def _activate(self, index, block, fork, change):
        tip = self._main[-1]
        if index.prev is not tip:
            return self._store_side(index, block, tip)
        return activate(self, index, block, fork, change)
    ChainState._activate = _activate


# ---- wire replies ----------------------------------------------------------------------
@diff_mutant("getdata-tip-notfound", "a getdata for the tip block is answered with notfound"
             " (as if the newest block were not stored yet)",
             Caught("getdata of the tip", "wire", "wire.block"))
def getdata_tip_notfound() -> None:
    from dilithion.net.block_serve import BlockServer
    from dilithion.net.protocol import InvType, MsgGetdata
    on_getdata = BlockServer.on_getdata

    def patched(self, peer, msg) -> None:
        tip = bytes(self.chain.tip().hash)
        at_tip = [i for i in msg.inv if i.type == InvType.MSG_BLOCK_INV and bytes(i.hash) == tip]
        if at_tip:
            self._answer_missing(peer, at_tip)
        rest = [i for i in msg.inv if i not in at_tip]
        if rest:
            on_getdata(self, peer, MsgGetdata(rest))
    BlockServer.on_getdata = patched


@diff_mutant("getdata-serves-parent", "a getdata for a block is answered with that block's"
             " parent (the block read by the wrong hash)",
             Caught("getdata of the tip", "wire", "wire.block.payload_hex"))
def getdata_serves_parent() -> None:
    from dilithion.net.block_serve import BlockServer
    from dilithion.primitives.block import Uint256
    serve_block = BlockServer._serve_block

    def _serve_block(self, peer, h: bytes) -> bool:
        index = self.chain.get_index(Uint256(h))
        if index is not None and index.prev is not None:
            h = bytes(index.prev.hash)
        return serve_block(self, peer, h)
    BlockServer._serve_block = _serve_block


# ---- disconnects -----------------------------------------------------------------------
@diff_mutant("disconnect-on-getaddr", "the sender of a getaddr is disconnected (no score, no"
             " ban): a peer asking for addresses is treated as a spy",
             Caught("getaddr", "disconnect", "disconnect"))
def disconnect_on_getaddr() -> None:
    from dilithion.net.addr_relay import AddrRelay

    def on_getaddr(self, peer, state, msg) -> None:
        self.transport.disconnect(peer.id, "getaddr (mutant)")
    AddrRelay.on_getaddr = on_getaddr


@diff_mutant("disconnect-on-duplicate-block", "the sender of a block we already have is"
             " disconnected (no score, no ban)",
             Caught("duplicate: the tip block again", "disconnect", "disconnect"))
def disconnect_on_duplicate_block() -> None:
    from dilithion.net.block_fetch import BlockFetch
    on_block = BlockFetch.on_block

    def patched(self, peer, state, msg) -> None:
        known = (self.chain.precheck_block(msg.block) is None
                 and self.chain.knows_block(self.chain.hash_block(msg.block)))
        on_block(self, peer, state, msg)
        if known:
            self.transport.disconnect(peer.id, "duplicate block (mutant)")
    BlockFetch.on_block = patched


# ---- RPC -------------------------------------------------------------------------------
def _replace_rpc(name: str, wrap) -> None:
    """Replace RPC method ``name`` in the registry the node binds its methods from."""
    from dilithion.rpc import methods
    for i, (rpc_name, description, func) in enumerate(methods._REGISTRY):
        if rpc_name == name:
            methods._REGISTRY[i] = (rpc_name, description, wrap(func))
            return
    raise LookupError(f"no RPC method {name!r} to mutate")


@diff_mutant("getblockhash-negative-misc-error", "getblockhash with a negative height fails"
             " with code -1 (RPC_MISC_ERROR) instead of -8 (RPC_INVALID_PARAMETER)",
             Caught('rpc getblockhash {"height": -1}', "rpc", "rpc.getblockhash"))
def getblockhash_negative_misc_error() -> None:
    from dilithion.rpc.methods import RPC_MISC_ERROR, RPCError

    def wrap(real):
        def rpc_getblockhash(self, height: int) -> dict:
            if height < 0:
                raise RPCError(RPC_MISC_ERROR, "Height parameter out of range")
            return real(self, height)
        return rpc_getblockhash
    _replace_rpc("getblockhash", wrap)


@diff_mutant("getblockhash-refuses-height-1", "getblockhash refuses heights 0 and 1 with -8"
             " (a range check that starts at 2): a valid height gets an error",
             Caught('rpc getblockhash {"height": 1}', "rpc", "rpc.getblockhash"))
def getblockhash_refuses_height_1() -> None:
    from dilithion.rpc.methods import RPC_INVALID_PARAMETER, RPCError

    def wrap(real):
        def rpc_getblockhash(self, height: int) -> dict:
            if height < 2:
                raise RPCError(RPC_INVALID_PARAMETER, "Height parameter out of range")
            return real(self, height)
        return rpc_getblockhash
    _replace_rpc("getblockhash", wrap)


# ---- storage ---------------------------------------------------------------------------
@diff_mutant("index-record-ntx-byte", "every block-index record is written with nTx 1 (the"
             " C++ leaves it 0): one byte of the record's data differs (its byte-sum checksum"
             " follows, so our node still reads it back)",
             Caught(RESTART_STEP, "storage", "storage.i.value"))
def index_record_ntx_byte() -> None:
    from dilithion.node import blockchain_storage as storage
    encode = storage.encode_index_record

    class WithOneTx:
        def __init__(self, index) -> None:
            self._index = index

        def __getattr__(self, name):
            return 1 if name == "n_tx" else getattr(self._index, name)

    def encode_index_record(block_hash, index) -> bytes:
        return encode(block_hash, WithOneTx(index))
    storage.encode_index_record = encode_index_record


@diff_mutant("bestblock-one-byte", "the bestblock record is written with its last hex digit"
             " changed (one byte of the 64): the stored tip names another hash",
             Caught(RESTART_STEP, "storage", "storage.bestblock.value"))
def bestblock_one_byte() -> None:
    from dilithion.node.blockchain_storage import BEST_BLOCK_KEY, BlockBatch

    def write_best_block(self, block_hash) -> None:
        text = block_hash.get_hex()
        changed = text[:-1] + HEX_DIGITS[(HEX_DIGITS.index(text[-1]) + 1) % 16]
        self.puts.append((BEST_BLOCK_KEY, changed.encode("ascii")))
    BlockBatch.write_best_block = write_best_block
