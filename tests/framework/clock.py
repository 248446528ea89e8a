"""A hand-driven monotonic clock for components that take ``clock=``.

Tests advance it explicitly, so what a rate limit or an expiry allows depends on
the test's steps, not on how fast a loaded machine runs.  Advance by binary
fractions (0.25, 0.5, ...) where token arithmetic must come out exact.
"""
from __future__ import annotations

import threading


class FakeClock:
    def __init__(self, start: float = 1024.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now
