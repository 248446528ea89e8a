"""The node's RPC methods (the ``RPC_*`` handlers of ``src/rpc/server.cpp``).

Each handler takes the bound named parameters (:mod:`dilithion.rpc.params`)
and returns a JSON-serialisable result.  Result shapes and messages follow the
C++ handlers wherever the C++ would have succeeded (``cli`` 3.9), so a client
written for either node sees the same JSON; where the C++ answer is wrong the
Python answer is the true one (``cli 6.3 #37``, listed in ``docs/RPC.md``).

A component that is not wired into the context (``None``) yields -32603
``<Component> not initialized``, the C++ messages.  The C++ checks components
in a fixed order per method; the same order is kept here.
"""
from __future__ import annotations

import importlib.metadata
import ipaddress
import time
from dataclasses import dataclass
from types import MethodType
from typing import Any, Callable

from loguru import logger

from dilithion.consensus.chain import BlockStatus
from dilithion.consensus.pow import compact_to_big, get_median_time_past
from dilithion.crypto.mldsa import address_to_pub_key_hash
from dilithion.mining.template import search_nonce
from dilithion.net.protocol import PROTOCOL_VERSION, USER_AGENT
from dilithion.net.serialize import SerializationError
from dilithion.primitives.block import Uint256
from dilithion.primitives.transaction import Transaction

__all__ = ["RPCError", "RPCMethod", "NodeRPC",
           "RPC_PARSE_ERROR", "RPC_INVALID_REQUEST", "RPC_METHOD_NOT_FOUND", "RPC_INVALID_PARAMS",
           "RPC_INTERNAL_ERROR", "RPC_MISC_ERROR", "RPC_INVALID_ADDRESS_OR_KEY",
           "RPC_INVALID_PARAMETER", "RPC_DESERIALIZATION_ERROR", "RPC_VERIFY_REJECTED",
           "RPC_CLIENT_NODE_NOT_CONNECTED", "RPC_CLIENT_NODE_ALREADY_ADDED",
           "RPC_CLIENT_INVALID_IP_OR_SUBNET"]

# JSON-RPC 2.0 codes
RPC_PARSE_ERROR = -32700
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602
RPC_INTERNAL_ERROR = -32603
# application codes (the values bitcoind uses for the same situations)
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5          # block / transaction not found
RPC_INVALID_PARAMETER = -8               # well-typed but unacceptable value
RPC_DESERIALIZATION_ERROR = -22          # hex or transaction bytes do not decode
RPC_VERIFY_REJECTED = -26                # transaction refused by validation / mempool
RPC_CLIENT_NODE_NOT_CONNECTED = -29      # disconnectnode / addnode remove: no such peer
RPC_CLIENT_NODE_ALREADY_ADDED = -23      # setban add: already banned
RPC_CLIENT_INVALID_IP_OR_SUBNET = -30    # setban: bad subnet, or remove of an unbanned one


#: ``generatetoaddress`` limits (bitcoind's default for maxtries).
MAX_GENERATE_BLOCKS = 1000
DEFAULT_GENERATE_MAXTRIES = 1_000_000


class _HashCounter:
    """Hashes left for one ``generatetoaddress`` call (only its RPC thread touches it)."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def count(self) -> None:
        self.left -= 1


class RPCError(Exception):
    """A handler's refusal, sent as a JSON-RPC error object (C++ ``RPCResponse::Error``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RPCMethod:
    """One served method: name, ``help`` description and bound handler (C++ ``RPCHandler``)."""

    name: str
    description: str
    handler: Callable[..., Any]


_REGISTRY: list[tuple[str, str, Callable]] = []     # (rpc name, description, function)


def rpc_method(name: str, description: str):
    """Register ``rpc_<name>`` with its one-line ``help`` description (registration order).

    The function is bound to the :class:`NodeRPC` instance, so methods may also
    live in other modules (``def rpc_x(rpc, ...)``) that this registry imports."""
    def register(func):
        _REGISTRY.append((name, description, func))
        return func
    return register


def _parse_hash(text: str, what: str) -> Uint256:
    """Exactly 64 hex digits (the C++ ``SetHex`` accepts almost anything, ``cli 6.3 #29``)."""
    try:
        return Uint256.from_hex(text)
    except ValueError:
        raise RPCError(RPC_INVALID_PARAMETER,
                       f"Invalid {what} parameter format (expected 64 hex digits)") from None


