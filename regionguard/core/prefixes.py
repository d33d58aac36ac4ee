"""Longest-prefix match over IPv4 and IPv6 in one sorted table.

Design rules:
- Addresses are ints in one space: IPv4 maps into ::ffff:0:0/96, so an IPv4-mapped IPv6
  address and its IPv4 form are the same key.
- A table is built once and never changes. Nested prefixes are flattened into disjoint
  intervals, each carrying the value of its longest covering prefix, so a lookup is a single
  `bisect` (no loop over prefix lengths).
- Among identical prefixes, the one added last wins: callers add in rising priority.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable, Sequence

_V4_BASE = 0xFFFF_0000_0000
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes


def address_key(address: str) -> int:
    """The table key of an address string; ValueError if it is not an IP address."""
    try:
        if ":" in address:
            if "%" in address:  # scope id: fe80::1%eth0
                address = address.split("%", 1)[0]
            return _from_bytes(_inet_pton(_AF_INET6, address), "big")
        return _V4_BASE | _from_bytes(_inet_pton(_AF_INET, address), "big")
    except (OSError, TypeError) as e:
        raise ValueError(f"not an IP address: {address!r}") from e


def is_address(text: str) -> bool:
    try:
        address_key(text)
    except ValueError:
        return False
    return True


def network_range(prefix: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """(first, last) keys of a CIDR prefix; ValueError if it is not one (host bits allowed off)."""
    net = ipaddress.ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
    first = int(net.network_address)
    last = int(net.broadcast_address)
    if net.version == 4:
        return _V4_BASE | first, _V4_BASE | last
    return first, last


class PrefixTable[V]:
    """An immutable map from address to the value of its longest matching prefix."""

    __slots__ = ("_starts", "_ends", "_values")

    def __init__(self, items: Iterable[tuple[int, int, V]] = ()) -> None:
        self._starts, self._ends, self._values = _flatten(items)

    @classmethod
    def from_prefixes(cls, items: Iterable[tuple[str, V]]) -> PrefixTable[V]:
        return cls((*network_range(p), v) for p, v in items)

    @classmethod
    def from_intervals(cls, starts: list[int], ends: list[int], values: list[V]) -> PrefixTable[V]:
        table = cls.__new__(cls)
        table._starts, table._ends, table._values = starts, ends, values
        return table

    def arrays(self) -> tuple[list[int], list[int], list[V]]:
        """The flattened (starts, ends, values) lists, for callers that inline the lookup."""
        return self._starts, self._ends, self._values

    def __len__(self) -> int:
        return len(self._starts)

    def get_key(self, key: int) -> V | None:
        i = bisect_right(self._starts, key) - 1
        if i >= 0 and key <= self._ends[i]:
            return self._values[i]
        return None

    def get(self, address: str) -> V | None:
        return self.get_key(address_key(address))

    def intervals(self) -> Iterable[tuple[int, int, V]]:
        return zip(self._starts, self._ends, self._values, strict=True)

    def boundaries(self) -> Iterable[int]:
        """Every key where the answer may change: interval starts and one past their ends."""
        for s, e in zip(self._starts, self._ends, strict=True):
            yield s
            yield e + 1


def _flatten[V](items: Iterable[tuple[int, int, V]]) -> tuple[list[int], list[int], list[V]]:
    # Sort by start, then widest first, then input order (so later duplicates nest inside).
    ordered = sorted(((s, -e, i, v) for i, (s, e, v) in enumerate(items)), key=lambda t: t[:3])
    starts: list[int] = []
    ends: list[int] = []
    values: list[V] = []

    def emit(s: int, e: int, v: V) -> None:
        if s > e:
            return
        if ends and ends[-1] + 1 == s and values[-1] is v:
            ends[-1] = e  # coalesce neighbours with the same value
            return
        starts.append(s)
        ends.append(e)
        values.append(v)

    stack: list[tuple[int, V]] = []  # (end, value) of the prefixes enclosing `cursor`
    cursor = 0
    for s, neg_e, _, v in ordered:
        e = -neg_e
        while stack and stack[-1][0] < s:
            end, val = stack.pop()
            emit(cursor, end, val)
            cursor = max(cursor, end + 1)
        if stack:
            emit(cursor, s - 1, stack[-1][1])
        cursor = s
        stack.append((e, v))
    while stack:
        end, val = stack.pop()
        emit(cursor, end, val)
        cursor = max(cursor, end + 1)
    return starts, ends, values


def merge[V](tables: Sequence[PrefixTable[V]]) -> PrefixTable[tuple[V, ...]]:
    """One table whose value at each address is the tuple of the given tables' values there
    (missing ones left out, order kept). Values are interned so equal tuples are one object."""
    cuts = sorted({b for t in tables for b in t.boundaries()})
    starts: list[int] = []
    ends: list[int] = []
    values: list[tuple[V, ...]] = []
    interned: dict[tuple[int, ...], tuple[V, ...]] = {}
    for i, s in enumerate(cuts[:-1]):
        found = [(id(v), v) for t in tables if (v := t.get_key(s)) is not None]
        if not found:
            continue
        ident = tuple(x for x, _ in found)
        value = interned.setdefault(ident, tuple(v for _, v in found))
        e = cuts[i + 1] - 1
        if ends and ends[-1] + 1 == s and values[-1] is value:
            ends[-1] = e
        else:
            starts.append(s)
            ends.append(e)
            values.append(value)
    return PrefixTable.from_intervals(starts, ends, values)
