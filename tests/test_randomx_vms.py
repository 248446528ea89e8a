"""RandomX VMs are per hashing thread and bounded by the threads: the node's RSS
rises by one VM (~2 MiB) at each thread's first hash (the steps the lab's load run
saw), and a VM is freed and uncounted when its thread ends."""
from __future__ import annotations

import threading

from dilithion.node.metrics import NodeMetrics


def _hash_on_new_threads(hasher, n: int, hold: threading.Event | None = None) -> list:
    started = threading.Barrier(n + 1)

    def work():
        hasher.hash(b"x" * 80)
        started.wait(timeout=60)
        if hold is not None:
            hold.wait(timeout=60)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    return threads


def test_one_vm_per_hashing_thread_and_freed_with_it(hasher):
    hasher.hash(b"y" * 80)                     # this thread's VM
    base = hasher.vms
    hasher.hash(b"z" * 80)                     # same thread: no new VM
    assert hasher.vms == base
    hold = threading.Event()
    threads = _hash_on_new_threads(hasher, 3, hold)
    assert hasher.vms == base + 3
    hold.set()
    for t in threads:
        t.join(timeout=60)
    assert hasher.vms == base                  # a thread's end frees its VM


def test_vm_count_is_a_metric(hasher):
    metrics = NodeMetrics(process_metrics=False)
    metrics.watch_randomx(hasher)
    hasher.hash(b"y" * 80)
    value = metrics.registry.get_sample_value("randomx_vms")
    assert value == hasher.vms >= 1
