"""RPCServer on loopback with real node components: transport, auth, limits, envelope, methods."""
from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time

import pytest

from dilithion.consensus.chain import BlockStatus, ChainState
from dilithion.consensus.validation import block_transactions
from dilithion.core.chainparams import ChainParams
from dilithion.crypto.mldsa import KeyPair, create_script_pub_key
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.mining.template import mine_block
from dilithion.node.blockchain_storage import BlockchainDB
from dilithion.node.chain_loader import load_chain_state
from dilithion.node.init import miner_for
from dilithion.node.context import NodeContext
from dilithion.primitives.block import Uint256
from dilithion.primitives.transaction import OutPoint
from dilithion.rpc.auth import basic_auth_header, read_cookie
from dilithion.rpc.client import RPCClient, RPCCallError, UsageError
from dilithion.rpc.ratelimiter import AuthBackoff, RateLimiter
from dilithion.rpc.server import HTTPLimits, RPCServer

from coins_helpers import FEE, p2pkh, spend
from framework import MINER, REGTEST, InProcessNode, regtest_chain, wait_until


# -- raw HTTP helpers (independent of dilithion-cli) ---------------------------------------
def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers, body


def http_request(port: int, body: bytes, auth: str | None, method: str = "POST",
                 extra: str = "") -> bytes:
    head = f"{method} / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    if auth:
        head += f"Authorization: {auth}\r\n"
    return (head + extra + "\r\n").encode() + (body or b"")


class Rpc:
    """Posts JSON bodies to one server with the cookie credentials."""

    def __init__(self, server: RPCServer) -> None:
        self.server = server
        user, password = read_cookie(server.ctx.datadir)
        self.auth = basic_auth_header(user, password)

    def post(self, body: bytes | str, auth: str | None = "cookie") -> tuple[int, dict, bytes]:
        body = body.encode() if isinstance(body, str) else body
        return exchange(self.server.port,
                        http_request(self.server.port, body, self.auth if auth == "cookie" else auth))

    def envelope(self, body: bytes | str):
        status, _, data = self.post(body)
        assert status == 200
        return json.loads(data)

    def call(self, method: str, params=None, request_id=1) -> dict:
        body = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            body["params"] = params
        return self.envelope(json.dumps(body))

    def result(self, method: str, params=None):
        reply = self.call(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method: str, params=None) -> tuple[int, str]:
        reply = self.call(method, params)
        assert "result" not in reply, reply
        return reply["error"]["code"], reply["error"]["message"]


def start_server(ctx, **kw) -> tuple[RPCServer, Rpc]:
    server = RPCServer(ctx, **kw)
    assert server.start()
    return server, Rpc(server)


@pytest.fixture
def bare(tmp_path):
    """A server over a context with no components (node not wired yet)."""
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, rpc = start_server(ctx)
    yield rpc
    server.stop()


@pytest.fixture(scope="module")
def chain10():
    return regtest_chain(10)


@pytest.fixture
def node(tmp_path, chain10):
    """A full in-process node (LevelDB chain, UTXO set, mempool, P2P) with 10 mined blocks."""
    n = InProcessNode(tmp_path, "node", rpc=False, coins=True).start()
    n.load(chain10)
    server, rpc = start_server(n.ctx)
    yield n, rpc
    server.stop()
    n.close()


# -- lifecycle and cookie --------------------------------------------------------------------
def test_cookie_is_0600_while_running_and_removed_at_stop(tmp_path):
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path / "d",
                      hasher=RandomXHasher.for_key())
    server = RPCServer(ctx)
    assert server.start() and not server.start()           # second start is refused
    cookie = tmp_path / "d" / ".cookie"
    user, password = cookie.read_text().split(":")
    assert user == "__cookie__" and len(password) == 64 and int(password, 16) >= 0
    assert stat.S_IMODE(os.stat(cookie).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "d").iterdir()] == [".cookie"]   # no temp files left
    port = server.port
    assert port > 0
    server.stop()
    server.stop()                                             # idempotent
    assert not cookie.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert server.start()                                     # restart: a fresh cookie
    assert read_cookie(tmp_path / "d")[1] != password
    server.stop()


def test_bind_failure_raises_and_leaves_no_cookie(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                          hasher=RandomXHasher.for_key())
        server = RPCServer(ctx, port=blocker.getsockname()[1])
        with pytest.raises(OSError):
            server.start()
        assert not (tmp_path / ".cookie").exists() and not server.is_running()
    finally:
        blocker.close()


def test_stop_does_not_wait_for_an_idle_connection(tmp_path):
    # An idle limit of an hour: a stop() that waited it out could not pass the 30 s guard.
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, _ = start_server(ctx, limits=HTTPLimits(idle_timeout=3600.0, request_timeout=3600.0))
    idle = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"POST / HTTP/1.1\r\n")                        # a request never finished
    assert wait_until(lambda: server.open_connections() == 2)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(30)                                          # liveness guard
    assert not stopper.is_alive() and not server.is_running()
    idle.settimeout(5)
    assert idle.recv(1) == b""                                # closed by the server
    idle.close()
    half.close()


