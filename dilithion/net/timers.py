"""The per-connection timers of the network thread (``PeriodicMaintenance``).

One decision per connection and tick, as a value the network thread acts on
(:meth:`ConnectionManager._maintain <dilithion.net.net_transport.ConnectionManager>`):
close it (connect, send, handshake, ping or inactivity timeout), send a
keepalive ping, or nothing.  Pure apart from reading the connection's locked
ping tracker and backlog; the table of timers is in ``docs/P2P.md``.
"""
from __future__ import annotations

from typing import NamedTuple

from dilithion.net.connection import Connection, TransportConfig

__all__ = ["TimerAction", "check_timers"]


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
