"""Byte-level transport pieces: the socket wrapper, stream framing, send queues.

The C++ ``CSocket`` (``net`` 4.8) does one ``send``/``recv`` per call and its
callers assume whole messages arrive and leave in one piece (``net D-01``,
``D-02``, ``D-06``).  Here the pieces are split by job:

* :class:`Socket` wraps one non-blocking stdlib socket (TCP_NODELAY on, ``D-36``)
  and reports would-block as "no progress" instead of an error;
* :class:`FrameReader` turns an arbitrary byte stream back into messages,
  however the bytes were chunked, and judges each header before buffering its
  payload, so a peer can never make it hold more than its cap;
* :class:`SendQueue` keeps whole framed messages plus an offset into the head,
  so a partly written message is always finished, never abandoned;
* :class:`ByteBudget` counts the bytes queued in all of one node's send queues
  (the node-wide cap on what non-reading peers can make the node hold);
* :class:`TokenBucket` limits how many messages per second a peer may send.

None of these classes does any I/O scheduling; :mod:`dilithion.net.net` owns the
selector loop.  Inside this module the standard library is ``_socket`` because
this file shadows its name.
"""
from __future__ import annotations

import errno
import os
import socket as _socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from loguru import logger

from dilithion.net.serialize import (MAX_MESSAGE_SIZE, MESSAGE_HEADER_SIZE, MessageHeader,
                                     NetMessage, calculate_checksum)

__all__ = ["Socket", "FrameError", "FrameReader", "ByteBudget", "SendQueue", "TokenBucket",
           "is_ipv4", "BULK_MESSAGE_BYTES"]

_WOULD_BLOCK = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.EALREADY, errno.EINTR}