# -- authentication ------------------------------------------------------------------------------
def test_missing_and_wrong_credentials_get_401_with_realm(bare):
    bare.server.backoff.base_delay = 0.0      # back-off tested below: every attempt judged here
    for auth in (None, "Basic !!!notbase64", "Bearer abc",
                 basic_auth_header("__cookie__", "0" * 64), basic_auth_header("x", "y")):
        status, headers, body = bare.post('{"method":"help","id":1}', auth=auth)
        assert status == 401
        assert headers["www-authenticate"] == 'Basic realm="Dilithion RPC"'
        assert json.loads(body) == {"error": "Unauthorized - Invalid or missing credentials"}
    status, _, _ = bare.post('{"method":"help","id":1}')
    assert status == 200


def test_conf_credentials_accepted_beside_the_cookie(tmp_path):
    (tmp_path / "dilithion.conf").write_text("# comment\nrpcuser=alice\nrpcpassword=s3cret # x\n")
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, rpc = start_server(ctx)
    try:
        assert rpc.post('{"method":"help","id":1}', auth=basic_auth_header("alice", "s3cret"))[0] == 200
        assert rpc.post('{"method":"help","id":1}', auth=basic_auth_header("alice", "s3cre"))[0] == 401
        assert rpc.post('{"method":"help","id":1}')[0] == 200          # cookie still works
    finally:
        server.stop()


def test_wrong_passwords_back_off_per_source_and_reset_with_time(tmp_path):
    """Deliberate change (issue #11): no 300 s lockout after five failures; each wrong
    password puts its source into a doubling back-off (403 while it lasts, with
    Retry-After), the cookie is never refused, and the count resets with time."""
    now = [1000.0]
    backoff = AuthBackoff(clock=lambda: now[0])
    (tmp_path / "dilithion.conf").write_text("rpcuser=alice\nrpcpassword=s3cret\n")
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, rpc = start_server(ctx, backoff=backoff)
    wrong = basic_auth_header("alice", "guess")
    alice = basic_auth_header("alice", "s3cret")
    try:
        for _ in range(4):
            assert rpc.post('{"method":"help"}', auth=None)[0] == 401  # missing: not counted
        assert backoff.failures("127.0.0.1") == 0
        assert rpc.post('{"method":"help"}', auth=wrong)[0] == 401
        status, headers, body = rpc.post('{"method":"help"}', auth=wrong)   # within 250 ms
        assert status == 403 and headers["retry-after"] == "1"
        assert json.loads(body) == {"error": "Too many failed authentication attempts. Try again later."}
        assert rpc.post('{"method":"help"}', auth=alice)[0] == 403       # not judged meanwhile
        assert rpc.post('{"method":"help"}')[0] == 200                   # the cookie always passes
        for failures in range(2, 7):
            now[0] += 0.25 * 2 ** (failures - 2)                       # wait out the back-off
            assert rpc.post('{"method":"help"}', auth=wrong)[0] == 401
        assert backoff.failures("127.0.0.1") == 6
        status, headers, _ = rpc.post('{"method":"help"}', auth=alice)
        assert status == 403 and headers["retry-after"] == "8"           # 0.25 * 2**5
        now[0] += 8
        assert rpc.post('{"method":"help"}', auth=alice)[0] == 200      # success resets
        assert backoff.failures("127.0.0.1") == 0
        assert rpc.post('{"method":"help"}', auth=wrong)[0] == 401
        now[0] += AuthBackoff.RESET_AFTER                               # forgotten with time
        assert backoff.retry_after("127.0.0.1") == 0 and backoff.failures("127.0.0.1") == 0
    finally:
        server.stop()


# -- limits ------------------------------------------------------------------------------------
def test_rate_limit_per_user_window(tmp_path):
    """Deliberate change (issue #11): counted per conf user after authentication; the
    cookie and requests without valid credentials are not counted."""
    now = [50.0]
    (tmp_path / "dilithion.conf").write_text("rpcuser=alice\nrpcpassword=s3cret\n")
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, rpc = start_server(ctx, limiter=RateLimiter(max_requests_per_window=3,
                                                        clock=lambda: now[0]))
    alice = basic_auth_header("alice", "s3cret")
    try:
        assert [rpc.post('{"method":"help"}', auth=alice)[0] for _ in range(3)] == [200] * 3
        status, headers, body = rpc.post('{"method":"help"}', auth=alice)
        assert status == 429 and int(headers["retry-after"]) == 60
        assert json.loads(body) == {"error": "Rate limit exceeded. Please slow down your requests."}
        assert rpc.post('{"method":"help"}', auth=None)[0] == 401        # counted after auth
        assert [rpc.post('{"method":"help"}')[0] for _ in range(5)] == [200] * 5   # cookie
        now[0] += 60
        assert rpc.post('{"method":"help"}', auth=alice)[0] == 200
    finally:
        server.stop()


