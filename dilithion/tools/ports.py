"""Loopback ports for the tools' node processes, and the clash they can meet.

:func:`free_port` asks the kernel for a port that is free *now*.  The node
process that binds it a moment later may find it taken: any connection's
ephemeral source port can land on it in between.  ``dilithion-lab`` and
``dilithion-diff`` therefore start such a node again on new ports, up to
:data:`PORT_CLASH_ATTEMPTS` times, when its start-up error says
:data:`PORT_IN_USE` (the operating system's words, which both the Python and
the C++ node print when a bind fails).
"""
from __future__ import annotations

import socket

__all__ = ["PORT_CLASH_ATTEMPTS", "PORT_IN_USE", "free_port"]

#: Starts of one node before a port clash is reported as an error.
PORT_CLASH_ATTEMPTS = 3
#: How a node's start-up error reads when a port it was given is taken.
PORT_IN_USE = "Address already in use"


def free_port() -> int:
    """A loopback TCP port nothing is bound to at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
