"""A DNS cache of raw wire messages, bounded in bytes, with TTLs that count down.

Why raw bytes: parsing a packet with dnspython costs 80–230 µs, and cached dnspython messages
cost ~10× the memory and bring long GC pauses. The server's hit path looks up the client's query
bytes (minus the ID) and sends the stored response with the client's ID: no parsing at all.

TTLs: the positions of every record's TTL field are found once when an entry is stored; a hit
a second or more later gets a copy with each TTL lowered by the entry's age (rendered once per
second of age, not once per hit). Entries expire at the smallest TTL. Eviction is least recently
used, by total bytes.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

_OPT = 41
ENTRY_OVERHEAD = 160   # bytes: the entry object, its key tuple and the dict slot, roughly


class WireFormatError(ValueError):
    """The message is not well-formed DNS wire format."""


def skip_name(wire: bytes, pos: int) -> int:
    """The position after the (possibly compressed) name at `pos`."""
    end = len(wire)
    for _ in range(128):
        if pos >= end:
            raise WireFormatError("name runs past the end")
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise WireFormatError("truncated compression pointer")
            return pos + 2
        if length & 0xC0:
            raise WireFormatError("bad label type")
        pos += 1 + length
    raise WireFormatError("too many labels")


def ttl_fields(wire: bytes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The offsets and values of every record's TTL (the OPT pseudo-record has none)."""
    if len(wire) < 12:
        raise WireFormatError("shorter than a DNS header")
    qd, an, ns, ar = struct.unpack_from("!4H", wire, 4)
    pos = 12
    for _ in range(qd):
        pos = skip_name(wire, pos) + 4
    offsets, ttls = [], []
    for _ in range(an + ns + ar):
        pos = skip_name(wire, pos)
        if pos + 10 > len(wire):
            raise WireFormatError("record runs past the end")
        rdtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
        if rdtype != _OPT:
            offsets.append(pos + 4)
            ttls.append(ttl)
        pos += 10 + rdlen
    if pos > len(wire):
        raise WireFormatError("record data runs past the end")
    return tuple(offsets), tuple(ttls)


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


# --- wire-level reading, for the paths that must not pay for dnspython ---------------------------

A_TYPE, AAAA_TYPE, CNAME_TYPE, SOA_TYPE = 1, 28, 5, 6
# Types whose layout the fast path understands; any other type sends a message to dnspython.
SIMPLE_TYPES = frozenset({A_TYPE, AAAA_TYPE, CNAME_TYPE, SOA_TYPE, _OPT})


def _u16(wire: bytes, pos: int) -> int:
    """The big-endian 16-bit field at `pos`. Fields are read this way, not with struct: compiled
    (regionguard/_compiled.py) it is plain C, where a struct.unpack_from call (a module lookup, a
    call, a tuple) cost more than the rest of a record."""
    return (wire[pos] << 8) | wire[pos + 1]


def _u32(wire: bytes, pos: int) -> int:
    """The big-endian 32-bit field at `pos` (a TTL)."""
    return (wire[pos] << 24) | (wire[pos + 1] << 16) | (wire[pos + 2] << 8) | wire[pos + 3]


# NamedTuple's own constructor is Python code; tuple.__new__ builds the same object in C. The
# per-query and per-record constructions below use it.
_tuple_new = tuple.__new__


class Query(NamedTuple):
    """A plain query: one question, no records but an optional bare OPT."""

    id: bytes              # the two ID bytes
    flags: int
    qname: bytes           # wire form, as sent (case kept)
    qtype: int
    qclass: int
    edns: bool
    payload: int           # the client's UDP buffer size (512 without EDNS)
    do: bool


def parse_query(wire: bytes) -> Query | None:
    """The query, if it is plain enough for the fast path; None sends it to dnspython."""
    n = len(wire)
    if n < 17 or n > 512:
        return None
    # fields read with _u16 and single bytes, not struct (why: _u16)
    if wire[2] & 0xF8 or wire[4] or wire[5] != 1 or wire[6] or wire[7] or wire[8] or wire[9] \
            or wire[10]:   # a response, not opcode QUERY, not one question, or records
        return None
    flags = _u16(wire, 2)
    ar = wire[11]
    if ar > 1:
        return None
    pos = 12
    while True:
        length = wire[pos]
        if length == 0:
            break
        if length > 63 or pos + 1 + length >= n:
            return None
        pos += 1 + length
    qname = wire[12:pos + 1]
    pos += 1
    if pos + 4 > n:
        return None
    qtype = _u16(wire, pos)
    qclass = _u16(wire, pos + 2)
    pos += 4
    if ar == 0:
        return (_tuple_new(Query, (wire[:2], flags, qname, qtype, qclass, False, 512, False))
                if pos == n else None)
    if n - pos != 11 or wire[pos] != 0:
        return None
    o = pos + 1   # the OPT record after its root owner: type, payload, rcode, version, DO, rdlen
    if _u16(wire, o) != _OPT or wire[o + 4] or wire[o + 5] or wire[o + 8] \
            or wire[o + 9]:   # extended rcode and version 0, no options
        return None
    payload = _u16(wire, o + 2)
    return _tuple_new(Query, (wire[:2], flags, qname, qtype, qclass, True, max(512, payload),
                              bool(wire[o + 6] & 0x80)))


