"""Chain parameters and genesis blocks (``chain`` 2, 1.10; ``net`` 1.2)."""
from __future__ import annotations

import dataclasses

import pytest

from dilithion.consensus.pow import check_proof_of_work
from dilithion.core.chainparams import (MAINNET_MAGIC, REGTEST_MAGIC, TESTNET_MAGIC, ChainParams,
                                        Network, params_for)
from dilithion.crypto.sha3 import sha3_256
from dilithion.mining.template import mine_block
from dilithion.node.genesis import create_genesis_block, is_genesis_block
from dilithion.primitives.block import Uint256


def test_magic_values_come_from_protocol_h_not_chainparams():
    """``net D-30`` / ``chain D37``: mainnet wire magic is 0xD1714102."""
    main, test = ChainParams.mainnet(), ChainParams.testnet()
    assert main.magic == MAINNET_MAGIC == 0xD1714102
    assert main.chainparams_magic == 0xD1711710 != main.magic
    assert test.magic == test.chainparams_magic == TESTNET_MAGIC == 0xDAB5BFFA
    assert ChainParams.regtest().magic == REGTEST_MAGIC == 0xFABFB5DA
    assert main.magic.to_bytes(4, "little").hex() == "024171d1"


def test_mainnet_values():
    p = ChainParams.mainnet()
    assert (p.network, p.get_network_name(), p.is_mainnet()) == (Network.MAINNET, "mainnet", True)
    assert (p.genesis_time, p.genesis_nonce, p.genesis_bits) == (1767225600, 0, 0x1E00FFFF)
    assert len(p.genesis_coinbase_msg) == 157 and b"People's Coin" in p.genesis_coinbase_msg
    assert (p.p2p_port, p.rpc_port, p.data_dir_name) == (8444, 8332, ".dilithion")
    assert (p.block_time, p.halving_interval, p.difficulty_adjustment) == (240, 210_000, 2016)
    assert (p.max_block_size, p.initial_reward) == (4_194_304, 5_000_000_000)
    assert (p.pow_min_bits, p.pow_max_bits, p.send_timeout_ms) == (0x1D00FFFF, 0x1F0FFFFF, 10_000)


def test_testnet_values():
    p = ChainParams.testnet()
    assert (p.network, p.get_network_name(), p.is_testnet()) == (Network.TESTNET, "testnet", True)
    assert (p.genesis_time, p.genesis_nonce, p.genesis_bits) == (1730000000, 82393330, 0x1F060000)
    assert p.genesis_coinbase_msg == (b"Dilithion Testnet Genesis - Testing post-quantum "
                                      b"cryptocurrency before mainnet launch")
    assert len(p.genesis_coinbase_msg) == 85
    assert (p.p2p_port, p.rpc_port, p.data_dir_name) == (18444, 18332, ".dilithion-testnet")
    assert (p.pow_min_bits, p.pow_max_bits, p.send_timeout_ms) == (0x1D00FFFF, 0x1F0FFFFF, 5000)


def test_regtest_values():
    p = ChainParams.regtest()
    assert (p.network, p.get_network_name(), p.is_regtest()) == (Network.REGTEST, "regtest", True)
    assert (p.p2p_port, p.rpc_port, p.genesis_bits, p.pow_max_bits) == (19444, 19332, 0x207FFFFF, 0x207FFFFF)
    assert p.pow_min_bits == 0x1D00FFFF and p.send_timeout_ms == 5000


def test_params_for_by_name_and_enum():
    for name in ("mainnet", "testnet", "regtest"):
        assert params_for(name).get_network_name() == name
        assert params_for(name.upper()) == params_for(Network[name.upper()])
    with pytest.raises(ValueError, match="unknown network 'signet'"):
        params_for("signet")
    with pytest.raises(ValueError):
        params_for(7)


def test_params_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChainParams.testnet().magic = 1


def test_testnet_genesis_reference_values(hasher):
    """``chain`` 1.10 and ``cli`` 2.12."""
    g = create_genesis_block(ChainParams.testnet())
    assert g.vtx == ChainParams.testnet().genesis_coinbase_msg
    assert g.header.hash_merkle_root.get_hex() == (
        "080a2ba50d759c2ccdf81c67dc26db7d7341e2383e7b1e32030f3de470be840e")
    assert g.header.serialize().hex() == ("01000000" + "00" * 32
                                          + "0e84be70e43d0f03321e7b3e38e241737ddb26dc671cf8cd2c9c750da52b0a08"
                                          + "80b41d67" "0000061f" "f238e904")
    assert g.get_hash(hasher).get_hex() == (
        "924bdb80469e1185814407147bc763a62425cc400bc902ce37d73ffbc3524475")


def test_mainnet_genesis_merkle_display_matches_cli_2_12():
    g = create_genesis_block(ChainParams.mainnet())
    assert g.header.hash_merkle_root.get_hex() == (
        "d244a4f1dff0ef2d09763450b65a2d2ffa6e1b7a52ed4d8e5eeeabd671d1d064")
    assert g.header.hash_merkle_root == sha3_256(g.vtx)


def test_is_genesis_block_ignores_nonce_but_not_other_fields():
    params = ChainParams.testnet()
    g = create_genesis_block(params)
    assert is_genesis_block(g, params)
    g.header.nonce += 1
    assert is_genesis_block(g, params)            # the C++ does not compare the nonce
    for field, value in (("time", 1), ("bits", 0x1F050000), ("version", 2),
                         ("hash_prev_block", Uint256(b"\x01" * 32)),
                         ("hash_merkle_root", Uint256(b"\x02" * 32))):
        other = create_genesis_block(params)
        setattr(other.header, field, value)
        assert not is_genesis_block(other, params), field
    assert not is_genesis_block(create_genesis_block(ChainParams.mainnet()), params)


def test_regtest_genesis_and_a_mined_regtest_block(hasher, regtest, testnet):
    """Regtest is Python-only; its blocks must never pass on testnet."""
    g = create_genesis_block(regtest)
    assert g.header.bits == 0x207FFFFF and g.header.hash_prev_block.is_null()
    assert g.header.hash_merkle_root == sha3_256(regtest.genesis_coinbase_msg)
    assert is_genesis_block(g, regtest) and not is_genesis_block(g, testnet)
    genesis_hash = g.get_hash(hasher)
    assert genesis_hash != create_genesis_block(testnet).get_hash(hasher)
    block, block_hash = mine_block(hasher, genesis_hash, 1, bytes(20), regtest,
                                   now=regtest.genesis_time + 60)
    assert block.header.hash_prev_block == genesis_hash
    assert check_proof_of_work(block_hash, block.header.bits, regtest)
    assert not check_proof_of_work(block_hash, block.header.bits, testnet)
    assert not check_proof_of_work(block_hash, block.header.bits, ChainParams.mainnet())