def test_default_rate_limit_is_configurable(tmp_path):
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server = RPCServer(ctx, rate_limit=2)
    assert server.limiter.max_requests == 2
    assert RPCServer(ctx).limiter.max_requests == 600


def test_oversized_request_gets_413_without_and_with_the_body(tmp_path):
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, rpc = start_server(ctx, max_request_bytes=1000)
    try:
        head = http_request(server.port, None, rpc.auth, extra="Content-Length: 1001\r\n")
        status, _, body = exchange(server.port, head)                     # headers only
        assert status == 413
        assert json.loads(body) == {"error": "Request too large (max 1000 bytes)", "code": -32700}
        big = b'{"method":"help","params":["' + b"x" * 300_000 + b'"]}'
        status, _, body = exchange(server.port, http_request(server.port, big, rpc.auth))
        assert status == 413                                              # whole body sent too
        over = b'{"method":"help","id":"' + b"y" * 976 + b'"}'
        assert len(over) == 1001 and rpc.post(over)[0] == 413
        assert rpc.post(over[:998] + b'"}')[0] == 200                     # exactly the limit
    finally:
        server.stop()
    default = RPCServer(ctx)
    assert default.max_request_bytes == 1024 * 1024


def test_http_edge_cases(bare):
    port, auth = bare.server.port, bare.auth
    status, headers, _ = exchange(port, http_request(port, None, auth, method="GET"))
    assert status == 405 and headers["allow"] == "POST"
    status, _, body = exchange(port, http_request(port, None, auth))     # POST without length
    assert status == 411 and "Content-Length" in json.loads(body)["error"]
    status, _, _ = exchange(port, http_request(port, None, auth, extra="Content-Length: x1\r\n"))
    assert status == 400
    status, _, body = exchange(port, http_request(port, b"  ", auth))
    assert status == 400 and json.loads(body) == {"error": "Invalid HTTP request"}
    for junk in (b"GARBAGE\r\n\r\n", b"GET /\r\n\r\n", b"POST / HTTP/9.9\r\n\r\n"):
        status, _, body = exchange(port, junk)
        assert status in (400, 401, 505) and "error" in json.loads(body)


