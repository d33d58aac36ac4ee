"""The server's message logic for the queries wire.py leaves to dnspython (EDNS options, odd
flags, another class) and for replies too big for a client's UDP buffer: their cache key, and
a cached answer re-addressed to them. Pure: dnspython messages in, bytes out."""

from __future__ import annotations

from typing import cast

import dns.exception
import dns.flags
import dns.message

from regionguard.dns.wire import MAX_UDP_REPLY, UPSTREAM_PAYLOAD, CacheKey


def query_key(group: str, query: dns.message.Message) -> CacheKey:
    """wire.cache_key for a query dnspython read (it has a question: callers check)."""
    q = query.question[0]
    qname = cast(bytes, q.name.canonicalize().to_wire())   # bytes: no file given
    return CacheKey(group, qname, q.rdtype, q.rdclass, bool(query.ednsflags & dns.flags.DO),
                    bool(query.flags & dns.flags.CD), query.edns >= 0)


def for_client(query: dns.message.Message, found: dns.message.Message, udp: bool) -> bytes:
    """`found` (a cached, filtered response) re-addressed to this query: its ID, its question
    (and spelling), its EDNS, and truncated to its UDP buffer size."""
    r = dns.message.make_response(query, our_payload=UPSTREAM_PAYLOAD)
    r.flags |= dns.flags.RA | (found.flags & (dns.flags.AD | dns.flags.AA))
    r.set_rcode(found.rcode())
    r.answer, r.authority, r.additional = found.answer, found.authority, found.additional
    if not udp:
        return r.to_wire(max_size=65535)
    limit = max(512, min(query.payload, MAX_UDP_REPLY)) if query.edns >= 0 else 512
    try:
        return r.to_wire(max_size=limit)
    except dns.exception.TooBig:
        r.answer, r.authority, r.additional = [], [], []
        r.flags |= dns.flags.TC
        return r.to_wire()
