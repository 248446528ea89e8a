"""Issue #11: the RPC server under load and attack, on real sockets.

Bounded threads and descriptors while connections are held (a real node
process), the whole-request deadline, the bounded work queue (503), eviction
over the connection cap, keep-alive with an idle limit, accept pauses on
descriptor exhaustion, authentication that never locks the cookie holder out,
the allow-list, and the metrics.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time

import pytest
from prometheus_client import generate_latest

from dilithion.core.chainparams import ChainParams
from dilithion.crypto.randomx_hash import RandomXHasher
from dilithion.node.context import NodeContext
from dilithion.node.metrics import NodeMetrics
from dilithion.rpc.access import AllowList, is_loopback_host
from dilithion.rpc.auth import basic_auth_header, read_cookie
from dilithion.rpc.methods import RPCMethod
from dilithion.rpc.server import HTTPLimits, RPCServer

from framework import ProcessNode, run_node, wait_until

BODY = b'{"jsonrpc":"2.0","method":"getblockcount","params":[],"id":1}'


def request(auth: str | None, body: bytes = BODY, extra: str = "") -> bytes:
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n" + extra
    if auth:
        head += f"Authorization: {auth}\r\n"
    return (head + "\r\n").encode() + body


def read_reply(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP reply (headers + Content-Length body) from ``sock``."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a reply: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def post(port: int, auth: str | None, body: bytes = BODY, source: str = "127.0.0.1",
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(request(auth, body))
        return read_reply(s)


def closed_by_peer(sock: socket.socket, timeout: float = 30.0) -> bool:
    """True once the server closed ``sock`` (EOF or reset) within ``timeout`` (a guard)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(**kw) -> tuple[RPCServer, str]:
        datadir = tmp_path / f"s{len(servers)}"
        ctx = NodeContext(chain_params=ChainParams.regtest(), datadir=datadir,
                          hasher=RandomXHasher.for_key())
        server = RPCServer(ctx, **kw)
        assert server.start()
        servers.append(server)
        return server, basic_auth_header(*read_cookie(datadir))

    yield make
    for server in servers:
        server.stop()