def is_ipv4(text: str) -> bool:
    """True for a dotted-quad IPv4 literal (the only address form the node dials)."""
    try:
        _socket.inet_pton(_socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


class Socket:
    """One non-blocking IPv4 TCP socket (``CSocket`` without the blocking parts).

    Owned by the network thread once registered in the selector; no lock.
    ``send`` returns the byte count, 0 when the kernel buffer is full (the C++
    returns -1 for that too, ``net`` 4.8), or -1 on error; ``recv`` returns
    bytes, ``b""`` at EOF, or ``None`` when nothing is waiting (``last_error``
    0) or on error (``last_error`` is the errno).
    """

    __slots__ = ("sock", "last_error")

    def __init__(self, sock: _socket.socket) -> None:
        """Wrap ``sock``: non-blocking, and TCP_NODELAY where it applies (C++ ``SetNoDelay``)."""
        self.sock = sock
        self.last_error = 0
        sock.setblocking(False)
        if sock.type == _socket.SOCK_STREAM and sock.family == _socket.AF_INET:
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:  # a listening socket on some platforms
                pass

    # -- construction --------------------------------------------------------
    @classmethod
    def listen(cls, host: str, port: int, backlog: int = 128) -> "Socket":
        """Bound and listening; raises OSError when the port is taken.

        C++: ``Bind``, ``SetReuseAddr`` and ``Listen`` in one.
        """
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(backlog)
        except OSError:
            s.close()
            raise
        return cls(s)

    @classmethod
    def connect_nonblocking(cls, host: str, port: int) -> "Socket":
        """Start a TCP connect without waiting (EINPROGRESS is the normal result).

        The caller waits for writability and then calls :meth:`finish_connect`.
        Raises OSError if the connect fails at once (e.g. bad address).
        C++: ``Connect``.
        """
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        wrapped = cls(s)
        rc = s.connect_ex((host, port))
        if rc not in (0, *_WOULD_BLOCK):
            s.close()
            raise OSError(rc, os.strerror(rc))
        return wrapped

    def finish_connect(self) -> int:
        """The outcome of a non-blocking connect: 0 on success, else the errno.

        C++: ``IsConnected``.
        """
        err = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        self.last_error = err
        return err

    def accept(self) -> "tuple[Socket, str, int] | None":
        """One pending inbound connection, or None when there is none."""
        try:
            s, (host, port) = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:  # EMFILE, ECONNABORTED...: the caller logs and goes on
            self.last_error = e.errno or 0
            raise
        return Socket(s), host, port

    # -- I/O -----------------------------------------------------------------
    def send(self, data) -> int:
        try:
            return self.sock.send(data, getattr(_socket, "MSG_NOSIGNAL", 0))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            self.last_error = e.errno or errno.EIO
            return -1

    def recv(self, n: int) -> bytes | None:
        try:
            return self.sock.recv(n)
        except (BlockingIOError, InterruptedError):
            self.last_error = 0
            return None
        except OSError as e:
            self.last_error = e.errno or errno.EIO
            return None

    def get_last_error_string(self) -> str:
        return os.strerror(self.last_error) if self.last_error else "no error"

    def fileno(self) -> int:
        """The descriptor, -1 once closed (C++ ``IsValid`` is ``fileno() >= 0``)."""
        return self.sock.fileno()

    def local_port(self) -> int:
        """The bound local port (``GetLocalPort``)."""
        return self.sock.getsockname()[1]

    def close(self) -> None:
        """Close for real (the C++ leaks the descriptor, ``net D-20``); also C++ ``Reset``."""
        try:
            self.sock.close()
        except OSError:
            pass


class FrameError(Exception):
    """A framing-level fault in a peer's byte stream.

    ``fatal`` means the stream can no longer be trusted to be aligned on
    message boundaries (the connection must go); otherwise the bad message was
    skipped and the next one starts right after it.  ``score`` is the
    misbehaviour penalty the caller applies.
    """

    def __init__(self, reason: str, *, fatal: bool, score: int, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.score = score
        self.kind = kind


@dataclass(frozen=True)
class FramingPolicy:
    """Scores for framing faults (chosen here; the C++ never scores, ``net D-05``).

    A wrong magic is a node of another network (a testnet node dialling a
    regtest one), an honest misconfiguration: disconnected, never scored.
    """

    bad_checksum: int = 10
    bad_command: int = 20
    wrong_magic: int = 0
    oversized: int = 100


class FrameReader:
    """Reassembles messages from one peer's byte stream.

    Owned by the network thread (one reader per connection); no lock.
    Each header is judged as soon as its 24 bytes are present: a wrong magic or
    an announced size above ``max_payload`` raises a fatal :class:`FrameError`
    *before* any payload is buffered, so the buffer never exceeds
    ``capacity()`` bytes.  A bad checksum or a non-NUL 12th command byte only
    drops that message (the size field still frames the stream).
    """

    POLICY = FramingPolicy()

    def __init__(self, magic: int, max_payload: int = MAX_MESSAGE_SIZE) -> None:
        self.magic = magic
        self.max_payload = min(max_payload, MAX_MESSAGE_SIZE)
        self._buf = bytearray()
        self._header: MessageHeader | None = None

    def capacity(self) -> int:
        return MESSAGE_HEADER_SIZE + self.max_payload

    def room(self) -> int:
        """How many more bytes may be read without exceeding the cap."""
        return self.capacity() - len(self._buf)

    def pending_bytes(self) -> int:
        """Bytes of an incomplete message (non-zero at EOF means truncation)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes; messages come out of :meth:`next_message` (C++ ``RecvAll``)."""
        self._buf += data

    def next_message(self) -> NetMessage | None:
        """The next complete message, or None until more bytes arrive.

        Raises :class:`FrameError`; after a non-fatal one, call again to go on.
        """
        if self._header is None:
            if len(self._buf) < MESSAGE_HEADER_SIZE:
                return None
            self._header = self._judge_header(MessageHeader.deserialize(self._buf))
        header = self._header
        end = MESSAGE_HEADER_SIZE + header.payload_size
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[MESSAGE_HEADER_SIZE:end])
        del self._buf[:end]
        self._header = None
        if header.command[11] != 0:
            raise FrameError(f"command field not NUL-terminated ({header.command!r})",
                             fatal=False, score=self.POLICY.bad_command, kind="bad command")
        if calculate_checksum(payload) != header.checksum:
            raise FrameError(
                f"bad checksum for {header.get_command()!r} ({header.payload_size} bytes)",
                fatal=False, score=self.POLICY.bad_checksum, kind="bad checksum")
        return NetMessage.from_parts(header, payload)

    def _judge_header(self, header: MessageHeader) -> MessageHeader:
        if header.magic != self.magic:
            raise FrameError(f"wrong magic 0x{header.magic:08x} (expected 0x{self.magic:08x})",
                             fatal=True, score=self.POLICY.wrong_magic, kind="wrong magic")
        if header.payload_size > self.max_payload:
            raise FrameError(
                f"announced payload of {header.payload_size} bytes for "
                f"{header.get_command()!r} exceeds the limit of {self.max_payload}",
                fatal=True, score=self.POLICY.oversized, kind="oversized")
        return header


#: Messages larger than this (blocks, transactions, a long ``notfound``) are bulk data:
#: a :class:`SendQueue` refuses them while its node's :class:`ByteBudget` is spent.
#: Smaller ones (ping/pong, version/verack, inv and getdata of up to ~1,800 items, a
#: short notfound) always go out, within the peer's own cap: they keep connections and
#: relay alive, and the per-peer cap and the send deadline bound them.  64 KiB is above
#: the largest catch-up ``inv`` (500 items, 18 KB) and far below a block of any size
#: that matters for memory.
BULK_MESSAGE_BYTES = 64 * 1024


class ByteBudget:
    """A node-wide byte budget shared by every connection of one node; two of them:

    * the **receive** budget (``-maxreceivebuffer``, node-wide here): unfinished
      messages in the ``FrameReader`` buffers (charged by the network thread)
      and framed messages waiting in the ``InboundBacklog`` s (charged on push
      by the network thread, released on pop by the handler thread).  The
      network thread never reads more than :meth:`free` bytes, so ``used()``
      never exceeds ``limit`` (``ConnectionManager._make_room_to_read`` says
      what happens when it is spent);
    * the **send** budget (node-wide ``-maxsendbuffer``): every
      :class:`SendQueue` charges it on push and releases it as bytes leave (or
      on clear).  While it is :meth:`spent`, block and transaction service
      pauses for every peer (:mod:`dilithion.net.block_serve`) and queues
      refuse bulk messages, so the total stays under ``limit`` plus one bulk
      message plus small control messages.

    ``_lock`` guards ``_used`` and ``peak`` (the high-water mark, for tests and
    diagnostics); any thread may call every method.
    """

    __slots__ = ("limit", "_lock", "_used", "peak")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0
        self.peak = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._used += n
            if self._used > self.peak:
                self.peak = self._used

    def used(self) -> int:
        with self._lock:
            return self._used

    def free(self) -> int:
        with self._lock:
            return self.limit - self._used

    def spent(self) -> bool:
        """True while the total has reached the limit."""
        with self._lock:
            return self._used >= self.limit


class SendQueue:
    """Whole framed messages waiting for one peer's socket, measured in bytes.

    Any thread may :meth:`push`; only the network thread calls :meth:`write_to`.
    ``_lock`` guards the deque, the head offset and the byte count; every byte
    counted here is also counted in the node's ``budget`` (its own lock, taken
    inside ours).  A message
    is handed to the socket from its current offset in one ``send`` call; what
    the kernel does not take stays at the head until the socket is writable
    again, so a message is never half-sent and then dropped (``net D-06``).
    """

    def __init__(self, cap_bytes: int, budget: ByteBudget | None = None) -> None:
        self.cap_bytes = cap_bytes
        self.budget = budget
        self._lock = threading.Lock()
        self._items: deque[bytes] = deque()
        self._offset = 0
        self._bytes = 0
        #: The most bytes ever queued at once (tests and diagnostics).
        self.peak_bytes = 0
        # Write callbacks by message sequence number (``push(on_written=)``): the
        # propagation record learns when an inv or a block left for the kernel.
        self._pushed = self._finished = 0
        self._callbacks: dict[int, Callable[[], None]] = {}
        #: monotonic time of the last write progress or of becoming non-empty.
        self.progress_time = time.monotonic()
        #: Set by :meth:`clear` (the connection closed): a push from another thread that
        #: checked the connection just before it closed is refused, not charged to the
        #: node-wide budget of a queue nobody will ever write or clear again.
        self._closed = False

    def push(self, data: bytes, on_written: Callable[[], None] | None = None) -> bool:
        """Queue one whole message; False when over the cap (backpressure), or
        when it is bulk data (over ``BULK_MESSAGE_BYTES``) and the node-wide
        budget is spent.

        A message larger than the cap is still accepted into an empty queue,
        otherwise it could never be sent at all.  ``on_written`` runs on the
        network thread once the whole message was handed to the kernel.
        """
        budget = self.budget
        with self._lock:
            if self._closed:
                return False
            if self._bytes and self._bytes + len(data) > self.cap_bytes:
                return False
            if budget is not None and len(data) > BULK_MESSAGE_BYTES and budget.spent():
                return False
            if not self._bytes:
                self.progress_time = time.monotonic()
            self._items.append(data)
            self._bytes += len(data)
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            if budget is not None:
                budget.add(len(data))
            if on_written is not None:
                self._callbacks[self._pushed] = on_written
            self._pushed += 1
            return True

    def queued_bytes(self) -> int:
        return self._bytes

    def __bool__(self) -> bool:
        return self._bytes > 0

    def write_to(self, sock: Socket) -> tuple[int, int]:
        """Write as much as the socket takes: returns (bytes written, messages finished).

        Returns written = -1 on a socket error (``sock.last_error`` says which).
        C++: ``SendAll``, finished over as many writable events as it takes.
        """
        written = finished = 0
        while True:
            with self._lock:
                if not self._items:
                    break
                head = self._items[0]
                offset = self._offset
            n = sock.send(memoryview(head)[offset:])
            if n < 0:
                return -1, finished
            if n == 0:
                break
            written += n
            callback = None
            with self._lock:
                self.progress_time = time.monotonic()
                self._bytes -= n
                if self.budget is not None:
                    self.budget.add(-n)
                if offset + n == len(head):
                    self._items.popleft()
                    self._offset = 0
                    finished += 1
                    callback = self._callbacks.pop(self._finished, None)
                    self._finished += 1
                else:
                    self._offset = offset + n
                    break  # the kernel buffer is full; wait for writability
            if callback is not None:
                _run_callback(callback)
        return written, finished

    def clear(self) -> None:
        """Drop everything and refuse later pushes (the connection is closing)."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._offset = 0
            if self.budget is not None:
                self.budget.add(-self._bytes)
            self._bytes = 0
            self._callbacks.clear()
            self._finished = self._pushed


def _run_callback(callback: Callable[[], None]) -> None:
    """A write callback is bookkeeping: its failure must not touch the connection."""
    try:
        callback()
    except Exception:  # noqa: BLE001
        logger.exception("[P2P] write callback failed")


class TokenBucket:
    """A rate limit: ``rate`` tokens per second, at most ``burst`` saved.

    Used per peer by the network thread (incoming message rate) and by the
    broadcaster (outgoing announcements).  Each instance belongs to one owner,
    which serialises access (the network thread, or the broadcaster's lock);
    ``now`` may be passed explicitly so that callers with their own clock (and
    tests) stay deterministic.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic() if now is None else now

    def _refill(self, now: float | None) -> float:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return now

    def try_take(self, now: float | None = None) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float | None = None) -> float:
        """When the next whole token will be available."""
        now = self._refill(now)
        return now + max(0.0, 1.0 - self.tokens) / self.rate