def test_body_in_separate_segments_and_over_4096_bytes(bare):
    """cli 6.3 #27: Content-Length is honoured (http.client sends headers and body apart)."""
    body = json.dumps({"jsonrpc": "2.0", "method": "help", "params": [], "id": "x" * 6000})
    conn = http.client.HTTPConnection("127.0.0.1", bare.server.port, timeout=10)
    conn.request("POST", "/any/path", body, {"Authorization": bare.auth,
                                               "Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 200 and reply.getheader("Connection") == "close"
    data = json.loads(reply.read())
    assert data["id"] == "x" * 6000 and "getblockcount - Get the current block height" in \
        data["result"]["commands"]
    conn.close()


# -- JSON-RPC envelope ---------------------------------------------------------------------------
def test_parse_errors_and_invalid_requests(bare):
    for bad in ("{bad", '{"method":"help"', "NaN", '{"method":"help","id":Infinity}',
                b"\xff\xfe\x00"):
        assert bare.envelope(bad) == {"jsonrpc": "2.0", "error": {"code": -32700,
                                                                    "message": "Parse error"},
                                      "id": None}
    assert bare.envelope("5")["error"]["code"] == -32600
    assert bare.envelope("[]")["error"] == {"code": -32600, "message": "Invalid Request: empty batch"}
    assert bare.envelope('{"id":7}') == {"jsonrpc": "2.0", "error": {
        "code": -32600, "message": "Invalid Request: method must be a string"}, "id": 7}
    assert bare.envelope('{"method":5,"id":7}')["error"]["code"] == -32600
    assert bare.envelope('{"method":"help","id":{"a":1}}')["error"]["code"] == -32600
    assert bare.envelope('{"method":"help","id":true}')["error"]["code"] == -32600


def test_unknown_method_and_exact_case(bare):
    assert bare.call("nosuchmethod", [], "q") == {
        "jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "q"}
    assert bare.error("HELP")[0] == -32601
    assert bare.error("getbalance")[0] == -32601                       # wallet: not served


def test_ids_are_echoed_exactly_and_response_is_compact(bare):
    """cli 6.3 #30: the C++ misreads ids; here any string/number/null comes back as sent."""
    for request_id in ("12x", "7", -3, 2.5, None, 'quote"and\\backslash'):
        assert bare.call("help", None, request_id)["id"] == request_id
    status, _, raw = bare.post('{"id":5,"jsonrpc":"2.0","method":"stop","params":{"confirm":false}}')
    assert raw == (b'{"jsonrpc":"2.0","error":{"code":-8,"message":'
                   b'"Shutdown not confirmed (confirm is false)"},"id":5}')


def test_error_messages_are_json_escaped(bare):
    """cli 6.3 #31: a message carrying quotes and control characters stays valid JSON."""
    code, message = bare.error("help", {"command": 'ev"il\n\\'})
    assert (code, message) == (-8, 'Unknown command: ev"il\n\\')


def test_batch_mixes_results_and_errors_in_order(bare):
    replies = bare.envelope(json.dumps([
        {"jsonrpc": "2.0", "method": "help", "params": {"command": "stop"}, "id": 1},
        {"jsonrpc": "2.0", "method": "nosuch", "id": 2},
        17,
        {"jsonrpc": "2.0", "method": "getblockcount", "id": 3}]))
    assert [r["id"] for r in replies] == [1, 2, None, 3]
    assert replies[0]["result"] == "stop - Stop the Dilithion node"
    assert replies[1]["error"]["code"] == -32601
    assert replies[2]["error"]["code"] == -32600
    assert replies[3]["error"] == {"code": -32603, "message": "Chain state not initialized"}


def test_params_errors_are_32602(bare):
    cases = [
        ("help", {"command": 5}, "Invalid command parameter format (expected a string)"),
        ("help", ["a", "b"], "Too many parameters for help: expected at most 1, got 2"),
        ("help", {"cmd": "x"}, "Unknown parameter cmd for help (accepted: command)"),
        ("getblockcount", [1], "Too many parameters for getblockcount: expected at most 0, got 1"),
        ("getblockhash", [], "Missing height parameter"),
        ("getblockhash", [{}], "Missing height parameter"),
        ("getblockhash", {"height": None}, "Missing height parameter"),
        ("getblockhash", ["1"], "Invalid height parameter format (expected an integer)"),
        ("getblockhash", [True], "Invalid height parameter format (expected an integer)"),
        ("getblockhash", [1.5], "Invalid height parameter format (expected an integer)"),
        ("stop", {"confirm": "yes"}, "Invalid confirm parameter format (expected a boolean)"),
        ("getblock", [{"hash": ["x"]}], "Invalid hash parameter format (expected a string)"),
        ("getblockhash", "5", "params must be an array or an object"),
    ]
    for method, params, message in cases:
        assert bare.error(method, params) == (-32602, message), (method, params)


def test_components_missing_give_cpp_messages(bare):
    expected = {
        "getblockcount": "Chain state not initialized",
        "getbestblockhash": "Blockchain not initialized",
        "getblockchaininfo": "Blockchain not initialized",
        "getchaintips": "Chain state not initialized",
        "getmempoolinfo": "Mempool not initialized",
        "getrawmempool": "Mempool not initialized",
        "gettransaction": "Mempool not initialized",
        "getmininginfo": "Miner not initialized",
        "startmining": "Miner not initialized",
        "stopmining": "Miner not initialized",
        "getbroadcastinfo": "Broadcaster not initialized",
    }
    for method, message in expected.items():
        params = {"txid": "00" * 32} if method == "gettransaction" else None
        assert bare.error(method, params) == (-32603, message)
    assert bare.error("getblockhash", [0]) == (-32603, "Chain state not initialized")
    assert bare.error("getblock", ["00" * 32]) == (-32603, "Blockchain not initialized")
    assert bare.error("sendrawtransaction", ["00"]) == (-32603, "Mempool not initialized")
    assert bare.error("addnode", ["127.0.0.1:1"]) == (-32603,
                                                      "P2P connection manager not initialized")
    assert bare.error("disconnectnode", {"nodeid": 1}) == (
        -32603, "P2P connection manager not initialized")
    assert bare.result("getpeerinfo") == []
    assert bare.result("getnetworkinfo") == {"version": "0.1.0", "subversion": "/DilithionPy:0.1.0/",
                                             "protocolversion": 70001, "connections": 0}


def test_handler_exception_becomes_internal_error(tmp_path):
    """An unloaded ChainState raises inside the handler: -32603 with its message, server lives."""
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    ctx.blockchain = BlockchainDB(str(tmp_path / "blocks"))
    ctx.chainstate = ChainState(ctx.chain_params, ctx.blockchain, ctx.hasher)   # never loaded
    server, rpc = start_server(ctx)
    try:
        assert rpc.error("getbestblockhash") == (-32603,
                                                 "chain state not loaded: no block tree adopted yet")
        assert rpc.result("getblockcount") == -1
    finally:
        server.stop()
        ctx.blockchain.close()


def test_help_stop_and_confirm(bare):
    commands = bare.result("help")["commands"]
    names = [c.split(" - ")[0] for c in commands]
    for required in ("getblockcount", "getbestblockhash", "getblockhash", "getblock",
                     "getblockchaininfo", "getchaintips", "getpeerinfo", "getnetworkinfo",
                     "getmininginfo", "startmining", "stopmining", "addnode", "disconnectnode",
                     "getrawmempool", "getmempoolinfo", "sendrawtransaction", "getbroadcastinfo",
                     "gettransaction", "decoderawtransaction", "getaddednodeinfo",
                     "help", "stop"):
        assert required in names
    assert all(" - " in c for c in commands)
    assert bare.error("help", ["nosuch"]) == (-8, "Unknown command: nosuch")
    ctx = bare.server.ctx
    assert bare.error("stop", [{"confirm": False}])[0] == -8
    assert not ctx.shutdown_requested.is_set()
    assert bare.result("stop", [{"confirm": True}]) == "Dilithion node stopping"
    assert ctx.shutdown_requested.is_set()
    ctx.shutdown_requested.clear()
    assert bare.result("stop") == "Dilithion node stopping"            # confirm not required
    assert ctx.shutdown_requested.is_set()


def test_concurrent_calls(bare):
    results: list[int] = []

    def worker():
        for _ in range(5):
            results.append(bare.post('{"method":"help","id":1}')[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 40


# -- chain methods on a real regtest chain ---------------------------------------------------------
def test_chain_methods(node, chain10):
    n, rpc = node
    tip_block, tip_hash = chain10[-1]
    assert rpc.result("getblockcount") == 10
    assert rpc.result("getbestblockhash") == tip_hash.get_hex()
    for params in ([3], {"height": 3}, [{"height": 3}]):                 # all three conventions
        assert rpc.result("getblockhash", params) == {"blockhash": chain10[3][1].get_hex()}
    assert rpc.error("getblockhash", [11]) == (-8, "No block found at height 11")
    assert rpc.error("getblockhash", [-1]) == (-8, "Height parameter out of range")

    info = rpc.result("getblock", [{"hash": tip_hash.get_hex()}])
    h = tip_block.header
    assert info == {
        "hash": tip_hash.get_hex(), "height": 10, "version": h.version,
        "previousblockhash": chain10[9][1].get_hex(), "merkleroot": h.hash_merkle_root.get_hex(),
        "time": h.time, "bits": "0x207fffff", "nonce": h.nonce, "tx_count": 1,
        "confirmations": 1, "tx": [block_transactions(tip_block)[0].get_hash()[::-1].hex()]}
    assert rpc.result("getblock", [chain10[0][1].get_hex()])["tx_count"] == 0   # genesis text
    assert rpc.result("getblock", [chain10[2][1].get_hex()])["confirmations"] == 9
    assert rpc.error("getblock", ["00" * 32]) == (-5, "Block not found")
    for bad in ("abc", "zz" * 32, "00" * 33):
        assert rpc.error("getblock", [bad]) == (
            -8, "Invalid hash parameter format (expected 64 hex digits)")

    bci = rpc.result("getblockchaininfo")
    assert bci["chain"] == "regtest" and bci["blocks"] == 10
    assert bci["bestblockhash"] == tip_hash.get_hex()
    assert bci["chainwork"] == f"{n.chain.tip().chain_work:064x}" and len(bci["chainwork"]) == 64
    assert bci["difficulty"] == 1.0                                    # regtest at its pow limit
    times = sorted(b.header.time for b, _ in chain10[-11:])
    assert bci["mediantime"] == times[5]
    assert rpc.result("getchaintips") == [{"height": 10, "hash": tip_hash.get_hex(),
                                           "branchlen": 0, "status": "active"}]


def test_getblockhash_returns_main_chain_not_fork(node, chain10):
    """cli 6.3 #37: the C++ picks the lowest raw hash at a height, possibly a fork block."""
    n, rpc = node
    hasher = RandomXHasher.for_key()
    for t in range(1, 40):                      # a side block at height 10 that sorts first
        block, h = mine_block(hasher, chain10[9][1], 10, MINER.pub_key_hash(), REGTEST,
                              now=REGTEST.genesis_time + 600 + t)
        if bytes(h) < bytes(chain10[10][1]):
            break
    assert n.chain.process_new_block(block, block_hash=h).status is BlockStatus.SIDE
    assert rpc.result("getblockhash", [10]) == {"blockhash": chain10[10][1].get_hex()}
    side = rpc.result("getblock", [h.get_hex()])
    assert side["height"] == 10 and side["confirmations"] == -1
    assert rpc.result("getchaintips") == [
        {"height": 10, "hash": t.get_hex(), "branchlen": branchlen, "status": status}
        for t, branchlen, status in sorted([(chain10[10][1], 0, "active"), (h, 1, "valid-fork")],
                                           key=lambda tip: bytes(tip[0]))]


def test_chain_name_per_network(tmp_path):
    for params, name in ((ChainParams.testnet(), "test"), (ChainParams.mainnet(), "main")):
        d = tmp_path / name
        ctx = NodeContext(chain_params=params, datadir=d, hasher=RandomXHasher.for_key())
        ctx.blockchain = BlockchainDB(str(d / "blocks"))
        ctx.chainstate = load_chain_state(ctx.chain_params, ctx.blockchain, ctx.hasher,
                                          utxo_set=ctx.utxo_set)
        server, rpc = start_server(ctx)
        try:
            info = rpc.result("getblockchaininfo")
            assert info["chain"] == name and info["blocks"] == 0 and info["difficulty"] > 1
        finally:
            server.stop()
            ctx.blockchain.close()


# -- mempool and transactions ------------------------------------------------------------------------
def test_sendrawtransaction_validates_pools_and_announces(tmp_path):
    chain = regtest_chain(100)                   # block 1's coinbase is mature at tip 100
    n = InProcessNode(tmp_path, "node", rpc=False, coins=True).start()
    n.load(chain)
    server, rpc = start_server(n.ctx)
    try:
        assert rpc.result("getmempoolinfo") == {"size": 0, "bytes": 0, "usage": 0,
                                                "min_fee_rate": 0, "max_fee_rate": 0}
        coinbase = block_transactions(chain[1][0])[0]
        tx = spend(MINER, [(OutPoint(coinbase.get_hash(), 0), None)],
                   [(coinbase.vout[0].value - FEE, p2pkh(MINER))])
        hex_tx = tx.serialize().hex()
        client = RPCClient("127.0.0.1", server.port, *read_cookie(n.ctx.datadir))
        with pytest.raises(UsageError, match="4096"):
            client.call("sendrawtransaction", {"hex": hex_tx})           # C++-safe cap
        client.max_request_bytes = None                                    # Python node only
        txid = client.call("sendrawtransaction", {"hex": hex_tx})
        assert txid == tx.get_hash()[::-1].hex()
        assert rpc.result("getrawmempool") == [txid]
        info = rpc.result("getmempoolinfo")
        size = len(tx.serialize())
        assert info["size"] == 1 and info["bytes"] == size == info["usage"]
        assert info["min_fee_rate"] == info["max_fee_rate"] == pytest.approx(FEE / size, rel=1e-5)
        assert rpc.result("gettransaction", [txid]) == {"txid": txid, "confirmations": 0,
                                                        "in_mempool": True}
        assert rpc.error("gettransaction", ["00" * 32]) == (-5, "Transaction not found in mempool")
        assert rpc.error("gettransaction", ["xyz"])[0] == -8
        assert rpc.result("decoderawtransaction", [hex_tx]) == {
            "txid": txid, "version": 1, "locktime": 0, "vin_count": 1, "vout_count": 1}
        assert wait_until(lambda: rpc.result("getbroadcastinfo")["tasks_done"] >= 1, 5)
        with pytest.raises(RPCCallError) as err:
            client.call("sendrawtransaction", {"hex": hex_tx})
        assert (err.value.code, err.value.message) == (-26, "Transaction rejected: Already in mempool")
        assert rpc.error("sendrawtransaction", ["zz"]) == (-22, "Invalid hex string")
        assert rpc.error("sendrawtransaction", [""]) == (-22, "Invalid hex string")
        code, message = rpc.error("sendrawtransaction", [hex_tx + "00"])
        assert code == -22 and message.startswith("Failed to deserialize transaction:")
        assert rpc.error("sendrawtransaction",
                         [coinbase.serialize().hex()]) == (
            -26, "Transaction rejected: Coinbase transaction is only valid in a block")
    finally:
        server.stop()
        n.close()


# -- P2P methods ----------------------------------------------------------------------------------
def test_peer_methods_with_two_nodes(node, tmp_path):
    n, rpc = node
    other = InProcessNode(tmp_path, "other", coins=False, rpc=False).start()
    try:
        assert rpc.result("getpeerinfo") == []
        assert rpc.result("addnode", [f"127.0.0.1:{other.p2p_port}", "onetry"]) is None
        assert wait_until(lambda: any(p["handshake"] for p in rpc.result("getpeerinfo")), 5)
        peers = rpc.result("getpeerinfo")
        assert peers[0]["addr"] == f"127.0.0.1:{other.p2p_port}"
        assert rpc.result("getnetworkinfo")["connections"] == 1
        assert isinstance(rpc.result("getbroadcastinfo")["queue_depth"], int)
        assert rpc.result("disconnectnode", {"address": f"127.0.0.1:{other.p2p_port}"}) is None
        assert wait_until(lambda: rpc.result("getpeerinfo") == [], 5)

        rpc.result("addnode", {"node": f"127.0.0.1:{other.p2p_port}"})         # command add
        assert wait_until(lambda: len(rpc.result("getpeerinfo")) == 1, 5)
        peer_id = rpc.result("getpeerinfo")[0]["id"]
        assert rpc.error("disconnectnode", {"nodeid": peer_id + 100}) == (
            -29, f"Node not found in connected nodes: {peer_id + 100}")
        # An added peer that drops is redialled by the main loop's maintain().
        assert rpc.result("disconnectnode", {"nodeid": peer_id}) is None
        assert wait_until(lambda: rpc.result("getpeerinfo") == [], 5)
        n.ctx.added_nodes.maintain()                                        # notices the loss
        n.ctx.added_nodes.maintain(now=time.monotonic() + 60)              # backoff elapsed
        assert wait_until(lambda: any(p["handshake"] for p in rpc.result("getpeerinfo")), 5)
        n.ctx.added_nodes.maintain()
        assert rpc.result("getaddednodeinfo") == [
            {"addednode": f"127.0.0.1:{other.p2p_port}", "connected": True,
             "peer_id": rpc.result("getpeerinfo")[0]["id"]}]
        # remove: disconnected and forgotten, so never redialled.
        rpc.result("addnode", [f"127.0.0.1:{other.p2p_port}", "remove"])
        assert wait_until(lambda: rpc.result("getpeerinfo") == [], 5)
        n.ctx.added_nodes.maintain(now=time.monotonic() + 600)
        time.sleep(0.3)
        assert rpc.result("getpeerinfo") == [] and rpc.result("getaddednodeinfo") == []
        assert rpc.error("addnode", [f"127.0.0.1:{other.p2p_port}", "remove"])[0] == -29
    finally:
        other.close()


def test_peer_method_bad_inputs(node):
    _, rpc = node
    for bad in ("example.com:1", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", "1.2.3:4",
                "[::1", "127.0.0.1:1:2"):
        code, message = rpc.error("addnode", [bad])
        assert code == -8 and message.startswith(f"Invalid node address: {bad}")
    assert rpc.error("addnode", ["127.0.0.1:1", "sometimes"]) == (
        -8, "Invalid command parameter: sometimes (expected add, remove or onetry)")
    assert rpc.error("disconnectnode") == (-8, "Give exactly one of address or nodeid")
    assert rpc.error("disconnectnode", {"address": "127.0.0.1:1", "nodeid": 1})[0] == -8
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                           # nothing listens: refused later
    assert rpc.result("addnode", [f"127.0.0.1:{port}", "onetry"]) is None


# -- mining ----------------------------------------------------------------------------------------
def test_mining_methods(node):
    n, rpc = node
    n.ctx.miner = miner_for(n.ctx, threads=1, pub_key_hash=MINER.pub_key_hash())
    info = rpc.result("getmininginfo")
    assert info == {"mining": False, "hashrate": 0, "threads": 1, "blocks": 10, "chain": "regtest",
                    "randomx": {"mode": "light", "setting": "light", "dataset": "none",
                                "dataset_build_seconds": 0.0}}
    assert rpc.result("startmining") is True
    assert rpc.result("startmining") is True                         # already mining: true
    assert rpc.result("getmininginfo")["mining"] is True
    assert wait_until(lambda: rpc.result("getblockcount") >= 12, 20)
    assert rpc.result("stopmining") is True
    assert rpc.result("stopmining") is True
    info = rpc.result("getmininginfo")
    assert info["mining"] is False and info["blocks"] >= 12


def test_generatetoaddress_mines_now_and_pays_the_address(node):
    n, rpc = node
    n.ctx.miner = miner_for(n.ctx, threads=1, pub_key_hash=MINER.pub_key_hash())
    payee = KeyPair.from_seed(bytes([7]) * 32)
    start = rpc.result("getblockcount")
    hashes = rpc.result("generatetoaddress", [3, payee.address()])
    assert len(hashes) == 3 and rpc.result("getblockcount") == start + 3
    assert rpc.result("getbestblockhash") == hashes[-1]
    for h in hashes:
        block = n.chain.get_block(Uint256.from_hex(h))
        coinbase = block_transactions(block)[0]
        assert coinbase.vout[0].script_pubkey == create_script_pub_key(payee.pub_key_hash())
    # maxtries is a hash budget: one hash cannot always be enough, and never yields more.
    assert len(rpc.result("generatetoaddress", {"nblocks": 5, "address": payee.address(),
                                                "maxtries": 1})) <= 1
    assert rpc.error("generatetoaddress", [0, payee.address()]) == (
        -8, "nblocks must be between 1 and 1000")
    assert rpc.error("generatetoaddress", [1, "Dnotanaddress"]) == (-5, "Invalid address: Dnotanaddress")
    assert rpc.error("generatetoaddress", [1])[0] == -32602
    assert rpc.error("generatetoaddress", ["1", payee.address()])[0] == -32602


# -- building blocks ----------------------------------------------------------------------------
def test_rate_limiter_window_and_cleanup():
    now = [0.0]
    limiter = RateLimiter(max_requests_per_window=2, clock=lambda: now[0])
    assert [limiter.allow_request("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow_request("b")                                   # per user
    assert limiter.get_request_count("a") == 2 and limiter.seconds_until_reset("a") == 60
    now[0] = 59.5
    assert not limiter.allow_request("a") and limiter.seconds_until_reset("a") == 1
    now[0] = 60.0                                                       # fixed window restarts
    assert limiter.allow_request("a") and limiter.get_request_count("a") == 1
    now[0] = 60.0 + 3600.0                                              # a request sweeps
    assert limiter.allow_request("c")                                   # records an hour old
    assert limiter.get_request_count("a") == 0 and limiter.get_request_count("b") == 0
    unlimited = RateLimiter(max_requests_per_window=0)
    assert all(unlimited.allow_request("x") for _ in range(1000))


def test_auth_backoff_doubles_caps_resets_and_bounds_memory():
    now = [0.0]
    backoff = AuthBackoff(max_delay=2.0, reset_seconds=100.0, max_sources=3, clock=lambda: now[0])
    assert backoff.retry_after("c") == 0
    assert [backoff.record_failure("c") for _ in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert backoff.retry_after("c") == 2.0 and backoff.retry_after("d") == 0
    now[0] = 1.5
    assert backoff.retry_after("c") == 0.5
    now[0] = 99.9
    assert backoff.retry_after("c") == 0 and backoff.failures("c") == 5
    now[0] = 100.0                                                      # reset with time
    assert backoff.retry_after("c") == 0 and backoff.failures("c") == 0
    assert backoff.record_failure("c") == 0.25                          # starts over
    backoff.record_success("c")
    assert backoff.failures("c") == 0
    for i, src in enumerate("wxyz"):
        now[0] = 200.0 + i
        backoff.record_failure(src)
    assert backoff.failures("w") == 0 and backoff.failures("z") == 1    # oldest forgotten


def test_config_and_cookie_helpers(tmp_path):
    from dilithion.rpc.auth import Authenticator, AuthResult, CookieFile, read_config
    assert read_config(tmp_path / "missing.conf") == {}
    conf = tmp_path / "dilithion.conf"
    conf.write_text("  rpcuser = a  \nnot a pair\n=x\n# all comment\nrpcuser=b#c\nrpcpassword=\n")
    assert read_config(conf) == {"rpcuser": "b", "rpcpassword": ""}
    cookie = CookieFile.create(tmp_path)
    (tmp_path / ".cookie").write_text("__cookie__:" + "1" * 64)          # replaced by another node
    cookie.remove()
    assert (tmp_path / ".cookie").exists()                               # not ours: kept
    auth = Authenticator()
    with pytest.raises(ValueError):
        auth.add("", "x")
    auth.add("u", "p:with:colons")
    assert auth.check(basic_auth_header("u", "p:with:colons")) is AuthResult.OK
    assert auth.check("basic " + basic_auth_header("u", "p:with:colons")[6:]) is AuthResult.OK
    assert auth.check(basic_auth_header("u", "p")) is AuthResult.WRONG
    assert auth.check("Basic dXNlcg==") is AuthResult.MISSING           # no colon
    assert auth.check(None) is AuthResult.MISSING


def test_half_configured_conf_is_ignored_cookie_still_works(tmp_path):
    (tmp_path / "dilithion.conf").write_text("rpcuser=alice\n")
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server, rpc = start_server(ctx)
    try:
        assert len(server.authenticator) == 1 and rpc.post('{"method":"help"}')[0] == 200
    finally:
        server.stop()


def test_rpcbind_ipv6_loopback(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    server = RPCServer(ctx, host="::1")
    try:
        server.start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        client = RPCClient("::1", server.port, *read_cookie(tmp_path))
        assert client.call("help", {"command": "stop"}) == "stop - Stop the Dilithion node"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    finally:
        server.stop()


def test_hash_inside_rpcpassword_is_refused_not_cut(tmp_path):
    """``rpcpassword=ab#cd`` would be cut to ``ab`` by the comment rule: the operator
    gets an error naming the line, never a password that silently does not work."""
    from dilithion.rpc.auth import ConfigError, read_config
    conf = tmp_path / "dilithion.conf"
    conf.write_text("rpcuser=alice\nrpcpassword=s3c#ret\n")
    with pytest.raises(ConfigError, match=r"dilithion.conf:2: '#' is not allowed in rpcpassword"):
        read_config(conf)
    conf.write_text("rpcuser=alice\nrpcpassword=s3cret  # the comment\n")
    assert read_config(conf)["rpcpassword"] == "s3cret"
    conf.write_text("rpcuser=alice\nrpcpassword=s3c#ret\n")
    ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=tmp_path,
                      hasher=RandomXHasher.for_key())
    with pytest.raises(ConfigError):
        RPCServer(ctx, port=0).start()
    assert not (tmp_path / ".cookie").exists()