def proc_counts(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def held_connections(port: int, idle: int, slow: int):
    """``idle`` connections that send nothing and ``slow`` ones trickling header bytes,
    all closed on exit."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle + slow)]
    stop = threading.Event()

    def trickle():
        n = 0
        while not stop.is_set():
            for s in conns[idle:]:
                try:
                    s.send(b"POST / HTTP/1.1\r\n" if n == 0 else b"X")
                except OSError:
                    pass
            n += 1
            stop.wait(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        yield conns
    finally:
        stop.set()
        t.join()
        for s in conns:
            s.close()


def timed_getblockcount(node) -> float:
    """Seconds one authenticated ``getblockcount`` (at height 0) takes."""
    started = time.monotonic()
    assert node.rpc("getblockcount") == 0
    return time.monotonic() - started


# -- bounded resources (a real node process) ------------------------------------------------
def test_threads_and_descriptors_stay_bounded_and_operator_served(tmp_path):
    """300 idle + 50 slow connections: the node's thread count does not move, its
    descriptors grow by at most the connection cap, and dilithion-cli's request still
    answers.  Old code: a thread and a descriptor per connection (+350 each)."""
    node = ProcessNode(tmp_path, "n", extra_args=["--rpcthreads=4", "--rpcmaxconnections=64",
                                                  "--rpcservertimeout=30"]).start()
    try:
        assert node.rpc("getblockcount") == 0
        threads0, fds0 = proc_counts(node.proc.pid)
        with held_connections(node.rpc_port, 300, 50):
            evicted = ("rpc_rejected_total", (("reason", "evicted"),))
            assert wait_until(lambda: node.metric_samples()[evicted] >= 350 - 64, timeout=60)
            threads1, fds1 = proc_counts(node.proc.pid)
            elapsed = timed_getblockcount(node)
            print(f"\nthreads {threads0}->{threads1}, descriptors {fds0}->{fds1} with 350 "
                  f"connections held; getblockcount answered in {elapsed * 1000:.1f} ms")
            assert threads1 - threads0 <= 2
            assert fds1 - fds0 <= 64 + 4
            assert node.metric_samples()[("rpc_open_connections", ())] <= 64
    finally:
        node.stop()


def descriptor_limited(nofile: int) -> list[str]:
    """The command prefix that starts a node process with a small descriptor limit."""
    return ["prlimit", f"--nofile={nofile}:{nofile}"]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/usr/bin/prlimit"), reason="needs prlimit")
def test_descriptor_exhaustion_neither_spins_nor_locks_the_operator_out(tmp_path):
    """A node with 64 descriptors and 150 idle RPC connections: the accept loop does
    not burn a core and dilithion-cli is still answered (an idle client's descriptor is
    freed for it).  Old code: a thread per connection, then a busy accept loop on EMFILE."""
    node = ProcessNode(tmp_path, "n", ["--rpcmaxconnections=1000", "--rpcidletimeout=600"],
                       command_prefix=descriptor_limited(64)).start()
    try:
        assert node.rpc("getblockcount") == 0
        conns = [socket.create_connection(("127.0.0.1", node.rpc_port)) for _ in range(150)]
        try:
            assert wait_until(lambda: len(os.listdir(f"/proc/{node.proc.pid}/fd")) >= 60)
            time.sleep(0.5)
            cpu0 = cpu_seconds(node.proc.pid)
            time.sleep(2.0)
            burned = cpu_seconds(node.proc.pid) - cpu0
            started = time.monotonic()
            assert node.rpc("getblockcount") == 0
            elapsed = time.monotonic() - started
            print(f"\n64 descriptors, 150 idle connections: {burned:.2f} s CPU in 2 s; "
                  f"getblockcount answered in {elapsed * 1000:.1f} ms")
            assert burned < 0.5
        finally:
            for s in conns:
                s.close()
        assert node.is_running()
    finally:
        node.stop()


def test_non_loopback_bind_without_allow_list_fails_at_startup(tmp_path):
    """Old code: started, with only a warning in the log."""
    result = run_node(["--regtest", f"--datadir={tmp_path / 'd'}", "--rpcbind=0.0.0.0"],
                      cwd=tmp_path)
    assert result.returncode == 1
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--rpcallowip" in lines[0] and "0.0.0.0" in lines[0], result.stderr
    assert not (tmp_path / "d" / ".cookie").exists()
    bad = run_node(["--regtest", f"--datadir={tmp_path / 'd'}", "--rpcallowip=10.0.0.0/33"],
                   cwd=tmp_path)
    assert bad.returncode == 1 and "rpcallowip" in bad.stderr


def test_allow_list_admits_loopback_and_listed_networks(make_server):
    allow = AllowList(["10.0.0.0/8", "192.168.1.7", "fd00::/8"])
    assert allow.allows("127.0.0.1") and allow.allows("127.3.4.5") and allow.allows("::1")
    assert allow.allows("10.200.0.1") and allow.allows("192.168.1.7") and allow.allows("fd00::5")
    assert allow.allows("::ffff:10.1.1.1")
    assert not allow.allows("192.168.1.8") and not allow.allows("8.8.8.8")
    assert not allow.allows("garbage")
    with pytest.raises(ValueError):
        AllowList(["10.0.0.0/33"])
    assert is_loopback_host("127.0.0.1") and is_loopback_host("localhost")
    assert is_loopback_host("::1") and not is_loopback_host("0.0.0.0")
    server, auth = make_server(host="0.0.0.0", allow_ips=["10.0.0.0/8"])
    assert post(server.port, auth)[0] == 200                 # loopback stays allowed


# -- deadlines and keep-alive ---------------------------------------------------------------
def test_slow_header_client_is_dropped_at_the_request_deadline(make_server):
    """A byte every 0.2 s keeps a per-read timeout happy forever; the whole-request
    deadline (1 s here) drops it.  Old code: the 30 s timeout applied per read."""
    server, _ = make_server(limits=HTTPLimits(request_timeout=1.0, idle_timeout=60.0))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST / HTTP/1.1\r\n")
    sent = 0
    dropped = False
    guard = time.monotonic() + 30                              # liveness guard only
    while time.monotonic() < guard:
        try:
            sock.sendall(b"X")
            sent += 1
        except OSError:
            dropped = True
            break
        sock.settimeout(0.2)
        try:
            if sock.recv(1) == b"":
                dropped = True
                break
        except socket.timeout:
            pass
        except OSError:
            dropped = True
            break
    sock.close()
    assert dropped and sent >= 3
    assert wait_until(lambda: server.open_connections() == 0)


def test_keep_alive_on_request_and_idle_limit(make_server):
    server, auth = make_server(limits=HTTPLimits(idle_timeout=0.5, request_timeout=5.0))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for _ in range(3):                                     # three requests, one connection
            s.sendall(request(auth, extra="Connection: keep-alive\r\n"))
            status, headers, body = read_reply(s)
            assert status == 200 and headers.get("connection", "").lower() != "close"
            assert json.loads(body)["error"]["message"] == "Chain state not initialized"
        assert closed_by_peer(s)                               # idle past 0.5 s: closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request(auth))                               # what the C++ clients send
        status, headers, _ = read_reply(s)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_peer(s, 5)


# -- the work queue -------------------------------------------------------------------------------
def test_full_work_queue_answers_503_at_once(make_server):
    server, auth = make_server(limits=HTTPLimits(threads=1, work_queue=1))
    release, entered = threading.Event(), threading.Event()

    def block():
        entered.set()
        release.wait(30)
        return "done"

    server.dispatcher._methods["help"] = RPCMethod("help", "blocks", block)
    body = b'{"method":"help","id":1}'
    replies: list[int] = []
    workers = [threading.Thread(target=lambda: replies.append(post(server.port, auth, body)[0]))]
    workers[0].start()
    assert entered.wait(10)                                     # the only worker is busy
    workers.append(threading.Thread(target=lambda: replies.append(post(server.port, auth, body)[0])))
    workers[1].start()
    assert wait_until(lambda: len(server._httpd.task_dispatcher.queue) == 1)
    status, headers, data = post(server.port, auth, body)      # queue full: refused now
    assert status == 503 and headers["connection"] == "close"
    assert json.loads(data) == {"error": "Work queue depth exceeded"}
    release.set()
    for w in workers:
        w.join(10)
    assert replies == [200, 200]


def test_accept_pauses_on_descriptor_exhaustion_instead_of_spinning(make_server):
    server, auth = make_server()
    httpd = server._httpd
    calls = [0]
    real_accept = httpd.accept

    def exhausted():
        calls[0] += 1
        raise OSError(errno.EMFILE, "Too many open files")

    httpd.accept = exhausted
    pending = socket.create_connection(("127.0.0.1", server.port))   # keeps the listener readable
    time.sleep(2.0)
    httpd.accept = real_accept
    assert 1 <= calls[0] <= 8, calls[0]                        # ~every 0.5 s, not thousands
    pending.close()
    assert post(server.port, auth)[0] == 200                   # accepting again


# -- authentication under attack --------------------------------------------------------------------
@pytest.mark.parametrize("attacker", ["127.0.0.10", "127.0.0.1"])
def test_flood_and_wrong_passwords_never_refuse_the_cookie(make_server, attacker):
    """1,000 requests without credentials and 10 wrong passwords, from another loopback
    address or from the operator's own: the cookie request from 127.0.0.1 answers 200.
    Old code: 429 (the flood used the IP's quota) or 403 (five failures lock the IP out)."""
    server, auth = make_server()
    statuses = [post(server.port, None, source=attacker)[0] for _ in range(1000)]
    assert set(statuses) == {401}
    wrong = basic_auth_header("__cookie__", "f" * 64)
    wrong_statuses = [post(server.port, wrong, source=attacker)[0] for _ in range(10)]
    assert wrong_statuses[0] == 401 and 403 in wrong_statuses  # the attacker is slowed
    started = time.monotonic()
    status, _, body = post(server.port, auth)
    elapsed = time.monotonic() - started
    print(f"\nattacker {attacker}: cookie request answered {status} in {elapsed * 1000:.1f} ms")
    assert status == 200 and json.loads(body)["id"] == 1


def test_metrics_count_requests_refusals_and_failures(make_server):
    metrics = NodeMetrics(process_metrics=False)
    server, auth = make_server(metrics=metrics, rate_limit=1, rpcuser="bob", rpcpassword="pw")
    bob = basic_auth_header("bob", "pw")
    assert post(server.port, auth, b'{"method":"help","id":1}')[0] == 200
    assert post(server.port, auth, b'[{"method":"help"},{"method":"nosuch"}]')[0] == 200
    assert post(server.port, None)[0] == 401
    wrong = basic_auth_header("__cookie__", "0" * 64)
    assert post(server.port, wrong, source="127.0.0.20")[0] == 401
    assert post(server.port, wrong, source="127.0.0.20")[0] == 403    # in back-off
    assert post(server.port, auth)[0] == 200                        # the cookie: not limited
    assert post(server.port, bob)[0] == 200
    assert post(server.port, bob)[0] == 429                         # 1 per minute for bob
    text = generate_latest(metrics.registry).decode()
    for line in ('rpc_requests_total{method="help",status="200"} 2.0',
                 'rpc_requests_total{method="other",status="200"} 1.0',
                 'rpc_requests_total{method="getblockcount",status="200"} 2.0',
                 'rpc_requests_total{method="none",status="401"} 2.0',
                 'rpc_rejected_total{reason="auth_backoff"} 1.0',
                 'rpc_rejected_total{reason="rate_limited"} 1.0',
                 'rpc_auth_failures_total 1.0',
                 'rpc_requests_in_flight 0.0'):
        assert line in text, line
    assert "rpc_open_connections" in text


# -- the measurement (slow) ------------------------------------------------------------------
@pytest.mark.slow
def test_two_thousand_idle_and_two_hundred_slow_connections_measured(tmp_path):
    """The issue's load with the default limits: 2,000 idle and 200 slow (header
    trickling) connections held; prints threads, descriptors and the operator's
    getblockcount latency (target: under 100 ms)."""
    node = ProcessNode(tmp_path, "n").start()
    try:
        threads0, fds0 = proc_counts(node.proc.pid)
        with held_connections(node.rpc_port, 2000, 200):
            time.sleep(2)
            threads1, fds1 = proc_counts(node.proc.pid)
            elapsed = timed_getblockcount(node)
            print(f"\n2000 idle + 200 slow: threads {threads0}->{threads1}, descriptors "
                  f"{fds0}->{fds1}, getblockcount {elapsed * 1000:.1f} ms")
            assert threads1 - threads0 <= 2 and fds1 - fds0 <= 128 + 4
    finally:
        node.stop()
