"""DNS messages as wire bytes: reading them and building the few the server writes itself.

Design rules:
- No dnspython here. The server's common path (a plain query, an answer of A/AAAA/CNAME/SOA
  records) is read and written at the byte level; anything else returns None and the caller
  goes to dnspython, which also reports the garbage.
- Pure functions over bytes: no I/O, no clock, no state. Compiled with mypyc (README, "Speed").
- Names on the wire are compared in lower case; what a client sent is echoed as it spelled it.
"""

from __future__ import annotations

import socket
import struct
from typing import Final, NamedTuple

# Final: compiled, a constant in C rather than a module attribute looked up on every use.
_OPT: Final = 41


class WireFormatError(ValueError):
    """The message is not well-formed DNS wire format."""


class UpstreamError(Exception):
    """No upstream gave a usable answer (timeout, refused connection, garbage)."""


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


# --- wire-level reading, for the paths that must not pay for dnspython ---------------------------

A_TYPE: Final = 1
AAAA_TYPE: Final = 28
CNAME_TYPE: Final = 5
SOA_TYPE: Final = 6
# Types whose layout the fast path understands; any other type sends a message to dnspython.
SIMPLE_TYPES = frozenset({A_TYPE, AAAA_TYPE, CNAME_TYPE, SOA_TYPE, _OPT})


def _u16(wire: bytes, pos: int) -> int:
    """The big-endian 16-bit field at `pos`. Not struct: compiled, this is plain C (README, "Speed")."""
    return (wire[pos] << 8) | wire[pos + 1]


def _u32(wire: bytes, pos: int) -> int:
    """The big-endian 32-bit field at `pos` (a TTL)."""
    return (wire[pos] << 24) | (wire[pos + 1] << 16) | (wire[pos + 2] << 8) | wire[pos + 3]


# tuple.__new__ builds a NamedTuple in C; its own constructor is Python code (README, "Speed").
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

    Once per cache miss, so one pass and few allocations (README, "Speed"). Compression pointers
    into the question are not listed in `pointers`: the question is never removed."""
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
        return _tuple_new(Scan, (rcode, flags, question_end, tuple(records), tuple(pointers), qname))
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
    filter.cache_ttl, without dnspython."""
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


# --- the messages the server writes: cache keys, upstream queries, replies -----------------------

RD_BIT: Final = 0x0100
CD_BIT: Final = 0x0010
UPSTREAM_PAYLOAD = 1232        # EDNS0 buffer size we advertise upstream (DNS flag day 2020)
SERVFAIL, REFUSED, FORMERR, NOTIMP = 2, 5, 1, 4
MAX_UDP_REPLY = 4096           # never answer over UDP with more than this, whatever is asked


class CacheKey(NamedTuple):
    """What a filtered answer is cached and resolved under: everything of a query that changes
    the answer (the client's group too: groups may have different policies)."""

    group: str
    qname: bytes           # wire form, lower case
    qtype: int
    qclass: int
    do: bool
    cd: bool
    edns: bool


def cache_key(group: str, pq: Query) -> CacheKey:
    """The key of a plain query (its class is IN: parse_query's callers check)."""
    return _tuple_new(CacheKey, (group, pq.qname.lower(), pq.qtype, 1, pq.do,
                                 bool(pq.flags & CD_BIT), pq.edns))


# The fixed parts of our upstream queries, by (CD, EDNS) and DO.
_UPSTREAM_HEADERS = {(cd, edns): struct.pack("!6H", 0, RD_BIT | (CD_BIT if cd else 0), 1, 0, 0,
                                             1 if edns else 0)
                     for cd in (False, True) for edns in (False, True)}
_UPSTREAM_OPT = {do: b"\x00" + struct.pack("!HHIH", _OPT, UPSTREAM_PAYLOAD, 0x8000 if do else 0, 0)
                 for do in (False, True)}


def upstream_query(key: CacheKey) -> bytes:
    """Our query for a cache key: ID 0 (set when sent), RD, the client's CD, EDNS0 with our
    buffer size and the client's DO when the client spoke EDNS."""
    _group, qname, qtype, qclass, do, cd, edns = key   # unpacked: compiled, fields are getattr
    return b"".join((_UPSTREAM_HEADERS[cd, edns], qname, qtype.to_bytes(2, "big"),
                     qclass.to_bytes(2, "big"), _UPSTREAM_OPT[do] if edns else b""))


def asked_alike(pq: Query, canonical: bytes) -> bool:
    """Does the canonical answer already carry this query's RD bit and question spelling (the
    client asked as the upstream was asked)? Then only the ID differs."""
    return (canonical[2] & 0x01) == (pq.flags & RD_BIT) >> 8 and canonical.startswith(pq.qname, 12)


def readdressed(pq: Query, canonical: bytes) -> bytes:
    """The canonical (cached) answer for this query: the client's ID, RD bit and question
    spelling."""
    if asked_alike(pq, canonical):
        return pq.id + canonical[2:]
    flags = (((canonical[2] << 8) | canonical[3]) & ~RD_BIT) | (pq.flags & RD_BIT)
    return pq.id + flags.to_bytes(2, "big") + canonical[4:12] + pq.qname + canonical[12 + len(pq.qname):]


def servfail(data: bytes, question_end: int, edns: bool) -> bytes:
    """SERVFAIL for a query whose question ends at `question_end`: its ID, RD bit and question
    as sent, RA; with an OPT of our buffer size when `edns` (as dnspython's make_response)."""
    flags = 0x8080 | ((data[2] << 8) & RD_BIT) | SERVFAIL
    header = data[:2] + struct.pack("!5H", flags, 1, 0, 0, 1 if edns else 0)
    return header + data[12:question_end] + (_UPSTREAM_OPT[False] if edns else b"")


def question_end(data: bytes) -> int:
    """Where the (first) question of a query ends."""
    return skip_name(data, 12) + 4


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply (FORMERR, NOTIMP, SERVFAIL, REFUSED) to a query we cannot or will not
    parse or answer. None when even the header is unusable or the packet is itself a response
    (never answer those: that is how reflection loops start)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | 0x0080 | rcode   # QR, opcode+RD kept, RA, rcode
    return data[:2] + struct.pack("!H4H", flags, 0, 0, 0, 0)


def answers_question(data: bytes, packet: bytes) -> bool:
    """Is `data` a response to `packet`: its ID, and its one question (any case)?"""
    try:
        q_end = question_end(packet)
    except WireFormatError:
        return False
    return not (len(data) < q_end or data[:2] != packet[:2] or not data[2] & 0x80
                or data[4:6] != b"\x00\x01" or data[12:q_end].lower() != packet[12:q_end].lower())
