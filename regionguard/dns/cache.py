"""The DNS server's caches: finished DNS messages as wire bytes, bounded in bytes, with TTLs
that count down. `regionguard dns` keeps two (regionguard.dns.server): the replies it sent,
keyed by the client's query bytes, and the filtered answers, keyed by CacheKey.

Why bytes and not dnspython messages: README.md, "Speed". A stored message's TTL fields are
found once (wire.ttl_fields); a hit a second or more later gets a copy with each TTL lowered by
the entry's age (rendered once per second of age, not once per hit). Entries expire at the
smallest TTL. Eviction is least recently used, by total bytes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable

from regionguard.dns.wire import WireFormatError, ttl_fields

ENTRY_OVERHEAD = 160   # bytes: the entry object, its key tuple and the dict slot, roughly


class Entry:
    __slots__ = ("wire", "stored", "expires", "offsets", "ttls", "_age", "_aged")

    def __init__(self, wire: bytes, stored: float, expires: float,
                 offsets: tuple[int, ...], ttls: tuple[int, ...]) -> None:
        self.wire = wire
        self.stored = stored
        self.expires = expires
        self.offsets = offsets
        self.ttls = ttls
        self._age = 0
        self._aged = wire

    def render(self, now: float) -> bytes:
        """The stored message with TTLs lowered by the entry's age in whole seconds."""
        age = int(now - self.stored)
        if age == self._age:
            return self._aged
        buf = bytearray(self.wire)
        for off, ttl in zip(self.offsets, self.ttls, strict=True):
            struct.pack_into("!I", buf, off, max(0, ttl - age))
        self._age, self._aged = age, bytes(buf)
        return self._aged


class WireCache:
    """key → response wire bytes, for at most `ttl` seconds, within `max_bytes` in total."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[Hashable, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, now: float) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            self._remove(key, entry)
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry.render(now)

    def ttl_left(self, key: Hashable, now: float) -> float:
        """Seconds until the entry for `key` expires; 0 when there is none."""
        entry = self._data.get(key)
        return max(0.0, entry.expires - now) if entry is not None else 0.0

    def ttl_left_and_fields(self, key: Hashable, wire: bytes, now: float
                            ) -> tuple[float, tuple[tuple[int, ...], tuple[int, ...]] | None]:
        """(ttl_left(key, now), fields(key, wire)) with one lookup: the miss path wants both."""
        entry = self._data.get(key)
        if entry is None:
            return 0.0, None
        return max(0.0, entry.expires - now), ((entry.offsets, entry.ttls) if entry.wire is wire
                                               else None)

    def entry(self, key: Hashable) -> Entry | None:
        """The entry stored under `key` (expired or not), without counting a hit or a miss."""
        return self._data.get(key)

    def put_entry(self, key: Hashable, entry: Entry) -> None:
        """Store an entry of another cache under `key` too: the same bytes, TTLs and expiry,
        shared rather than copied (the miss path stores one answer in both server caches)."""
        size = self._size(key, entry)
        if size > self.max_bytes:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= self._size(key, old)
        self._data[key] = entry
        self.bytes += size
        self._evict()

    def put(self, key: Hashable, wire: bytes, ttl: float, now: float,
            fields: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> bool:
        """Store `wire` for `ttl` seconds. False (nothing stored) when ttl <= 0, the message is
        malformed, or it alone exceeds the bound. `fields`: ttl_fields(wire), when the caller
        knows them (from a message of the same layout and TTLs, see `ttl_left_and_fields`)."""
        size = len(wire) + ENTRY_OVERHEAD + (len(key[-1]) if isinstance(key, tuple)
                                             and isinstance(key[-1], bytes) else 0)
        if ttl <= 0 or size > self.max_bytes:
            return False
        if fields is not None:
            offsets, ttls = fields
        else:
            try:
                offsets, ttls = ttl_fields(wire)
            except WireFormatError:
                return False
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= self._size(key, old)
        self._data[key] = Entry(wire, now, now + ttl, offsets, ttls)
        self.bytes += size
        self._evict()
        return True

    def _evict(self) -> None:
        """Drop the least recently used entries until the cache is within its bound."""
        while self.bytes > self.max_bytes and self._data:
            k, e = self._data.popitem(last=False)
            self.bytes -= self._size(k, e)

    def _remove(self, key: Hashable, entry: Entry) -> None:
        del self._data[key]
        self.bytes -= self._size(key, entry)

    @staticmethod
    def _size(key: Hashable, entry: Entry) -> int:
        return len(entry.wire) + ENTRY_OVERHEAD + (len(key[-1]) if isinstance(key, tuple)
                                                   and isinstance(key[-1], bytes) else 0)

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0


