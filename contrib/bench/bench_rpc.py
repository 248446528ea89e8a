#!/usr/bin/env python3
"""RPC benchmark: authenticated ``getblockcount`` latency under concurrency and idle load.

Usage: ``python contrib/bench/bench_rpc.py [--requests=N] [--idle=2000] [-- node flags...]``

Starts a regtest ``dilithion-node`` (the harness's ``PythonNode``: the one next
to this Python) in a temporary datadir with default RPC limits (plus any flags after ``--``),
then measures, with the cookie, one fresh connection per request as
``dilithion-cli`` makes them (``Connection: close``, read to EOF):

* p50/p99 latency and throughput at 1, 10 and 50 concurrent clients;
* the same at 1 and 10 clients while ``--idle`` idle connections are held open
  (the server keeps at most ``--rpcmaxconnections`` of them and evicts the
  longest idle for each new connection);
* the node's thread and descriptor counts with the idle connections held.

Client threads run in this process and share the machine's cores with the
node, so absolute numbers depend on the host; not part of the test suite.
"""
from __future__ import annotations

import argparse
import base64
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from dilithion.testing.node_process import PythonNode

BODY = b'{"jsonrpc":"2.0","method":"getblockcount","params":[],"id":1}'


def one_call(port: int, request: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1]) if raw else 0
    return time.perf_counter() - started, status


def run_clients(port: int, request: bytes, clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client():
        mine, codes = [], {}
        for _ in range(per_client):
            try:
                elapsed, status = one_call(port, request)
            except OSError:
                elapsed, status = 0.0, -1
            if status == 200:
                mine.append(elapsed)
            codes[status] = codes.get(status, 0) + 1
        with lock:
            latencies.extend(mine)
            for k, v in codes.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {"clients": clients, "ok": len(latencies), "statuses": statuses,
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "rps": len(latencies) / wall}


def proc_counts(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def report(label: str, r: dict) -> None:
    print(f"{label:<28} clients={r['clients']:>3}  ok={r['ok']:>5}  p50={r['p50_ms']:7.2f} ms  "
          f"p99={r['p99_ms']:7.2f} ms  {r['rps']:7.0f} req/s  statuses={r['statuses']}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections to hold")
    parser.add_argument("node_args", nargs="*")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle + 1024)), hard))

    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as tmp:
        node = PythonNode("bench", Path(tmp), ["--log-level=WARNING", *args.node_args],
                          connect=[])
        # Launched, not started: at WARNING the node does not print its ready line,
        # so readiness is its cookie file and a first 200 reply.
        node.launch()
        rpc_port = node.rpc_port
        try:
            deadline = time.monotonic() + 60
            cookie = node.datadir / ".cookie"
            while not cookie.exists():
                if not node.is_running() or time.monotonic() > deadline:
                    print(f"node did not start: {node.log_tail(5, ' | ')}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            auth = base64.b64encode(cookie.read_bytes().strip()).decode()
            request = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
                       f"Content-Type: application/json\r\nConnection: close\r\n"
                       f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
            while one_call(rpc_port, request)[1] != 200:
                time.sleep(0.1)
            print(f"node: {' '.join(node.args())}")
            run_clients(rpc_port, request, 4, 50)                          # warm-up
            for clients in (1, 10, 50):
                report("no idle connections", run_clients(rpc_port, request, clients,
                                                          max(1, args.requests // clients)))
            threads0, fds0 = proc_counts(node.proc.pid)
            idle = []
            for _ in range(args.idle):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", rpc_port), timeout=10))
                except OSError as exc:
                    print(f"could only open {len(idle)} idle connections: {exc}")
                    break
            time.sleep(1.0)
            threads1, fds1 = proc_counts(node.proc.pid)
            print(f"{len(idle)} idle connections held: node threads {threads0} -> {threads1}, "
                  f"descriptors {fds0} -> {fds1}")
            for clients in (1, 10, 50):
                report(f"{len(idle)} idle held", run_clients(rpc_port, request, clients,
                                                            max(1, args.requests // clients)))
            for s in idle:
                s.close()
        finally:
            node.stop(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
