"""The mining guide's remote-RPC steps use the real flags and quote the real replies
(issue 23 item 6: ``--rpcconnect`` alone reaches no node; the node also needs
``--rpcbind``, ``--rpcallowip`` and credentials).

Pure text and configuration checks: no node is started.  The steps themselves
were followed with real node processes (the closing report of issue 23's
opsdocs slice).
"""
from __future__ import annotations

import re
from pathlib import Path

from dilithion.node.dilithion_node import cli as node_cli
from dilithion.node.init import NodeConfig
from dilithion.rpc.auth import CONF_FILENAME
from dilithion.rpc.client import cli as cli_command
from dilithion.rpc.server import FORBIDDEN_ERROR

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "MAINNET-MINING-GUIDE.md"
SECTION = "### 3.1 Asking another node: remote RPC"


def _section() -> str:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start)
    return text[start:end]


def _options(command) -> set[str]:
    return {opt.split("=")[0] for param in command.params for opt in param.opts if opt.startswith("--")}


def _flags_after(program: str, text: str) -> set[str]:
    """``--flags`` of every ``program`` command line in the section's code blocks."""
    flags: set[str] = set()
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if program in line:
                flags |= set(re.findall(r"(--[a-z][a-z-]*)", line.split(program, 1)[1]))
    return flags


def test_the_steps_name_every_piece_the_remote_call_needs():
    text = _section()
    for piece in ("--rpcbind", "--rpcallowip", "--rpcconnect", CONF_FILENAME, "rpcuser=",
                  "rpcpassword=", ".cookie", "--rpcuser", "--rpcpassword", "ssh -N -L"):
        assert piece in text, piece


def test_the_steps_use_only_real_flags():
    text = _section()
    node_flags, cli_flags = _flags_after("dilithion-node", text), _flags_after("dilithion-cli", text)
    assert {"--rpcbind", "--rpcallowip"} <= node_flags
    assert "--rpcconnect" in cli_flags
    assert node_flags <= _options(node_cli), node_flags - _options(node_cli)
    assert cli_flags <= _options(cli_command), cli_flags - _options(cli_command)


def test_the_quoted_refusals_are_the_nodes():
    text = " ".join(_section().split())
    error = NodeConfig(rpcbind="10.0.0.5").rpc_access_error()
    assert error is not None
    generic = error.replace("10.0.0.5", "<ip>")
    assert generic in text, generic
    assert NodeConfig(rpcbind="10.0.0.5", rpc_allow_ips=["10.0.0.0/24"]).rpc_access_error() is None
    assert f"403 {FORBIDDEN_ERROR}" in text
