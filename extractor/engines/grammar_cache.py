"""A bounded LRU cache of compiled grammars, by entries and by approximate bytes.

A compiled grammar holds token masks over the whole vocabulary: a few kB for a
small schema, hundreds of MB for a pathological one. An unbounded cache of them
is how a stream of distinct schemas fills memory (vLLM's grammar cache once
filled a disk), so this one evicts the least recently used entries past either
bound, and never keeps an entry larger than its byte bound at all (it is
compiled, used once and dropped).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int


class GrammarCache(Generic[V]):
    """`get(key)` returns the cached value or `compile(key)`'s, keeping at most `max_entries`
    values of at most `max_bytes` in all (each value's size from `size_of`)."""

    def __init__(self, compile: Callable[[str], V], size_of: Callable[[V], int], *,
                 max_entries: int = 64, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self._compile = compile
        self._size_of = size_of
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> V:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self._hits += 1
                return found[0]
            self._misses += 1
        value = self._compile(key)  # outside the lock: a slow compile does not block hits
        size = max(0, int(self._size_of(value)))
        with self._lock:
            if size > self.max_bytes or key in self._items:
                return value
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1
        return value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._items), self._bytes, self._hits, self._misses, self._evictions)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
