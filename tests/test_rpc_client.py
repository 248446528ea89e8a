"""dilithion-cli: request encoding (cli 3.11), a C++-style server, and the real program end to end."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.blockchain_storage import BlockchainDB
from dilithion.node.chain_loader import load_chain_state
from dilithion.node.context import NodeContext
from dilithion.rpc.client import (CPP_MAX_REQUEST, AuthFailed, ConnectionFailed, RPCCallError,
                                  RPCClient, ServerRefused, UsageError, _parse_reply,
                                  args_to_params, encode_request_body, format_result)
from dilithion.rpc.server import RPCServer
from framework import LoopbackServer

CLI = Path(sys.executable).parent / "dilithion-cli"


# -- request encoding --------------------------------------------------------------------------
def test_body_is_the_cpp_shape_with_keys_in_scanner_order():
    assert encode_request_body("getblockcount", None) == \
        b'{"jsonrpc":"2.0","method":"getblockcount","params":[],"id":1}'
    params = args_to_params("gettxout", ["ab" * 32, "3"])
    assert list(params) == ["txid", "n"]
    assert encode_request_body("gettxout", params) == (
        b'{"jsonrpc":"2.0","method":"gettxout","params":[{"txid":"' + b"ab" * 32 + b'","n":3}],"id":1}')
    assert encode_request_body("sendtoaddress", args_to_params("sendtoaddress", ["Dabc", "0.29"])) \
        == b'{"jsonrpc":"2.0","method":"sendtoaddress","params":[{"address":"Dabc","amount":0.29}],"id":1}'
    assert encode_request_body("walletpassphrasechange",
                               args_to_params("walletpassphrasechange",
                                              ["newpassphrase=n", "oldpassphrase=o"])) == (
        b'{"jsonrpc":"2.0","method":"walletpassphrasechange",'
        b'"params":[{"oldpassphrase":"o","newpassphrase":"n"}],"id":1}')


def test_positional_and_named_arguments():
    assert args_to_params("getblockhash", ["5"]) == {"height": 5}
    assert args_to_params("getblockhash", ["height=5"]) == {"height": 5}
    assert args_to_params("addnode", ["127.0.0.1:1"]) == {"node": "127.0.0.1:1"}
    assert args_to_params("addnode", ["127.0.0.1:1", "onetry"]) == {"node": "127.0.0.1:1",
                                                                   "command": "onetry"}
    assert args_to_params("disconnectnode", ["nodeid=4"]) == {"nodeid": 4}
    assert args_to_params("walletpassphrase", ["pw", "60"]) == {"passphrase": "pw", "timeout": 60}
    assert b'"params":[]' in encode_request_body("stop", args_to_params("stop", []))
    assert args_to_params("stop", ["confirm"]) == {"confirm": True}
    assert args_to_params("stop", ["false"]) == {"confirm": False}
    assert args_to_params("getblockcount", []) == []
    assert args_to_params("futuremethod", ["1", '{"a":1.5}', "text", "true"]) == \
        [1, {"a": Decimal("1.5")}, "text", True]
    assert encode_request_body("futuremethod", [1, "x", None]) == \
        b'{"jsonrpc":"2.0","method":"futuremethod","params":[1,"x",null],"id":1}'
    assert args_to_params("sendtoaddress", ["D", "1.12345678"])["amount"] == Decimal("1.12345678")


@pytest.mark.parametrize("method,args,message", [
    ("getblockhash", [], "missing argument height"),
    ("getblockhash", ["-1"], "non-negative integer"),
    ("getblockhash", ["1e3"], "non-negative integer"),
    ("getblockhash", ["1", "2"], "at most 1 arguments"),
    ("getblockhash", ["5", "height=6"], "height given twice"),
    ("stop", ["now"], "usage: stop [confirm]"),
    ("sendtoaddress", ["D", "1.123456789"], "at most 8 decimals"),
    ("sendtoaddress", ["D", "1e5"], "plain decimal"),
    ("sendtoaddress", ["D", "-1"], "plain decimal"),
    ("sendtoaddress", ["D", "NaN"], "plain decimal"),
    ("gettxout", ["x", "y"], "n must be a non-negative integer"),
])
def test_usage_errors_in_arguments(method, args, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        args_to_params(method, args)


@pytest.mark.parametrize("value", ['a"b', "a\\b", "a]b", "a\nb", "a\x00b", "a\x7fb"])
def test_strings_the_cpp_scanner_cannot_carry_are_refused(value):
    with pytest.raises(UsageError, match="may not contain"):
        encode_request_body("getblock", {"hash": value})


def test_bad_method_names_are_refused():
    for name in ('get"x', "a b", "", "x]"):
        with pytest.raises(UsageError, match="invalid method name"):
            encode_request_body(name, None)


def test_request_over_4096_bytes_is_refused_before_connecting():
    client = RPCClient("127.0.0.1", 1)                       # nothing listens on port 1
    with pytest.raises(UsageError, match="the request is 4[0-9]{3} bytes; the C\\+\\+ node reads"):
        client.call("getblock", {"hash": "a" * 4000})
    request = client.build_request("getblock", {"hash": "a" * 3900})
    assert len(request) <= CPP_MAX_REQUEST
    unlimited = RPCClient("127.0.0.1", 1, max_request_bytes=None)
    assert len(unlimited.build_request("getblock", {"hash": "a" * 9000})) > CPP_MAX_REQUEST


def test_output_formatting_keeps_amounts_as_written():
    assert format_result(None) is None
    assert format_result("abc") == "abc"
    assert format_result(7) == "7"
    assert format_result(True) == "true"
    payload = json.loads('{"balance":50.00000000,"list":[1,{"a":[]}],"e":{}}', parse_float=Decimal)
    assert format_result(payload) == (
        '{\n  "balance": 50.00000000,\n  "list": [\n    1,\n    {\n      "a": []\n    }\n  ],\n'
        '  "e": {}\n}')


def test_reply_parsing_tolerates_the_cpp_413_length():
    body = b'{"error":"Request too large (max 1MB)","code":-32700}'
    raw = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 52\r\n\r\n" + body
    assert _parse_reply(raw).body == body                     # declared one byte short
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage"
    assert _parse_reply(raw).body == b"{}"
    with pytest.raises(ServerRefused):
        _parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n")


# -- against a server that behaves like the C++ one (cli 3.3, 3.10) --------------------------------
class CppStyleServer(LoopbackServer):
    """Reads ONE recv(4096) per connection, like ``CRPCServer``, and answers canned bytes.

    Each connection records whether the complete request (headers and the
    whole ``Content-Length`` body) was in that single chunk.
    """

    def __init__(self, reply: bytes, reset_after: bool = False) -> None:
        self.reply, self.reset_after = reply, reset_after
        self.requests: list[bytes] = []
        self.complete: list[bool] = []
        super().__init__(backlog=128)          # serial: one connection at a time, like the C++

    def handle(self, conn) -> None:
        with conn:
            data = conn.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(l.split(b":")[1] for l in head.split(b"\r\n")
                              if l.lower().startswith(b"content-length")))
            self.requests.append(data)
            self.complete.append(len(body) == length)
            conn.sendall(self.reply)
            if self.reset_after:
                threading.Event().wait(0.2)                  # the client has read the reply
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def cpp_reply(body: bytes, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def test_whole_request_arrives_in_the_first_4096_byte_chunk():
    srv = CppStyleServer(cpp_reply(b'{"jsonrpc":"2.0","result":{"blockhash":"ab"},"id":1}'))
    try:
        client = RPCClient("127.0.0.1", srv.port, "u", "p")
        assert client.call("getblockhash", {"height": 3}) == {"blockhash": "ab"}
        assert client.call("getblock", {"hash": "c" * 3800}) == {"blockhash": "ab"}
        assert srv.complete == [True, True]
        first = srv.requests[0]
        assert first.startswith(b"POST / HTTP/1.1\r\n")
        assert b"Authorization: Basic dTpw\r\n" in first
        assert first.endswith(b'{"jsonrpc":"2.0","method":"getblockhash","params":[{"height":3}],"id":1}')
    finally:
        srv.close()


def test_non_jsonrpc_bodies_and_errors_from_a_cpp_node():
    cases = [
        (cpp_reply(b'{"error":"Rate limit exceeded. Please slow down your requests."}'),
         ServerRefused, "Rate limit exceeded"),
        (cpp_reply(b'{"error":"Invalid HTTP request"}'), ServerRefused, "Invalid HTTP request"),
        (b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 52\r\nConnection: close\r\n\r\n"
         b'{"error":"Request too large (max 1MB)","code":-32700}', ServerRefused, "too large"),
        (cpp_reply(b'{"error":"Unauthorized - Invalid or missing credentials"}',
                   "401 Unauthorized"), AuthFailed, "Unauthorized"),
        (cpp_reply(b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Mempool not initialized"},'
                   b'"id":1}'), RPCCallError, "Mempool not initialized"),
        (cpp_reply(b"not json"), ServerRefused, "HTTP 200: not json"),
    ]
    for reply, exc_type, text in cases:
        srv = CppStyleServer(reply)
        try:
            with pytest.raises(exc_type, match=text):
                RPCClient("127.0.0.1", srv.port).call("getmempoolinfo")
        finally:
            srv.close()


def test_reset_after_a_complete_reply_is_harmless():
    srv = CppStyleServer(cpp_reply(b'{"jsonrpc":"2.0","result":5,"id":1}'), reset_after=True)
    try:
        assert RPCClient("127.0.0.1", srv.port).call("getblockcount") == 5
    finally:
        srv.close()


def test_connection_refused_and_silent_close():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ConnectionFailed, match=f"could not connect to 127.0.0.1:{port}"):
        RPCClient("127.0.0.1", port).call("help")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept_and_close():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.close()

    t = threading.Thread(target=accept_and_close)
    t.start()
    with pytest.raises(ConnectionFailed, match="without replying"):
        RPCClient("127.0.0.1", listener.getsockname()[1]).call("help")
    t.join()
    listener.close()


# -- the real program against the real server ---------------------------------------------------
@pytest.fixture
def node_server(tmp_path):
    """A regtest node datadir at ``$HOME/.dilithion-regtest`` with a loaded chain and RPC."""
    home = tmp_path / "home"
    datadir = home / ".dilithion-regtest"
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=datadir,
                      hasher=RandomXHasher.for_key())
    ctx.blockchain = BlockchainDB(str(datadir / "blocks"))
    ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                      utxo_set=ctx.utxo_set)
    server = RPCServer(ctx)
    server.start()
    yield home, server
    server.stop()
    ctx.blockchain.close()


def run_cli(*args, home: Path | None = None, env: dict | None = None):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DILITHION_RPC_HOST", "DILITHION_RPC_PORT")}
    if home is not None:
        environment["HOME"] = str(home)
    environment.update(env or {})
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=30,
                          env=environment)


def test_cli_success_reads_the_default_datadir_cookie(node_server):
    home, server = node_server
    genesis = server.ctx.chainstate.tip().hash.get_hex()
    r = run_cli("--regtest", f"--rpcport={server.port}", "getblockcount", home=home)
    assert (r.returncode, r.stdout, r.stderr) == (0, "0\n", "")
    r = run_cli("--regtest", "getbestblockhash", home=home,
                env={"DILITHION_RPC_PORT": str(server.port)})
    assert (r.returncode, r.stdout) == (0, genesis + "\n")                 # bare string
    r = run_cli("--regtest", f"--rpcport={server.port}", "getblockhash", "0", home=home)
    assert r.returncode == 0 and json.loads(r.stdout) == {"blockhash": genesis}
    r = run_cli("--regtest", f"--rpcport={server.port}", "--rpcconnect=127.0.0.1",
                "getpeerinfo", home=home)
    assert (r.returncode, r.stdout) == (0, "[]\n")
    r = run_cli("--regtest", f"--rpcport={server.port}", "stop", "confirm", home=home)
    assert (r.returncode, r.stdout) == (0, "Dilithion node stopping\n")
    assert server.ctx.shutdown_requested.is_set()


def test_cli_conf_credentials_and_explicit_datadir(node_server, tmp_path):
    home, server = node_server
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dilithion.conf").write_text("rpcuser=bob\nrpcpassword=wrong\n")
    r = run_cli(f"--datadir={other}", f"--rpcport={server.port}", "help", home=home)
    assert r.returncode == 3 and "Unauthorized" in r.stderr               # conf beats nothing
    r = run_cli(f"--datadir={home / '.dilithion-regtest'}", f"--rpcport={server.port}",
                "getblockcount")
    assert (r.returncode, r.stdout) == (0, "0\n")


def test_cli_refuses_a_hash_in_the_conf_password(tmp_path):
    """The cli reads the same rule as the node: one error line, exit 1, no request."""
    (tmp_path / "dilithion.conf").write_text("rpcuser=bob\nrpcpassword=se#cret\n")
    r = run_cli(f"--datadir={tmp_path}", "--rpcport=1", "help")
    assert r.returncode == 1, r.stderr
    assert "dilithion.conf:2: '#' is not allowed in rpcpassword" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_exit_codes(node_server, tmp_path):
    home, server = node_server
    port = f"--rpcport={server.port}"
    r = run_cli("--regtest", port, "getblock", "00" * 32, home=home)         # RPC error
    assert (r.returncode, r.stdout) == (5, "")
    assert r.stderr == "error code: -5\nerror message: Block not found\n"
    r = run_cli("--regtest", port, "nosuchmethod", home=home)
    assert r.returncode == 5 and "error code: -32601" in r.stderr
    r = run_cli("--regtest", port, "--rpcuser=__cookie__", "--rpcpassword=" + "0" * 64, "help",
                home=home)                                                     # bad auth
    assert r.returncode == 3
    assert r.stderr == "error: Unauthorized - Invalid or missing credentials (HTTP 401)\n"
    r = run_cli("--regtest", port, "help", home=tmp_path / "nohome")          # no cookie at all
    assert r.returncode == 3
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    r = run_cli("--regtest", f"--rpcport={free}", "help", home=home)           # refused
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: could not connect to 127.0.0.1:{free}")
    for usage in (["--bogus-option", "help"], [], ["--testnet", "--regtest", "help"],
                  ["--rpcport=70000", "help"], ["--rpcuser=a", "help"],
                  ["--regtest", port, "getblockhash", "x"],
                  ["--regtest", port, "getblock", "a" * 5000]):
        r = run_cli(*usage, home=home)
        assert r.returncode == 1, (usage, r.stderr)
        assert r.stderr
    r = run_cli("--regtest", port, "getblock", "a" * 5000, home=home)
    assert "the request is" in r.stderr and "4096" in r.stderr
    r = run_cli("--regtest", port, "--allow-large-request", "getblock", "a" * 5000, home=home)
    assert r.returncode == 5 and "Invalid hash parameter format" in r.stderr  # sent and answered
    r = run_cli("--help")
    assert r.returncode == 0 and "METHOD" in r.stdout
