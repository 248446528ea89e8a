"""Per-client request rate limit and authentication lockout (``src/rpc/ratelimiter.*``).

The C++ ``CRateLimiter`` logic (``cli`` 3.5) with its limits made configurable:
a fixed (not sliding) window per client IP, and a lockout after repeated wrong
credentials that a later success clears.  The C++ allows only 60 connections
per minute per IP, and every local client shares ``127.0.0.1``, so one test
suite or monitoring script starves every other caller (``cli 6.3 #35``); the
Python server defaults to 600 per minute and the limit is a constructor
argument.  Stale records are purged lazily from :meth:`allow_request` instead
of by a dedicated cleanup thread.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["RequestRecord", "RateLimiter"]


@dataclass
class RequestRecord:
    """What is remembered about one client IP."""

    count: int
    window_start: float
    failed_attempts: int = 0
    last_failed_time: float = 0.0


class RateLimiter:
    """Fixed-window request counter and auth-failure lockout per client IP.

    Shared by all RPC handler threads; every method takes ``self._lock``.
    ``clock`` is injectable so tests can step time instead of sleeping.
    """

    MAX_REQUESTS_PER_MINUTE = 600       # C++: 60 (cli 6.3 #35)
    WINDOW_DURATION = 60.0
    MAX_FAILED_AUTH_ATTEMPTS = 5
    AUTH_LOCKOUT_DURATION = 300.0
    CLEANUP_INTERVAL = 300.0
    RECORD_MAX_AGE = 3600.0

    def __init__(self, max_requests_per_window: int = MAX_REQUESTS_PER_MINUTE,
                 window_seconds: float = WINDOW_DURATION,
                 max_failed_auth: int = MAX_FAILED_AUTH_ATTEMPTS,
                 lockout_seconds: float = AUTH_LOCKOUT_DURATION,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: 0 (or less) disables the request limit; the lockout stays active.
        self.max_requests = max_requests_per_window
        self.window_seconds = window_seconds
        self.max_failed_auth = max_failed_auth
        self.lockout_seconds = lockout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, RequestRecord] = {}
        self._last_cleanup = clock()

    def allow_request(self, ip: str) -> bool:
        """Count one request from ``ip``; False once the window's quota is used up.

        C++: ``AllowRequest``, with ``IsWindowExpired`` folded in.
        """
        now = self._clock()
        with self._lock:
            self._maybe_cleanup(now)
            rec = self._get_record(ip, now)
            if now - rec.window_start >= self.window_seconds:
                rec.count = 0
                rec.window_start = now
            if self.max_requests > 0 and rec.count >= self.max_requests:
                return False
            rec.count += 1
            return True

    def seconds_until_reset(self, ip: str) -> int:
        """Whole seconds until ``ip``'s window restarts (for ``Retry-After``)."""
        now = self._clock()
        with self._lock:
            rec = self._records.get(ip)
            if rec is None:
                return 0
            return max(0, int(rec.window_start + self.window_seconds - now + 0.999))

    def record_auth_failure(self, ip: str) -> None:
        now = self._clock()
        with self._lock:
            rec = self._get_record(ip, now)
            rec.failed_attempts += 1
            rec.last_failed_time = now

    def record_auth_success(self, ip: str) -> None:
        with self._lock:
            rec = self._records.get(ip)
            if rec is not None:
                rec.failed_attempts = 0

    def is_locked_out(self, ip: str) -> bool:
        """True after ``max_failed_auth`` failures, until ``lockout_seconds`` pass.

        As in the C++ the failure count is not reset when the lockout expires,
        so each further failure locks the IP again at once.
        """
        now = self._clock()
        with self._lock:
            rec = self._records.get(ip)
            return (rec is not None and rec.failed_attempts >= self.max_failed_auth
                    and now - rec.last_failed_time < self.lockout_seconds)

    def get_request_count(self, ip: str) -> int:
        with self._lock:
            rec = self._records.get(ip)
            return rec.count if rec else 0

    def cleanup_old_records(self) -> None:
        """Forget clients whose window started over an hour ago."""
        with self._lock:
            self._cleanup(self._clock())

    # -- internals (caller holds self._lock) -----------------------------------
    def _get_record(self, ip: str, now: float) -> RequestRecord:
        rec = self._records.get(ip)
        if rec is None:
            rec = self._records[ip] = RequestRecord(count=0, window_start=now)
        return rec

    def _maybe_cleanup(self, now: float) -> None:
        """Drop stale records now and then, on a request (C++: the ``CleanupThread``)."""
        if now - self._last_cleanup >= self.CLEANUP_INTERVAL:
            self._cleanup(now)

    def _cleanup(self, now: float) -> None:
        self._last_cleanup = now
        for ip in [ip for ip, rec in self._records.items()
                   if now - rec.window_start >= self.RECORD_MAX_AGE
                   and not (rec.failed_attempts >= self.max_failed_auth
                            and now - rec.last_failed_time < self.lockout_seconds)]:
            del self._records[ip]
