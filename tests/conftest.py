"""Shared fixtures: the C++ vectors, chain parameters and the RandomX hasher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = REPO_ROOT.parent / "shared" / "vectors"


def load_vector(name: str):
    path = VECTORS_DIR / name
    if not path.exists():
        pytest.fail(f"C++ vector {path} is missing: the repository must sit beside shared/")
    return json.loads(path.read_text()) if name.endswith(".json") else path


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR


@pytest.fixture(scope="session")
def cpp_chain() -> dict:
    return load_vector("cpp-testnet-chain.json")


@pytest.fixture(scope="session")
def cpp_handshake() -> dict:
    return load_vector("cpp-wire-handshake.json")


@pytest.fixture(scope="session")
def hasher() -> RandomXHasher:
    return RandomXHasher.for_key()


@pytest.fixture
def testnet() -> ChainParams:
    return ChainParams.testnet()


@pytest.fixture
def regtest() -> ChainParams:
    return ChainParams.regtest()
