"""A stand-in for a broken C++ ``dilithion-node`` (tests/test_diff.py only).

The real C++ node cannot be made to crash or hang on demand, so the tool's
handling of those cases is tested with this: it prints the C++ start-up lines
the tool waits for, answers ``version`` and ``ping`` like the C++ node, and on
the wire command ``crash`` exits at once (status 3), on ``hang`` stops
answering on every connection (until killed), on ``stall`` sends a ``getaddr``
and then stops answering on that connection only (new connections are served:
the C++ node after an invalid header, ``net D-03``, with a reply before it).
"""
import os
import socket
import struct
import sys
import threading
import time

from dilithion.core.chainparams import ChainParams
from dilithion.net.protocol import MsgVersion, CPP_USER_AGENT
from dilithion.net.serialize import calculate_checksum

PARAMS = ChainParams.testnet()
HANG = threading.Event()
port = int(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--port=")))


def frame(command: str, payload: bytes = b"") -> bytes:
    return (struct.pack("<I12sI", PARAMS.magic, command.encode().ljust(12, b"\0"), len(payload))
            + calculate_checksum(payload) + payload)


def serve(conn: socket.socket) -> None:
    buf = b""
    while True:
        if HANG.is_set():
            time.sleep(3600)            # hung: holds every connection, answers nothing
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 24:
            _, cmd, size, _ = struct.unpack("<I12sI4s", buf[:24])
            if len(buf) < 24 + size:
                break
            command, payload, buf = cmd.rstrip(b"\0").decode(), buf[24:24 + size], buf[24 + size:]
            if command == "crash":
                print("fake node: crashing on request", flush=True)
                os._exit(3)
            if command == "hang":
                print("fake node: hanging on request", flush=True)
                HANG.set()
            if HANG.is_set():
                break
            if command == "stall":
                conn.sendall(frame("getaddr"))
                time.sleep(3600)        # this connection only: the others are served
            if command == "version":
                conn.sendall(frame("version", MsgVersion(user_agent=CPP_USER_AGENT).serialize())
                             + frame("verack"))
            elif command == "ping":
                conn.sendall(frame("pong", payload[:8]))


listener = socket.create_server(("0.0.0.0", port))
print("Genesis hash: 924bdb80469e1185814407147bc763a62425cc400bc902ce37d73ffbc3524475")
print("Node Status: RUNNING", flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
