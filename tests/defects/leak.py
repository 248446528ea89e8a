"""Memory leaks at a known rate: what "no memory, CPU or descriptor leaks" and
the one-hour load gate exist to catch.

The leak is a thread that keeps a new chunk of written (so resident) memory
every second, whatever the node does: a rate a run's span can show.  The
leak verdict (``dilithion/tools/lab/leaks.py``) allows ``RSS_LIMIT_MB_PER_H``
plus one 2 MB allocator step spread over the judged window (the last two
thirds of the run): ~37 MB/h on the shortest judged run (5 min), ~4 MB/h on
an hour, ~1.1 MB/h on 24 h.  So each defect leaks about four times the limit
of the run it is meant for: a "few MB per hour" leak is below what 5 minutes
can resolve from RSS steps, and is the one-hour and 24-hour runs' business.
"""
from __future__ import annotations

import threading

from defects import defect

MB = 2**20


def _leak(mb_per_h: float) -> None:
    chunk = int(mb_per_h * MB / 3600)
    kept: list[bytes] = []

    def run() -> None:
        while not stop.wait(1.0):
            kept.append(b"\x01" * chunk)        # written: resident, not a lazy zero page
    stop = threading.Event()
    threading.Thread(target=run, name="defect-leak", daemon=True).start()


@defect("leak-144mb-per-h", "keeps 40 KiB more every second (144 MB/h): four times the 5-minute"
        " load run's RSS limit")
def leak_fast() -> None:
    _leak(144.0)


@defect("leak-16mb-per-h", "keeps ~4.5 KiB more every second (16 MB/h): four times the one-hour"
        " load run's RSS limit")
def leak_hour() -> None:
    _leak(16.0)
