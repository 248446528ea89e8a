"""Fuzz bytes turned into structured values, and the one way a target reports a broken property.

:class:`DataProvider` reads a fuzz input front to back the way the C++ targets'
``FuzzedDataProvider`` (``src/test/fuzz/util.h``) does: integers are big-endian,
a read past the end yields 0 or fewer bytes instead of failing, and a
"random length" vector takes its length from one byte.  Keeping the C++
consumption rules means a C++ corpus file exercises the same paths here; no
``atheris`` is needed to decode an input, so the deterministic loop and
the coverage-guided run feed targets identically.
"""
from __future__ import annotations

__all__ = ["DataProvider", "PropertyViolation", "require"]


class PropertyViolation(AssertionError):
    """A target's property does not hold; ``prop`` names it (for the finding line)."""

    def __init__(self, prop: str, detail: str) -> None:
        super().__init__(f"{prop}: {detail}")
        self.prop = prop
        self.detail = detail


def require(condition: bool, prop: str, detail: str = "") -> None:
    """Raise :class:`PropertyViolation` naming ``prop`` when ``condition`` is false."""
    if not condition:
        raise PropertyViolation(prop, detail or "violated")


class DataProvider:
    """Structured reads from a fuzz input, never failing on a short input."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def consumed(self) -> int:
        return self._pos

    def bytes(self, n: int) -> bytes:
        """At most ``n`` bytes (fewer at the end of the input)."""
        out = self._data[self._pos:self._pos + max(0, n)]
        self._pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.bytes(self.remaining())

    def uint(self, width: int) -> int:
        """A big-endian unsigned integer of ``width`` bytes; 0 when fewer remain (as the C++)."""
        if self.remaining() < width:
            return 0
        return int.from_bytes(self.bytes(width), "big")

    def int_signed(self, width: int) -> int:
        value = self.uint(width)
        return value - (1 << (8 * width)) if value >> (8 * width - 1) else value

    def boolean(self) -> bool:
        return bool(self.uint(1) & 1)

    def int_in_range(self, low: int, high: int, width: int = 4) -> int:
        """``ConsumeIntegralInRange``: ``low + value % (span + 1)``."""
        if low >= high:
            return low
        return low + self.uint(width) % (high - low + 1)

    def random_length_bytes(self, max_length: int) -> bytes:
        """``ConsumeRandomLengthByteVector``: one length byte, then up to that many bytes."""
        if not self.remaining():
            return b""
        length_byte = self.uint(1)
        return self.bytes(length_byte % (min(max_length, self.remaining()) + 1))

    def pick(self, options):
        """One of ``options``, chosen by one byte."""
        return options[self.uint(1) % len(options)]
