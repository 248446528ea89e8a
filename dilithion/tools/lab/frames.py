"""Frame boundaries in a byte stream of the P2P protocol, for the fault proxy.

A frame is a 24-byte header (4-byte magic, 12-byte NUL-padded command, 4-byte
little-endian payload length, 4-byte checksum) and its payload.  The proxy
watches the stream towards a peer to cut it in the middle of a ``block`` frame
(``Faults.cut_at_block``); it never changes a byte it forwards.
"""
from __future__ import annotations

import struct

__all__ = ["FrameWatcher", "HEADER_SIZE"]

HEADER_SIZE = 24


class FrameWatcher:
    """Follows frames across chunks.  Owner: the one proxy pipe that feeds it."""

    def __init__(self, magic: int) -> None:
        self.magic = magic
        self._header = b""        # bytes of a header not complete yet
        self._left = 0            # payload bytes of the current frame still to come
        self.commands: list[str] = []   # every frame seen (tests read it)

    def feed_until_block(self, data: bytes, fraction: float,
                         armed: bool = True) -> tuple[bytes, bool]:
        """Follow ``data``; when ``armed`` and a ``block`` frame starts in it, return
        the bytes up to its header plus ``fraction`` of its payload and True (cut
        there); else ``(data, False)``.  Fed every chunk of its direction, armed or
        not, so it knows where frames begin when it is armed mid-stream."""
        pos = 0
        while pos < len(data):
            if self._left:
                take = min(self._left, len(data) - pos)
                self._left -= take
                pos += take
                continue
            need = HEADER_SIZE - len(self._header)
            self._header += data[pos:pos + need]
            pos += min(need, len(data) - pos)
            if len(self._header) < HEADER_SIZE:
                break
            header, self._header = self._header, b""
            magic, raw, length, _ = struct.unpack("<I12sI4s", header)
            command = raw.rstrip(b"\0").decode("ascii", "replace")
            self.commands.append(command)
            if magic != self.magic:     # lost framing: stop watching, forward as is
                self._left = 1 << 62
                continue
            if armed and command == "block" and length:
                return data[:pos + max(1, int(length * fraction))], True
            self._left = length
        return data, False