def _parse_tx_hex(text: str) -> Transaction:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise RPCError(RPC_DESERIALIZATION_ERROR, "Invalid hex string") from None
    if not raw:
        raise RPCError(RPC_DESERIALIZATION_ERROR, "Invalid hex string")
    try:
        return Transaction.from_bytes(raw)
    except (SerializationError, ValueError) as exc:
        raise RPCError(RPC_DESERIALIZATION_ERROR, f"Failed to deserialize transaction: {exc}") from None


def _parse_node_address(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port); -8 for anything else."""
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise RPCError(RPC_INVALID_PARAMETER, f"Invalid node address: {text}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
        port = int(port_text) if port_text else default_port
        if not (port_text.isdigit() or not port_text) or not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise RPCError(RPC_INVALID_PARAMETER, f"Invalid node address: {text}"
                       " (expected <ipv4>[:<port>] or [<ipv6>]:<port>)") from None
    return host, port


def _chain_name(params) -> str:
    """``main``/``test``/``regtest``: the C++ always says ``main`` (``cli 6.3 #37``)."""
    return {"mainnet": "main", "testnet": "test"}.get(params.get_network_name(),
                                                     params.get_network_name())


class NodeRPC:
    """The method table bound to one node's :class:`~dilithion.node.context.NodeContext`.

    Called concurrently from the RPC handler threads (the C++ runs every
    method under one mutex, ``cli 6.3 #33``); it keeps no state of its own and
    relies on each component's lock (``chainstate.lock`` for multi-step chain
    reads).
    """

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self._methods = {name: RPCMethod(name, desc, MethodType(func, self))
                         for name, desc, func in _REGISTRY}

    def methods(self) -> dict[str, RPCMethod]:
        return dict(self._methods)

    # -- component access --------------------------------------------------------
    _LABELS = {"blockchain": "Blockchain", "chainstate": "Chain state", "mempool": "Mempool",
               "utxo_set": "UTXO set", "miner": "Miner", "connman": "P2P connection manager",
               "broadcaster": "Broadcaster"}

    def _need(self, *components: str):
        """The first named component, after checking all of them in C++ order."""
        found = []
        for name in components:
            value = getattr(self.ctx, name, None)
            if value is None:
                raise RPCError(RPC_INTERNAL_ERROR, f"{self._LABELS[name]} not initialized")
            found.append(value)
        return found[0] if len(found) == 1 else found

    # -- chain ---------------------------------------------------------------------
    @rpc_method("getblockcount", "Get the current block height")
    def rpc_getblockcount(self) -> int:
        """The best block's height (C++ ``RPC_GetBlockCount``)."""
        return self._need("chainstate").height()

    @rpc_method("getbestblockhash", "Get the hash of the best (tip) block")
    def rpc_getbestblockhash(self) -> str:
        """The best block's hash (C++ ``RPC_GetBestBlockHash``)."""
        _, cs = self._need("blockchain", "chainstate")
        tip = cs.tip()
        if tip is None:
            raise RPCError(RPC_INTERNAL_ERROR, "Failed to read best block")
        return tip.hash.get_hex()

    @rpc_method("getblockhash", "Get block hash by height")
    def rpc_getblockhash(self, height: int) -> dict:
        """``{"blockhash": ...}`` as the C++, but always the main-chain block (``cli 6.3 #37``).

        C++: ``RPC_GetBlockHash``.
        """
        cs, _ = self._need("chainstate", "blockchain")
        if height < 0:
            raise RPCError(RPC_INVALID_PARAMETER, "Height parameter out of range")
        block_hash = cs.main_chain_hash_at(height)
        if block_hash is None:
            raise RPCError(RPC_INVALID_PARAMETER, f"No block found at height {height}")
        return {"blockhash": block_hash.get_hex()}

    @rpc_method("getblock", "Get block by hash")
    def rpc_getblock(self, hash: str) -> dict:  # noqa: A002 - the RPC parameter's name
        """A stored block by hash: header fields and txids (C++ ``RPC_GetBlock``)."""
        _, cs = self._need("blockchain", "chainstate")
        block_hash = _parse_hash(hash, "hash")
        with cs.lock:
            block = cs.get_block(block_hash)
            if block is None:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
            index = cs.get_index(block_hash)
            height = index.height if index is not None else -1
            on_main = index is not None and cs.is_on_main_chain(index)
            confirmations = cs.height() - height + 1 if on_main else -1
        h = block.header
        txids = self._block_txids(block)
        return {
            "hash": block_hash.get_hex(),
            "height": height,
            "version": h.version,
            "previousblockhash": Uint256(h.hash_prev_block).get_hex(),
            "merkleroot": Uint256(h.hash_merkle_root).get_hex(),
            "time": h.time,
            "bits": f"0x{h.bits:x}",
            "nonce": h.nonce,
            "tx_count": len(txids) if txids is not None else int(bool(block.vtx)),
            # additions (not in the C++ result)
            "confirmations": confirmations,
            "tx": txids if txids is not None else [],
        }

    @staticmethod
    def _block_txids(block) -> list[str] | None:
        """Display txids of the block's transactions, None if ``vtx`` does not parse."""
        from dilithion.consensus.validation import block_transactions
        try:
            return [tx.get_hash()[::-1].hex() for tx in block_transactions(block)]
        except (SerializationError, ValueError):
            return None

    @rpc_method("getblockchaininfo", "Get blockchain information")
    def rpc_getblockchaininfo(self) -> dict:
        """Chain, height, best hash, difficulty, chain work (C++ ``RPC_GetBlockchainInfo``)."""
        _, cs = self._need("blockchain", "chainstate")
        params = self.ctx.chain_params
        with cs.lock:
            tip = cs.tip()
            if tip is None:
                raise RPCError(RPC_INTERNAL_ERROR, "Failed to read best block")
            return {
                "chain": _chain_name(params),
                "blocks": tip.height,
                "bestblockhash": tip.hash.get_hex(),
                "difficulty": compact_to_big(params.pow_max_bits) / compact_to_big(tip.bits),
                "mediantime": get_median_time_past(tip),
                "chainwork": f"{tip.chain_work:064x}",
            }

    @rpc_method("getchaintips", "Get the active tip and the tip of every known side branch")
    def rpc_getchaintips(self) -> list:
        """The active tip and every side-branch tip (C++ ``RPC_GetChainTips``)."""
        cs = self._need("chainstate")
        return [{"height": index.height, "hash": index.hash.get_hex(), "branchlen": branchlen,
                 "status": status} for index, branchlen, status in cs.chain_tips()]

    # -- mempool and transactions -----------------------------------------------------
    @rpc_method("getmempoolinfo", "Get mempool statistics")
    def rpc_getmempoolinfo(self) -> dict:
        """Mempool size and bytes (C++ ``RPC_GetMempoolInfo``)."""
        stats = self._need("mempool").get_stats()
        return {"size": stats["count"], "bytes": stats["bytes"], "usage": stats["bytes"],
                "min_fee_rate": _g6(stats["min_fee_rate"]),
                "max_fee_rate": _g6(stats["max_fee_rate"])}

    @rpc_method("getrawmempool", "List the txids in the mempool (highest fee rate first)")
    def rpc_getrawmempool(self) -> list:
        """The pooled txids, highest fee rate first (C++ ``RPC_GetRawMempool``)."""
        return [Uint256(txid).get_hex() for txid in self._need("mempool").txids()]

    @rpc_method("gettransaction", "Get a mempool transaction by txid")
    def rpc_gettransaction(self, txid: str) -> dict:
        """The C++ result shape; like the C++ it looks only in the mempool.

        C++: ``RPC_GetTransaction``.
        """
        mempool, _ = self._need("mempool", "blockchain")
        raw = _parse_hash(txid, "txid")
        if not mempool.exists(bytes(raw)):
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not found in mempool")
        return {"txid": raw.get_hex(), "confirmations": 0, "in_mempool": True}

    @rpc_method("sendrawtransaction", "Broadcast a raw transaction to the network")
    def rpc_sendrawtransaction(self, hex: str) -> str:  # noqa: A002
        """Validate, add to the mempool and announce (the C++ never announces, ``net`` tx relay).

        C++: ``RPC_SendRawTransaction``.
        """
        self._need("mempool", "utxo_set", "chainstate")
        tx = _parse_tx_hex(hex)
        from dilithion.node.mempool import TxValidationError, accept_to_memory_pool
        try:
            ctx = self.ctx
            txid = accept_to_memory_pool(ctx.chainstate, ctx.utxo_set, ctx.mempool, tx)
        except TxValidationError as exc:
            raise RPCError(RPC_VERIFY_REJECTED, f"Transaction rejected: {exc}") from None
        txid = Uint256(bytes(txid))
        if self.ctx.broadcaster is not None:
            self.ctx.broadcaster.broadcast_tx(txid)
        else:
            logger.warning(f"[RPC] tx {txid.short()}... accepted but not announced: no broadcaster")
        return txid.get_hex()

    @rpc_method("decoderawtransaction", "Decode a raw transaction")
    def rpc_decoderawtransaction(self, hex: str) -> dict:  # noqa: A002
        """A raw transaction as JSON (C++ ``RPC_DecodeRawTransaction``)."""
        tx = _parse_tx_hex(hex)
        return {"txid": Uint256(tx.get_hash()).get_hex(), "version": tx.version,
                "locktime": tx.lock_time, "vin_count": len(tx.vin), "vout_count": len(tx.vout)}

    # -- network -------------------------------------------------------------------
    @rpc_method("getpeerinfo", "Get peer information")
    def rpc_getpeerinfo(self) -> list:
        """One object per connected peer (C++ ``RPC_GetPeerInfo``)."""
        connman = self.ctx.connman
        return [] if connman is None else connman.peer_info()

    @rpc_method("getnetworkinfo", "Get network information")
    def rpc_getnetworkinfo(self) -> dict:
        """The real user agent and protocol (the C++ reports constants that it does not use).

        C++: ``RPC_GetNetworkInfo``.
        """
        connman = self.ctx.connman
        return {"version": _package_version(), "subversion": USER_AGENT.decode("ascii"),
                "protocolversion": PROTOCOL_VERSION,
                "connections": connman.connected_count() if connman is not None else 0}

    @rpc_method("addnode", "Connect to a peer (command add, onetry or remove)")
    def rpc_addnode(self, node: str, command: str = "add") -> None:
        """``add`` keeps the peer connected (redialled when dropped), ``onetry`` dials
        once, ``remove`` forgets it and disconnects it.  The C++ method does nothing.

        C++: ``RPC_AddNode``.
        """
        if command not in ("add", "onetry", "remove"):
            raise RPCError(RPC_INVALID_PARAMETER,
                           f"Invalid command parameter: {command} (expected add, remove or onetry)")
        connman = self._need("connman")
        added = self.ctx.added_nodes
        host, port = _parse_node_address(node, self.ctx.chain_params.p2p_port)
        if command == "remove":
            forgotten = added is not None and added.remove(host, port)
            try:
                self._disconnect_matching(connman, host, port, node)
            except RPCError:
                if not forgotten:
                    raise
            return None
        if command == "add" and added is not None:
            added.add(node, host, port)      # a failed dial is retried with backoff
            return None
        if connman.connect(host, port) is None:
            raise RPCError(RPC_MISC_ERROR, f"Failed to connect to {node}")
        return None

    @rpc_method("getaddednodeinfo", "List the peers added with --connect, --addnode or addnode")
    def rpc_getaddednodeinfo(self) -> list:
        added = self.ctx.added_nodes
        return [] if added is None else [
            {"addednode": e["addednode"], "connected": e["connected"], "peer_id": e["peer_id"]}
            for e in added.entries()]

    @rpc_method("disconnectnode", "Disconnect a peer by address or node id")
    def rpc_disconnectnode(self, address: str | None = None, nodeid: int | None = None) -> None:
        if (address is None) == (nodeid is None):
            raise RPCError(RPC_INVALID_PARAMETER, "Give exactly one of address or nodeid")
        connman = self._need("connman")
        if nodeid is not None:
            if not any(_peer_id(p) == nodeid for p in connman.peer_info()):
                raise RPCError(RPC_CLIENT_NODE_NOT_CONNECTED,
                               f"Node not found in connected nodes: {nodeid}")
            connman.disconnect(nodeid, "disconnectnode")
            return None
        host, port = _parse_node_address(address, self.ctx.chain_params.p2p_port)
        self._disconnect_matching(connman, host, port, address)
        return None

    @staticmethod
    def _disconnect_matching(connman, host: str, port: int, text: str) -> None:
        matches = [_peer_id(p) for p in connman.peer_info() if _peer_address(p) == (host, port)]
        if not matches:
            raise RPCError(RPC_CLIENT_NODE_NOT_CONNECTED, f"Node not found in connected nodes: {text}")
        for peer_id in matches:
            connman.disconnect(peer_id, "disconnectnode")

    @rpc_method("setban", "Ban (add) or unban (remove) an IP or subnet: setban <subnet> "
                "add|remove [bantime] [absolute]")
    def rpc_setban(self, subnet: str, command: str, bantime: int = 0,
                   absolute: bool = False) -> None:
        """Bitcoin Core's ``setban``: ``bantime`` seconds (0: 24 h), or a Unix time when
        ``absolute``; persisted in ``banlist.json``; every connection from the
        banned range is closed.  C++: ``CPeerManager::BanIP``/``UnbanIP`` (no RPC there)."""
        from dilithion.net.banman import parse_subnet
        if command not in ("add", "remove"):
            raise RPCError(RPC_INVALID_PARAMETER,
                           f"Invalid command parameter: {command} (expected add or remove)")
        connman = self._need("connman")
        banman = connman.peer_manager.banman
        try:
            net = parse_subnet(subnet)
        except ValueError:
            raise RPCError(RPC_CLIENT_INVALID_IP_OR_SUBNET, "Error: Invalid IP/Subnet") from None
        if command == "remove":
            if not banman.unban(net):
                raise RPCError(RPC_CLIENT_INVALID_IP_OR_SUBNET, "Error: Unban failed. Requested "
                               "address/subnet was not previously manually banned.")
            return None
        if absolute and bantime <= int(time.time()):
            raise RPCError(RPC_INVALID_PARAMETER, "Error: Absolute timestamp is in the past")
        if not banman.ban(net, bantime, absolute):
            raise RPCError(RPC_CLIENT_NODE_ALREADY_ADDED, "Error: IP/Subnet already banned")
        connman.disconnect_hosts(lambda host: _in_subnet(host, net), f"banned ({net})")
        return None

    @rpc_method("listbanned", "List the manually banned IPs and subnets")
    def rpc_listbanned(self) -> list:
        """Core's shape: address, ban_created, banned_until, ban_duration, time_remaining."""
        now = int(time.time())
        return [dict(e.to_json(), ban_duration=int(e.until - e.created),
                     time_remaining=max(0, int(e.until) - now))
                for e in self._need("connman").peer_manager.banman.list_banned()]

    @rpc_method("clearbanned", "Lift every manual ban")
    def rpc_clearbanned(self) -> None:
        """Core's ``clearbanned`` (C++ ``CPeerManager::ClearBans``, no RPC there)."""
        self._need("connman").peer_manager.banman.clear_banned()
        return None

    @rpc_method("getbroadcastinfo", "Get block/transaction broadcast queue diagnostics")
    def rpc_getbroadcastinfo(self) -> dict:
        return self._need("broadcaster").diagnostics()

    # -- mining ----------------------------------------------------------------------
    @rpc_method("getmininginfo", "Get mining status and hashrate")
    def rpc_getmininginfo(self) -> dict:
        """Mining state, threads and hash rate (C++ ``RPC_GetMiningInfo``)."""
        miner = self._need("miner")
        cs = self.ctx.chainstate
        build = self.ctx.hasher.dataset_build
        return {"mining": miner.is_mining(), "hashrate": int(miner.get_hash_rate()),
                "threads": miner.thread_count(),
                "blocks": cs.height() if cs is not None else -1,
                "chain": _chain_name(self.ctx.chain_params),
                "randomx": {"mode": self.ctx.hasher.mode, "setting": self.ctx.randomx_mode,
                            "dataset": "none" if build is None else build.state,
                            "dataset_build_seconds": round(build.seconds, 1) if build else 0.0}}

    @rpc_method("startmining", "Start mining on the node's key")
    def rpc_startmining(self) -> bool:
        """Start the miner if it is not running (C++ ``RPC_StartMining``)."""
        miner = self._need("miner")
        if not miner.is_mining():
            miner.start()
            logger.info(f"[RPC] Mining started with {miner.thread_count()} threads")
        return True

    @rpc_method("stopmining", "Stop mining")
    def rpc_stopmining(self) -> bool:
        """Stop the miner if it is running (C++ ``RPC_StopMining``)."""
        miner = self._need("miner")
        if miner.is_mining():
            miner.stop()
            logger.info("[RPC] Mining stopped")
        return True

    @rpc_method("generatetoaddress", "Mine nblocks blocks now, paying to address (regtest, tests)")
    def rpc_generatetoaddress(self, nblocks: int, address: str,
                              maxtries: int = DEFAULT_GENERATE_MAXTRIES) -> list:
        """Mine on the RPC thread with the miner's template (bitcoind semantics).

        Stops early, returning the blocks found so far, when ``maxtries``
        hashes are used up or the node shuts down.  A block that lost a race
        with the background miner (it is only a side block) is not counted.
        C++: ``RPC_GenerateToAddress``.
        """
        miner, cs = self._need("miner", "chainstate")
        if not 1 <= nblocks <= MAX_GENERATE_BLOCKS:
            raise RPCError(RPC_INVALID_PARAMETER,
                           f"nblocks must be between 1 and {MAX_GENERATE_BLOCKS}")
        if maxtries < 1:
            raise RPCError(RPC_INVALID_PARAMETER, "maxtries must be positive")
        try:
            pub_key_hash = address_to_pub_key_hash(address)
        except ValueError:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid address: {address}") from None
        found: list[str] = []
        tries = _HashCounter(maxtries)
        while len(found) < nblocks and tries.left > 0 and not self.ctx.shutdown_requested.is_set():
            solved = search_nonce(self.ctx.hasher, miner.build_template(pub_key_hash),
                                  max_hashes=tries.left, stop=self.ctx.shutdown_requested,
                                  on_hash=tries.count)
            if solved is None:
                break
            block, block_hash = solved
            if cs.process_new_block(block, block_hash).status in (BlockStatus.TIP,
                                                                 BlockStatus.REORG):
                found.append(block_hash.get_hex())   # announced by the block relay's tip listener
        return found

    # -- control ---------------------------------------------------------------------
    @rpc_method("help", "This help message (help <command>: that command only)")
    def rpc_help(self, command: str | None = None):
        lines = {name: f"{name} - {m.description}" for name, m in self._methods.items()}
        if command is None:
            return {"commands": list(lines.values())}
        if command not in lines:
            raise RPCError(RPC_INVALID_PARAMETER, f"Unknown command: {command}")
        return lines[command]

    @rpc_method("stop", "Stop the Dilithion node")
    def rpc_stop(self, confirm: bool = True) -> str:
        """Stops the whole node (the C++ stops only its RPC server, ``cli 6.3 #36``).

        ``confirm`` is accepted for C++ clients but not required, as in
        bitcoind; an explicit ``false`` refuses.
        """
        if not confirm:
            raise RPCError(RPC_INVALID_PARAMETER, "Shutdown not confirmed (confirm is false)")
        logger.info("[RPC] stop requested: shutting down the node")
        self.ctx.shutdown_requested.set()
        return "Dilithion node stopping"


def _g6(rate: float) -> int | float:
    """A fee rate as the C++ writes it (``%.6g``; ``0`` when the pool is empty)."""
    value = float(f"{rate:.6g}")
    return int(value) if value.is_integer() else value


def _package_version() -> str:
    try:
        return importlib.metadata.version("dilithion")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _in_subnet(host: str, net) -> bool:
    try:
        return ipaddress.ip_address(host) in net
    except ValueError:
        return False


def _peer_id(info: dict):
    return info.get("id", info.get("peer_id"))


def _peer_address(info: dict) -> tuple[str, int] | None:
    """(ip, port) of a ``peer_info`` entry, whatever its address key is called."""
    if "ip" in info and "port" in info:
        return str(info["ip"]), int(info["port"])
    text = info.get("addr") or info.get("address")
    if not isinstance(text, str):
        return None
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None
