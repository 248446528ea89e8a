"""The harness's one port allocator (``dilithion.testing.ports``): no other process
of the harness, no outgoing connection and no listener can hold a port it hands out.

Real sockets, real ``flock`` leases, real child processes.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from dilithion.testing.ports import (PORT_BLOCK_SIZE, PORT_POOL_FLOOR, PortAllocator,
                                     PortPoolExhausted, ephemeral_range, free_port)

#: Ports each of two processes takes at the same time.  The pool holds about
#: 17,000 ports; two processes picking 400 at random would share about ten.
PORTS_PER_PROCESS = 400

#: Takes ports from the process's allocator, prints them, and keeps them (lives)
#: until its stdin closes.
TAKE_PORTS = textwrap.dedent("""
    import sys
    from dilithion.testing.ports import free_port
    print(" ".join(str(free_port()) for _ in range(int(sys.argv[1]))), flush=True)
    sys.stdin.read()
""")


def _python(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, **kw)


def test_ports_lie_outside_the_ephemeral_range_and_are_never_handed_out_twice():
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(p >= PORT_POOL_FLOOR and not low <= p <= high for p in ports)


def test_two_processes_taking_ports_at_the_same_time_never_get_the_same_one():
    """The lab, the diff, a benchmark and a test run may all pick ports at once."""
    takers = [_python("-c", TAKE_PORTS, str(PORTS_PER_PROCESS)) for _ in range(2)]
    try:
        taken = [set(map(int, t.stdout.readline().split())) for t in takers]
    finally:
        for t in takers:
            t.communicate("", timeout=30)
    assert [len(s) for s in taken] == [PORTS_PER_PROCESS] * 2
    assert taken[0] & taken[1] == set()


def test_a_port_something_listens_on_is_skipped_and_an_empty_pool_is_an_error(tmp_path):
    busy, spare = free_port(), free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", busy))
        listener.listen(1)
        allocator = PortAllocator(pool=[range(busy, busy + 1), range(spare, spare + 1)],
                                  lease_dir=tmp_path)
        try:
            assert allocator.free_port() == spare
            with pytest.raises(PortPoolExhausted):
                allocator.free_port()            # ``spare`` is not handed out twice
        finally:
            allocator.close()


def test_a_block_leased_by_a_living_process_is_not_used_and_is_free_once_it_ends(tmp_path):
    """The lease is the process's: no stale lease outlives it, however it ends."""
    port = free_port()
    pool = [range(port, port + 1)]
    holder = _python("-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from dilithion.testing.ports import PortAllocator
        print(PortAllocator(pool={pool!r}, lease_dir=Path({str(tmp_path)!r})).free_port(),
              flush=True)
        sys.stdin.read()
    """))
    allocator = PortAllocator(pool=pool, lease_dir=tmp_path)
    try:
        assert int(holder.stdout.readline()) == port
        with pytest.raises(PortPoolExhausted):
            allocator.free_port()
        holder.kill()                            # not a clean exit: the kernel drops the lock
        holder.wait(timeout=30)
        successor = PortAllocator(pool=pool, lease_dir=tmp_path)
        assert successor.free_port() == port
        successor.close()
    finally:
        holder.kill()
        holder.communicate(timeout=30)
        allocator.close()


def test_a_forked_child_does_not_hand_out_its_parents_ports(tmp_path):
    """``fork`` copies the allocator and its lock files; the child must lease its own block."""
    allocator = PortAllocator(lease_dir=tmp_path)
    try:
        first = allocator.free_port()
        start = first - first % PORT_BLOCK_SIZE
        parent_block = range(start, start + PORT_BLOCK_SIZE)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:                             # the child: report one port and leave
            try:
                os.write(write_end, str(allocator.free_port()).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        child_port = int(os.read(read_end, 16))
        os.close(read_end)
        os.waitpid(pid, 0)
        assert child_port not in parent_block
        assert allocator.free_port() in parent_block     # the parent keeps its block
    finally:
        allocator.close()
