"""The per-connection timers of the network thread (``PeriodicMaintenance``).

One decision per connection and tick, as a value (:func:`check_timers`):
close it (connect, send, handshake, ping or inactivity timeout), send a
keepalive ping, or nothing.  Pure apart from reading the connection's locked
ping tracker and backlog; the table of timers is in ``docs/P2P.md``.
:class:`ConnectionTimers`, a collaborator of the network thread
(:class:`~dilithion.net.net_transport.ConnectionManager`), acts on it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from loguru import logger

from dilithion.net.connection import Connection, TransportConfig
from dilithion.net.protocol import MsgPing
from dilithion.node.metrics import Metrics

__all__ = ["TimerAction", "check_timers", "ConnectionTimers"]


class TimerAction(NamedTuple):
    """``kind`` is ``"close"``, ``"send_timeout"`` (close, logged and counted as
    such) or ``"ping"``; ``reason`` and ``category`` label the disconnect."""

    kind: str
    reason: str = ""
    category: str = ""


_PING = TimerAction("ping")


def check_timers(conn: Connection, cfg: TransportConfig, send_timeout: float,
                 now: float) -> TimerAction | None:
    """What the timers of ``conn`` demand at ``now`` (monotonic seconds).

    C++: the timeout half of ``PeriodicMaintenance`` and ``SendPingMessage``;
    the ping timeout has no C++ counterpart (net D-19).
    """
    peer = conn.peer
    if conn.connecting:
        if now - conn.opened > cfg.connect_timeout:
            return TimerAction("close", f"connect timeout ({cfg.connect_timeout:g} s)", "timeout")
        return None
    if conn.sendq and now - conn.sendq.progress_time > send_timeout:
        return TimerAction("send_timeout", "send timeout", "send_timeout")
    if not peer.is_handshake_complete():
        if now - conn.opened > cfg.handshake_timeout:
            return TimerAction("close", f"handshake timeout ({cfg.handshake_timeout:g} s)",
                               "timeout")
        return None
    # While we do not read the socket (our backpressure), the peer's silence and a
    # pong stuck in the kernel buffer are our doing, not the peer's.
    reading = not (conn.backlog.paused or conn.budget_paused)
    if reading and conn.ping.overdue(now, cfg.ping_timeout):
        return TimerAction("close", f"ping timeout (no pong within {cfg.ping_timeout:g} s)",
                           "timeout")
    if reading and now - conn.last_recv_mono > cfg.inactivity_timeout:
        return TimerAction("close", f"inactivity timeout ({cfg.inactivity_timeout:g} s)",
                           "timeout")
    if conn.ping.due(now, cfg.ping_interval):
        return _PING
    return None


class ConnectionTimers:
    """Act on the timers of one connection per maintenance tick (the action
    half of ``PeriodicMaintenance`` and ``SendPingMessage``).

    Owner: the network thread, which calls :meth:`run`.  Built with what it
    needs: ``send_now(conn, msg)`` (queue a message and write it at once; False
    when the queue refused it) and ``close(conn, reason, category)``.
    """

    def __init__(self, config: TransportConfig, send_timeout: float, metrics: Metrics, *,
                 send_now: Callable[[Connection, MsgPing], bool],
                 close: Callable[[Connection, str, str], None]) -> None:
        self.config = config
        self.send_timeout = send_timeout
        self.metrics = metrics
        self._send_now = send_now
        self._close = close

    def run(self, conn: Connection, now: float) -> None:
        """Act on :func:`check_timers` for ``conn`` at ``now`` (monotonic seconds):
        close it, or send the keepalive ping (``SendPingMessage``)."""
        action = check_timers(conn, self.config, self.send_timeout, now)
        if action is None:
            return
        if action.kind == "ping":
            if not self._send_now(conn, MsgPing(conn.ping.start(now))):
                conn.ping.cancel()
            return
        if action.kind == "send_timeout":
            peer = conn.peer
            logger.bind(**peer.log_fields()).warning(
                f"[P2P] send timeout: peer {peer.id} ({peer.address()}) took no "
                f"bytes for {self.send_timeout * 1000:.0f} ms with "
                f"{conn.sendq.queued_bytes()} bytes queued")
            self.metrics.send_timeout_errors.inc()
        self._close(conn, action.reason, action.category)
