"""Network parameters (``src/core/chainparams.{h,cpp}``) plus a Python-only regtest.

Mainnet and testnet are the C++ values, with one correction that the C++ itself
makes in practice: the P2P magic comes from ``src/net/protocol.h`` (the value the
node really uses), not from the dead ``networkMagic`` field (``net D-30``,
``chain D37``), which is kept as ``chainparams_magic`` for cross-checking only.

**Regtest exists only in the Python node.**  It uses the ``REGTEST_MAGIC``
constant that the C++ defines and never selects, its own ports and genesis, and
a proof-of-work limit (``0x207fffff``, a target of about 2^255) at which about
every second RandomX hash is a block, so tests mine hundreds of blocks in
seconds.  Its allowed ``nBits`` range is widened to include that limit; the C++
range ``[0x1d00ffff, 0x1f0fffff]`` applies unchanged on mainnet and testnet.
Regtest also has no reorganisation depth limit: at about 15 blocks a second
per miner, the C++ limit of 100 blocks (``chain D39``, kept on mainnet and
testnet) would keep two miners apart for good after a partition of seconds.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Network", "ChainParams", "MAINNET_MAGIC", "TESTNET_MAGIC", "REGTEST_MAGIC",
           "MIN_DIFFICULTY_BITS", "MAX_DIFFICULTY_BITS", "params_for"]

MAINNET_MAGIC = 0xD1714102
TESTNET_MAGIC = 0xDAB5BFFA
REGTEST_MAGIC = 0xFABFB5DA
#: ``src/consensus/pow.h``: hardest and easiest ``nBits`` a block may carry.
MIN_DIFFICULTY_BITS = 0x1D00FFFF
MAX_DIFFICULTY_BITS = 0x1F0FFFFF


class Network(enum.IntEnum):
    MAINNET = 0
    TESTNET = 1
    REGTEST = 2  # Python-only


@dataclass(frozen=True)
class ChainParams:
    network: Network
    magic: int                      # P2P magic actually used on the wire
    chainparams_magic: int          # ChainParams::networkMagic, never read by the C++
    genesis_time: int
    genesis_nonce: int
    genesis_bits: int
    genesis_coinbase_msg: bytes
    p2p_port: int
    rpc_port: int
    data_dir_name: str
    block_time: int = 240
    halving_interval: int = 210_000
    difficulty_adjustment: int = 2016
    max_block_size: int = 4 * 1024 * 1024
    initial_reward: int = 50 * 100_000_000
    pow_min_bits: int = MIN_DIFFICULTY_BITS
    pow_max_bits: int = MAX_DIFFICULTY_BITS
    #: Per-peer send deadline (ms): the seed's mainnet table, 10 s mainnet, 5 s elsewhere.
    send_timeout_ms: int = 5000
    #: ``ActivateBestChain`` refuses to disconnect more blocks than this (``chain D39``);
    #: ``None``: no limit (regtest only).
    max_reorg_depth: int | None = 100

    def get_network_name(self) -> str:
        return self.network.name.lower()

    def is_mainnet(self) -> bool:
        return self.network is Network.MAINNET

    def is_testnet(self) -> bool:
        return self.network is Network.TESTNET

    def is_regtest(self) -> bool:
        return self.network is Network.REGTEST

    @classmethod
    def mainnet(cls) -> "ChainParams":
        return cls(
            network=Network.MAINNET, magic=MAINNET_MAGIC, chainparams_magic=0xD1711710,
            genesis_time=1767225600, genesis_nonce=0, genesis_bits=0x1E00FFFF,
            genesis_coinbase_msg=(
                b"The Guardian 01/Jan/2026: Quantum computing advances threaten cryptocurrency"
                b" security - Dilithion launches with post-quantum protection for The People's Coin"),
            p2p_port=8444, rpc_port=8332, data_dir_name=".dilithion", send_timeout_ms=10_000)

    @classmethod
    def testnet(cls) -> "ChainParams":
        return cls(
            network=Network.TESTNET, magic=TESTNET_MAGIC, chainparams_magic=TESTNET_MAGIC,
            genesis_time=1730000000, genesis_nonce=82393330, genesis_bits=0x1F060000,
            genesis_coinbase_msg=(
                b"Dilithion Testnet Genesis - Testing post-quantum cryptocurrency before mainnet launch"),
            p2p_port=18444, rpc_port=18332, data_dir_name=".dilithion-testnet")

    @classmethod
    def regtest(cls) -> "ChainParams":
        return cls(
            network=Network.REGTEST, magic=REGTEST_MAGIC, chainparams_magic=REGTEST_MAGIC,
            genesis_time=1730000000, genesis_nonce=0, genesis_bits=0x207FFFFF,
            genesis_coinbase_msg=b"Dilithion Regtest Genesis - Python reference node local test network",
            p2p_port=19444, rpc_port=19332, data_dir_name=".dilithion-regtest",
            pow_max_bits=0x207FFFFF, max_reorg_depth=None)


def params_for(network: Network | str) -> ChainParams:
    """Chain parameters by network or by name (``mainnet``, ``testnet``, ``regtest``).

    Raises ``ValueError`` for an unknown name or number.
    """
    try:
        net = Network[network.upper()] if isinstance(network, str) else Network(network)
    except KeyError:
        raise ValueError(f"unknown network {network!r} (mainnet, testnet or regtest)") from None
    return {Network.MAINNET: ChainParams.mainnet, Network.TESTNET: ChainParams.testnet,
            Network.REGTEST: ChainParams.regtest}[net]()