def read_name(wire: bytes, pos: int, pointers: list[int] | None = None) -> tuple[str, int]:
    """(lower-case dotted name, position after it). Compression pointers must point backwards;
    their targets are appended to `pointers` when given."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    n = len(wire)
    while True:
        if pos >= n:
            raise WireFormatError("name runs past the end")
        length = wire[pos]
        if length & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise WireFormatError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | wire[pos + 1]
            if target >= pos or jumps > 64:
                raise WireFormatError("bad compression pointer")
            if pointers is not None:
                pointers.append(target)
            if end < 0:
                end = pos + 2
            pos = target
            jumps += 1
            continue
        if length & 0xC0:
            raise WireFormatError("bad label type")
        if length == 0:
            if end < 0:
                end = pos + 1
            name = b".".join(labels).lower()
            try:
                return name.decode("ascii"), end
            except UnicodeDecodeError:
                return name.decode("latin-1"), end
        labels.append(wire[pos + 1:pos + 1 + length])
        pos += 1 + length


class Record(NamedTuple):
    section: int           # 0 answer, 1 authority, 2 additional
    start: int             # the record's first byte
    end: int               # one past its last byte
    owner: str
    rdtype: int
    ttl: int
    value: str             # A/AAAA: the address; CNAME: the target; SOA: str(negative TTL)
    ttl_at: int = -1       # where its TTL field is


class Scan(NamedTuple):
    rcode: int                               # with the EDNS extended rcode, if any
    flags: int
    question_end: int
    records: tuple[Record, ...]
    pointers: tuple[tuple[int, int], ...]   # (where a pointer sits, where it points)
    qname: str = ""                          # the question's name, lower-case dotted


def scan_response(wire: bytes) -> Scan | None:
    """Every record of a response, when all are of SIMPLE_TYPES and the message is well formed;
    None otherwise (the caller then uses dnspython, which also reports the garbage).

    This runs once per cache miss, so it allocates as little as it can: no list per record, no
    generator, one pass over the records of all three sections. Fields are read with _u16/_u32
    and IPv4 addresses formatted here: compiled, a call to socket.inet_ntop, like one to
    struct.unpack_from, costs more than the rest of a record. Compression
    pointers into the question are not listed in `pointers`: the question is never removed, so
    they stay valid."""
    try:
        n = len(wire)
        if n < 12 or wire[4] or wire[5] != 1:   # one question
            return None
        flags = _u16(wire, 2)
        an = _u16(wire, 6)
        an_ns = an + _u16(wire, 8)
        count = an_ns + _u16(wire, 10)
        pointers: list[tuple[int, int]] = []
        qname, pos = read_name(wire, 12)
        pos += 4
        question_end = pos
        records = []
        rcode = flags & 0x000F
        seen_opt = False
        # Owners are mostly one compression pointer to the question's name (0xC00C), or to a
        # name read before: what read_name gives for a name that is just a pointer to `target`
        # depends on the target only (its text, and the pointers followed from there).
        by_target: dict[int, tuple[str, list[int]]] = {}
        for k in range(count):
            section = 0 if k < an else 1 if k < an_ns else 2
            start = pos
            first = wire[pos]
            if first == 0xC0 and wire[pos + 1] == 12:
                owner = qname
                pos += 2
            elif first >= 0xC0:
                target = ((first & 0x3F) << 8) | wire[pos + 1]
                known = by_target.get(target) if target < pos else None
                if known is None:
                    found: list[int] = []
                    owner, pos = read_name(wire, pos, found)
                    known = by_target[target] = (owner, [t for t in found if t >= question_end])
                else:
                    owner = known[0]
                    pos += 2
                for t in known[1]:
                    pointers.append((start, t))
            else:
                found = []
                owner, pos = read_name(wire, pos, found)
                for t in found:
                    if t >= question_end:
                        pointers.append((start, t))
            if pos + 10 > n:
                return None
            rdtype = _u16(wire, pos)
            ttl = _u32(wire, pos + 4)
            ttl_at = pos + 4
            rdata_end = pos + 10 + _u16(wire, pos + 8)
            pos += 10
            if rdata_end > n:
                return None
            if rdtype == A_TYPE:
                if rdata_end - pos != 4:
                    return None
                value = f"{wire[pos]}.{wire[pos + 1]}.{wire[pos + 2]}.{wire[pos + 3]}"
            elif rdtype == AAAA_TYPE:
                if rdata_end - pos != 16:
                    return None
                value = socket.inet_ntop(socket.AF_INET6, wire[pos:rdata_end])
            elif rdtype == _OPT:
                # One OPT, in the additional section (RFC 6891); anything else goes to dnspython.
                # Its TTL field's top byte extends the rcode: BADVERS is no NOERROR.
                if section != 2 or seen_opt:
                    return None
                seen_opt = True
                rcode |= wire[ttl_at] << 4
                value = ""
            elif rdtype == CNAME_TYPE:
                found = []
                value, after = read_name(wire, pos, found)
                if after != rdata_end:
                    return None
                for t in found:
                    if t >= question_end:
                        pointers.append((start, t))
            elif rdtype == SOA_TYPE:
                found = []
                _m, after = read_name(wire, pos, found)
                _r, after = read_name(wire, after, found)
                if after + 20 != rdata_end:
                    return None
                for t in found:
                    if t >= question_end:
                        pointers.append((start, t))
                e = rdata_end - 4
                minimum = _u32(wire, e)
                value = str(min(ttl, minimum))
            else:   # not one of SIMPLE_TYPES
                return None
            records.append(_tuple_new(Record, (section, start, rdata_end, owner, rdtype, ttl, value,
                                               ttl_at)))
            pos = rdata_end
        if pos != n:
            return None
        return Scan(rcode, flags, question_end, tuple(records), tuple(pointers), qname)
    except (WireFormatError, struct.error, IndexError):
        return None


def remove_records(wire: bytes, scan: Scan, drop: set[int]) -> bytes | None:
    """The message without the records at the indices in `drop`, counts adjusted. None when a
    compression pointer of a kept record points at or past a removed one (moving bytes would
    break it): the caller then rebuilds the message with dnspython."""
    if not drop:
        return wire
    records = scan.records
    first = len(wire)
    for i in drop:
        first = min(first, records[i].start)
    for where, target in scan.pointers:
        if where > first and target >= first:
            return None
    # the kept records as runs of adjacent ones (records are contiguous): one slice a run
    parts = [b""]
    counts = [0, 0, 0]
    run = scan.question_end
    for i, rec in enumerate(records):
        if i in drop:
            if rec.start > run:
                parts.append(wire[run:rec.start])
            run = rec.end
        else:
            counts[rec.section] += 1
    if len(wire) > run:
        parts.append(wire[run:])
    an, ns, ar = counts
    parts[0] = wire[:6] + bytes((an >> 8, an & 0xFF, ns >> 8, ns & 0xFF, ar >> 8, ar & 0xFF)) \
        + wire[12:scan.question_end]
    return b"".join(parts)


def scan_ttls(scan: Scan, max_ttl: int, drop: set[int] | frozenset[int] = frozenset()
              ) -> tuple[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(response_ttl(scan, max_ttl, drop), the offsets and values of every TTL field of
    remove_records(message, scan, drop)), in one pass over the records: the miss path wants
    both. The records are contiguous from question_end; removing some moves the rest."""
    offsets, ttls = [], []
    shift = 0
    answered = False
    for i, r in enumerate(scan.records):
        if i in drop:
            shift += r.end - r.start
        elif r.rdtype != _OPT:
            offsets.append(r.ttl_at - shift)
            ttls.append(r.ttl)
            answered = answered or r.section == 0
    fields = (tuple(offsets), tuple(ttls))
    if scan.rcode == 0 and answered:
        return max(0, min(min(ttls), max_ttl)), fields
    return response_ttl(scan, max_ttl, drop), fields


def response_ttl(scan: Scan, max_ttl: int, drop: set[int] | frozenset[int] = frozenset()) -> int:
    """Cache time of a scanned response (without the records at the indices in `drop`): as
    dnsfilter.cache_ttl, without dnspython."""
    if scan.rcode not in (0, 3):
        return 0
    records = [r for i, r in enumerate(scan.records) if i not in drop] if drop else scan.records
    if scan.rcode == 3 or not any(r.section == 0 for r in records):
        for r in records:
            if r.section == 1 and r.rdtype == SOA_TYPE:
                return max(0, min(int(r.value), max_ttl))
        return 0
    return max(0, min(min(r.ttl for r in records if r.rdtype != _OPT), max_ttl))


def wire_name(qname: bytes) -> str:
    """A wire-format name (no compression) as lower-case dotted text."""
    try:
        return read_name(qname, 0)[0]
    except WireFormatError:
        return "?"
