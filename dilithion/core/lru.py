"""Bounded, insertion-ordered tables that forget their oldest entry first.

Every table a peer can grow by sending messages (hashes a peer is known to
have, requests in flight, first-seen times, recent announcements, header
hashes, orphans) must have a size limit, and the entry to drop when it is full
is the one touched longest ago.  These two classes are that rule written once;
they hold no lock: the owner's lock (named in the owner's docstring) guards
them.  No C++ counterpart (the C++ tables are unbounded, ``net D-16``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, Iterator, TypeVar

__all__ = ["LRUDict", "LRUSet"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUDict(Generic[K, V]):
    """A mapping of at most ``cap`` items; setting a key makes it the newest.

    Reading does not refresh a key (``touch`` does), so an entry's age is the
    time since it was last written: what expiry scans and eviction want.
    """

    __slots__ = ("cap", "_items")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"LRUDict capacity must be positive, not {cap}")
        self.cap = cap
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._items.get(key, default)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __setitem__(self, key: K, value: V) -> None:
        self.put(key, value)

    def put(self, key: K, value: V) -> K | None:
        """Store ``key`` as the newest entry; returns the key evicted to make room, if any."""
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.cap:
            return self._items.popitem(last=False)[0]
        return None

    def touch(self, key: K) -> None:
        """Make an existing key the newest without changing its value."""
        self._items.move_to_end(key)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._items.pop(key, default)

    def __delitem__(self, key: K) -> None:
        del self._items[key]

    def oldest(self) -> tuple[K, V] | None:
        """The entry written longest ago, or None when empty."""
        if not self._items:
            return None
        key = next(iter(self._items))
        return key, self._items[key]

    def clear(self) -> None:
        self._items.clear()


class LRUSet(Generic[K]):
    """A set of at most ``cap`` members; adding a member makes it the newest."""

    __slots__ = ("_items",)

    def __init__(self, cap: int) -> None:
        self._items: LRUDict[K, None] = LRUDict(cap)

    @property
    def cap(self) -> int:
        return self._items.cap

    def add(self, key: K) -> None:
        self._items.put(key, None)

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)
