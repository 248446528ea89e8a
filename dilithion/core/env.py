"""Operator settings read from environment variables: whole numbers and choices.

The hot-fix levers of the readiness plan (``DIL_SEND_TIMEOUT``,
``DIL_BROADCAST_RETRIES``, ``DIL_BROADCAST_BACKOFF_MS``, ``DIL_LOG_FORMAT``) are
set in a hurry, during an incident.  A value the node cannot use must stop the
start with one line naming the variable, the value and what is allowed, never
be ignored silently: a rollback that runs with the old send timeout because of
a typo is worse than one that does not start.  These helpers only read and
check; the node's configuration layer decides when to call them and passes
the values on (no component reads the environment itself).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["EnvError", "env_int", "env_choice"]


class EnvError(ValueError):
    """An environment variable has a value the node cannot use; ``str()`` is the one line."""


def env_int(name: str, low: int, high: int, default: int, unit: str = "",
            environ: Mapping[str, str] | None = None) -> int:
    """``$name`` as a whole number in ``[low, high]``; ``default`` when unset or empty.

    ``unit`` (e.g. ``"ms"``) only words the error message.
    """
    text = (os.environ if environ is None else environ).get(name)
    if text is None or not text.strip():
        return default
    body = text.strip()
    if body.isascii() and body.isdigit() and low <= int(body) <= high:
        return int(body)
    unit = f" {unit}" if unit else ""
    raise EnvError(f"Error: {name}={text!r} is not a whole number from {low} to {high}{unit}")


def env_choice(name: str, choices: tuple[str, ...], default: str,
               environ: Mapping[str, str] | None = None) -> str:
    """``$name`` lower-cased when it is one of ``choices``; ``default`` when unset or empty."""
    text = (os.environ if environ is None else environ).get(name)
    if text is None or not text.strip():
        return default
    if text.strip().lower() in choices:
        return text.strip().lower()
    raise EnvError(f"Error: {name}={text!r} is not one of {', '.join(choices)}")
