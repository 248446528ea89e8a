"""Checks every target shares: only documented errors escape, and re-encodings are canonical."""
from __future__ import annotations

from typing import Callable, TypeVar

from dilithion.tools.fuzz.provider import PropertyViolation, require

__all__ = ["ONLY_DOCUMENTED_ERRORS", "attempt", "check_reencoding"]

T = TypeVar("T")

#: The property broken when a subject raises anything but its documented error types.
ONLY_DOCUMENTED_ERRORS = "only documented errors"


def attempt(call: Callable[[], T], documented: tuple[type[BaseException], ...], what: str) -> T | None:
    """``call()``, or ``None`` when it raises one of its ``documented`` error types.

    Any other exception is the subject failing in a way its callers do not
    handle (a peer's bytes reaching an ``IndexError`` in the message loop), so
    it becomes a :class:`PropertyViolation` naming the call and the exception.
    """
    try:
        return call()
    except documented:
        return None
    except PropertyViolation:
        raise
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        raise PropertyViolation(ONLY_DOCUMENTED_ERRORS,
                                f"{what} raised {type(exc).__name__}: {exc}") from exc


def check_reencoding(source: bytes, encoded: bytes, what: str) -> None:
    """``encoded`` (our re-encoding of what was decoded from ``source``) is canonical.

    Our decoders accept non-minimal CompactSizes, as the C++ does (``net D-10``),
    and re-encode minimally, so a re-encoding can be shorter than its source
    but never longer; when it is as long, every field was already minimal and
    the round trip must be byte-identical.
    """
    require(len(encoded) <= len(source), f"{what} re-encoding is never longer than its source",
            f"{len(encoded)} bytes from {len(source)}")
    if len(encoded) == len(source):
        require(encoded == source, f"{what} round trip is byte-identical",
                f"first difference at byte {_first_difference(encoded, source)}")


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
