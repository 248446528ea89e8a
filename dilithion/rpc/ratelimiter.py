"""Per-user request rate limit and per-source authentication back-off
(``src/rpc/ratelimiter.*``).

The C++ ``CRateLimiter`` (``cli`` 3.5) counts every connection per client IP
before authentication and locks an IP out for 300 s after five wrong
passwords.  On a node where every local client is ``127.0.0.1`` that lets any
local process starve or lock out the operator (issue #11,
``cli 6.3 #35``).  Here the two jobs are split:

* :class:`RateLimiter` - a fixed window per **authenticated user**, counted
  only after the credentials were accepted, so unauthenticated traffic never
  uses up anyone's quota.
* :class:`AuthBackoff` - after a wrong password a **source address** must wait
  before its credentials are judged again: 250 ms after the first failure (the
  C++/Core per-failure delay), doubling per further failure up to a cap.  A
  request arriving during the wait is refused at once (no worker sleeps).  The
  failure count is forgotten after ``reset_seconds`` without failures.  Cookie
  credentials (256 random bits, unguessable) skip the back-off so a local
  process guessing on the operator's address never locks ``dilithion-cli`` out.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["RequestRecord", "RateLimiter", "FailureRecord", "AuthBackoff"]


@dataclass
class RequestRecord:
    """What is remembered about one user's request window."""

    count: int
    window_start: float


class RateLimiter:
    """Fixed-window request counter per authenticated user.

    Owner: the RPC server; shared by its worker threads.  Lock: ``self._lock``
    guards ``_records`` and ``_last_cleanup``; every public method takes it.
    ``clock`` is injectable so tests can step time instead of sleeping.
    C++: ``class CRateLimiter`` (its request half; keyed by user, not IP).
    """

    MAX_REQUESTS_PER_MINUTE = 600       # C++: 60 per IP (cli 6.3 #35)
    WINDOW_DURATION = 60.0
    CLEANUP_INTERVAL = 300.0
    RECORD_MAX_AGE = 3600.0

    def __init__(self, max_requests_per_window: int = MAX_REQUESTS_PER_MINUTE,
                 window_seconds: float = WINDOW_DURATION,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: 0 (or less) disables the limit.
        self.max_requests = max_requests_per_window
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, RequestRecord] = {}
        self._last_cleanup = clock()

    def allow_request(self, user: str) -> bool:
        """Count one request of ``user``; False once the window's quota is used up.

        C++: ``AllowRequest``, with ``IsWindowExpired`` folded in.
        """
        now = self._clock()
        with self._lock:
            self._maybe_cleanup(now)
            rec = self._get_record(user, now)
            if now - rec.window_start >= self.window_seconds:
                rec.count = 0
                rec.window_start = now
            if self.max_requests > 0 and rec.count >= self.max_requests:
                return False
            rec.count += 1
            return True

    def seconds_until_reset(self, user: str) -> int:
        """Whole seconds until ``user``'s window restarts (for ``Retry-After``)."""
        now = self._clock()
        with self._lock:
            rec = self._records.get(user)
            if rec is None:
                return 0
            return max(0, int(rec.window_start + self.window_seconds - now + 0.999))

    def get_request_count(self, user: str) -> int:
        with self._lock:
            rec = self._records.get(user)
            return rec.count if rec else 0

    # -- internals (caller holds self._lock) -----------------------------------
    def _get_record(self, user: str, now: float) -> RequestRecord:
        rec = self._records.get(user)
        if rec is None:
            rec = self._records[user] = RequestRecord(count=0, window_start=now)
        return rec

    def _maybe_cleanup(self, now: float) -> None:
        """Forget users whose window started ``RECORD_MAX_AGE`` ago, at most every
        ``CLEANUP_INTERVAL``, on a request (C++: ``CleanupOldRecords`` on the
        ``CleanupThread``)."""
        if now - self._last_cleanup >= self.CLEANUP_INTERVAL:
            self._cleanup(now)

    def _cleanup(self, now: float) -> None:
        self._last_cleanup = now
        for user in [u for u, rec in self._records.items()
                     if now - rec.window_start >= self.RECORD_MAX_AGE]:
            del self._records[user]


@dataclass
class FailureRecord:
    """Wrong-credential history of one source address."""

    failures: int
    last_failure: float
    blocked_until: float


class AuthBackoff:
    """Exponential back-off per source address after wrong credentials.

    Owner: the RPC server; shared by its worker threads.  Lock: ``self._lock``
    guards ``_records``; every public method takes it.  At most
    ``max_sources`` addresses are remembered (the oldest failure is forgotten
    first), so a flood from many addresses cannot grow memory without bound.
    C++: the lockout half of ``class CRateLimiter`` (``RecordAuthFailure``,
    ``IsLockedOut``), made a back-off that resets with time.
    """

    BASE_DELAY = 0.25                    # Core: 250 ms per failed attempt
    MAX_DELAY = 60.0
    RESET_AFTER = 600.0                  # failures forgotten after 10 min without one
    MAX_SOURCES = 10_000

    def __init__(self, base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY,
                 reset_seconds: float = RESET_AFTER, max_sources: int = MAX_SOURCES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.reset_seconds = reset_seconds
        self.max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, FailureRecord] = {}

    def retry_after(self, source: str) -> float:
        """Seconds ``source`` must still wait before its credentials are judged; 0: go on.

        C++: ``IsLockedOut`` (a short back-off instead of a 300-second lockout).
        """
        now = self._clock()
        with self._lock:
            rec = self._records.get(source)
            if rec is None:
                return 0.0
            if now - rec.last_failure >= self.reset_seconds:
                del self._records[source]
                return 0.0
            return max(0.0, rec.blocked_until - now)

    def record_failure(self, source: str) -> float:
        """Count a wrong password from ``source``; returns the back-off it now has.

        C++: ``RecordAuthFailure``.
        """
        now = self._clock()
        with self._lock:
            rec = self._records.get(source)
            if rec is None or now - rec.last_failure >= self.reset_seconds:
                if rec is None and len(self._records) >= self.max_sources:
                    oldest = min(self._records, key=lambda s: self._records[s].last_failure)
                    del self._records[oldest]
                rec = self._records[source] = FailureRecord(0, now, now)
            rec.failures += 1
            rec.last_failure = now
            delay = min(self.max_delay, self.base_delay * 2 ** min(rec.failures - 1, 30))
            rec.blocked_until = now + delay
            return delay

    def record_success(self, source: str) -> None:
        """Forget ``source``'s failures (C++ ``RecordAuthSuccess``)."""
        with self._lock:
            self._records.pop(source, None)

    def failures(self, source: str) -> int:
        with self._lock:
            rec = self._records.get(source)
            return rec.failures if rec else 0

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))
