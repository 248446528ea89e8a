"""Defects of the block broadcaster: late, costly or stuck announcements.

What the line gates ("every block to every node", "average propagation",
"CPU spike during broadcast") and the ``slow-peer`` and ``burst`` scenarios
exist to catch.
"""
from __future__ import annotations

import threading
import time

from defects import defect

#: The relay delay of ``relay-delay-12s``: over the gate's 10 s for the first hop
#: already, and each hop adds it again (a line of 3: ~12 s and ~24 s).
RELAY_DELAY_S = 12.0
#: The CPU ``broadcast-cpu-spike`` burns per announcement: a whole core for a
#: second, ~50 % of a core over the line scenario's 2 s window (the gate: < 10 %).
SPIKE_S = 1.0


@defect("relay-delay-12s", f"every block announcement leaves {RELAY_DELAY_S:g} s late"
        " (a broadcaster that waits before it fans out)")
def relay_delay() -> None:
    from dilithion.net.async_broadcaster import AsyncBroadcaster
    original = AsyncBroadcaster.broadcast_block

    def late(self, *args, **kwargs):
        timer = threading.Timer(RELAY_DELAY_S, original, (self, *args), kwargs)
        timer.daemon = True
        timer.start()
    AsyncBroadcaster.broadcast_block = late


@defect("broadcast-cpu-spike", f"each announcement burns a core for {SPIKE_S:g} s before it is"
        " sent (a busy-wait in the fan-out)")
def broadcast_cpu_spike() -> None:
    from dilithion.net.async_broadcaster import AsyncBroadcaster
    original = AsyncBroadcaster._fan_out

    def busy(self, task):
        if task.is_block:
            end = time.thread_time() + SPIKE_S
            while time.thread_time() < end:      # CPU time, not wall time: a full core
                pass
        original(self, task)
    AsyncBroadcaster._fan_out = busy


@defect("broadcast-stalled", "the broadcast worker never starts: every announcement stays"
        " queued and the queue never drains")
def broadcast_stalled() -> None:
    from dilithion.net.async_broadcaster import AsyncBroadcaster
    AsyncBroadcaster.start = lambda self: None
