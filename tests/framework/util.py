"""Polling helpers shared by every framework test (ports: :mod:`dilithion.testing.ports`).

There is exactly one ``wait_until``: it raises ``AssertionError`` on timeout (so a
caller cannot forget the ``assert``), names the predicate and the last transient
error in the message, and keeps polling through errors that only mean "the node
is not reachable yet" (a node starting, restarting or just killed).
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable

from dilithion.rpc.client import AuthFailed, ConnectionFailed, ServerRefused

#: Errors a poll may hit while a node starts, restarts or shuts down: no listener
#: yet, the cookie not written yet (or a stale one), a half-served HTTP reply.
#: ``RPCCallError`` (the node answered with an error) is *not* transient.
TRANSIENT_ERRORS = (ConnectionFailed, AuthFailed, ServerRefused, OSError)

#: Generous bound for "the nodes agree again" on a shared, loaded machine.
CONVERGE_TIMEOUT = 60.0

Message = str | Callable[[], object] | None


def _describe_predicate(predicate: Callable) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})" if code else ""
    return f"{getattr(predicate, '__qualname__', repr(predicate))}{where}"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
               message: Message = None) -> bool:
    """Poll ``predicate`` until it is truthy (returns True); raise ``AssertionError``
    after ``timeout`` s.  (Returning True lets ``assert wait_until(...)`` read naturally.)

    ``message`` is a string or a callable evaluated only on timeout (e.g.
    ``node.describe``, so the log tail is read when it is needed, not before).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return True
            last_error = None
        except TRANSIENT_ERRORS as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = message() if callable(message) else message
    text = f"wait_until timed out after {timeout:g} s: {_describe_predicate(predicate)}"
    if last_error is not None:
        text += f"\nlast error while polling: {type(last_error).__name__}: {last_error}"
    if detail:
        text += f"\n{detail}"
    raise AssertionError(text)


def _state(node) -> str:
    try:
        return f"{node.name}: height={node.height()} best={node.best_hash()}"
    except TRANSIENT_ERRORS as exc:
        return f"{node.name}: unreachable ({type(exc).__name__}: {exc})"


def chain_states(nodes: Iterable) -> str:
    """One line per node with its height and best hash (for failure messages)."""
    return "\n".join(_state(node) for node in nodes)


def heights(nodes: Iterable) -> list[int]:
    return [node.height() for node in nodes]


def best_hashes(nodes: Iterable) -> list[str]:
    return [node.best_hash() for node in nodes]


def converged(nodes: Iterable) -> bool:
    """All nodes on one best block (same hash implies same height)."""
    return len(set(best_hashes(nodes))) == 1


def sync_blocks(nodes, timeout: float = 30.0) -> None:
    """Wait until every node reports the same best hash and height."""
    nodes = list(nodes)
    wait_until(lambda: len({(n.height(), n.best_hash()) for n in nodes}) == 1, timeout,
               interval=0.1, message=lambda: "nodes disagree:\n" + chain_states(nodes))


def sync_heights(nodes, height: int | None = None, timeout: float = 30.0) -> None:
    """Wait until every node reports the same height (and exactly ``height`` if given).

    Weaker than :func:`sync_blocks`: equal heights on different branches pass,
    which is what a partition test wants before it heals.
    """
    nodes = list(nodes)

    def done() -> bool:
        seen = set(heights(nodes))
        return len(seen) == 1 and (height is None or seen == {height})

    wait_until(done, timeout, interval=0.1,
               message=lambda: f"wanted height {height}:\n" + chain_states(nodes))


class LoopbackServer:
    """A listening socket on 127.0.0.1 whose accept loop (a daemon thread) hands each
    connection to :meth:`handle`; with ``threaded`` each one on a thread of its own.
    Subclasses (fake servers of the tests) implement ``handle``; :meth:`close` ends it."""

    def __init__(self, threaded: bool = False, backlog: int = 8) -> None:
        self.threaded = threaded
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.threaded:
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
            else:
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
