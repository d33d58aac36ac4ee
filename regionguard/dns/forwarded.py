"""Who asked: the client a trusted forwarder (a balancer such as dnsdist in front of
`regionguard dns` replicas) speaks for, so the policy's per-client groups and gateway.clients
still apply behind it.

A forwarder names its client in one of two ways:
- a PROXY protocol v2 header before the DNS message (regionguard.dns.proxyproto), for UDP per
  datagram and for TCP once per connection: the client's exact address, set by the balancer;
- an EDNS Client Subnet option (RFC 7871) inside the query: the client's network (dnsdist sends
  a /24 or /56 unless told otherwise), which a client may also write itself, so a balancer using
  it must overwrite the client's own (dnsdist `setECSOverride(true)`).
A PROXY header wins over ECS: it is the balancer's own word, never the client's.

Believed **only** from the networks given with `--trusted-forwarder`. From anyone else a header
or ECS option is ignored (the peer is the client) and counted: anyone could write one to pick a
policy group. A trusted forwarder's malformed claim is never guessed around: the query is
dropped (PROXY) or answered FORMERR (ECS, as RFC 7871 asks) and counted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import NamedTuple

from regionguard.dns import proxyproto
from regionguard.dns.wire import WireFormatError, skip_name

_OPT, _ECS = 41, 8

# Counters the server keeps in DnsServer.stats (the metrics export reads them by these names).
FORWARDED_PROXY = "forwarded_proxy"       # client named by a trusted forwarder's PROXY header
FORWARDED_ECS = "forwarded_ecs"           # ... by a trusted forwarder's ECS option
PROXY_UNTRUSTED = "proxy_untrusted"       # a PROXY header from an untrusted peer: ignored
ECS_UNTRUSTED = "ecs_untrusted"           # an ECS option from an untrusted peer: ignored
PROXY_MALFORMED = "proxy_malformed"       # a trusted forwarder's bad PROXY header: dropped
ECS_MALFORMED = "ecs_malformed"           # a trusted forwarder's bad ECS option: FORMERR
COUNTERS = (FORWARDED_PROXY, FORWARDED_ECS, PROXY_UNTRUSTED, ECS_UNTRUSTED, PROXY_MALFORMED,
            ECS_MALFORMED)


class ClaimError(ValueError):
    """A trusted forwarder's claim that cannot be read; `counter` names what to count."""

    def __init__(self, counter: str, message: str) -> None:
        super().__init__(message)
        self.counter = counter


class Identity(NamedTuple):
    """The client a query is answered for, the DNS message itself, and what to count (a name
    in COUNTERS, or "" when the peer simply asked for itself)."""

    client: str
    payload: bytes
    counter: str


class TrustedForwarders:
    """The networks whose PROXY headers and ECS options are believed."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)   # ::ffff:a.b.c.d on a dual-stack socket
        address = mapped or address
        return any(address in n for n in self.networks if n.version == address.version)

    def identify(self, data: bytes, peer: str, trusted: bool) -> Identity:
        """The client of one DNS message (a UDP datagram, or one TCP query when the connection
        had no PROXY header). Raises ClaimError for a trusted forwarder's malformed claim."""
        if proxyproto.has_signature(data):
            try:
                proxied = proxyproto.parse(data)
            except proxyproto.ProxyHeaderError as e:
                if trusted:
                    raise ClaimError(PROXY_MALFORMED, f"PROXY header from {peer}: {e}") from None
                return Identity(peer, data, PROXY_UNTRUSTED)   # junk as DNS: FORMERR later
            if not trusted:
                return Identity(peer, proxied.payload, PROXY_UNTRUSTED)
            return Identity(proxied.source or peer, proxied.payload, FORWARDED_PROXY)
        return self.from_ecs(data, peer, trusted)

    def from_ecs(self, data: bytes, peer: str, trusted: bool) -> Identity:
        """The client named by the query's ECS option (from a trusted peer), else the peer."""
        try:
            option = ecs_option(data)
        except WireFormatError:
            return Identity(peer, data, "")    # not readable DNS: the DNS path says FORMERR
        if option is None:
            return Identity(peer, data, "")
        if not trusted:
            return Identity(peer, data, ECS_UNTRUSTED)
        client = ecs_client(option)             # raises ClaimError
        return Identity(client or peer, data, FORWARDED_ECS if client else "")


def ecs_option(wire: bytes) -> bytes | None:
    """The data of the query's EDNS Client Subnet option, or None when it has none. Raises
    WireFormatError when the message cannot be walked to its OPT record."""
    if len(wire) < 12:
        raise WireFormatError("shorter than a DNS header")
    qd, an, ns, ar = struct.unpack_from("!4H", wire, 4)
    if ar == 0:
        return None
    pos = 12
    for _ in range(qd):
        pos = skip_name(wire, pos) + 4
    for index in range(an + ns + ar):
        pos = skip_name(wire, pos)
        if pos + 10 > len(wire):
            raise WireFormatError("record runs past the end")
        rdtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
        pos += 10
        end = pos + rdlen
        if end > len(wire):
            raise WireFormatError("record data runs past the end")
        if rdtype == _OPT and index >= an + ns:
            while pos + 4 <= end:
                code, length = struct.unpack_from("!HH", wire, pos)
                pos += 4
                if pos + length > end:
                    raise WireFormatError("EDNS option runs past its record")
                if code == _ECS:
                    return wire[pos:pos + length]
                pos += length
            return None
        pos = end
    return None


def ecs_client(option: bytes) -> str | None:
    """The client network's address in an ECS option (RFC 7871 section 6), None for a source
    prefix of 0 (the client asked not to be located: the peer is the client). Raises ClaimError
    when the option is malformed: an unknown family, a prefix longer than the family's, an
    address not exactly the prefix's bytes long, or bits set beyond the prefix."""
    if len(option) < 4:
        raise ClaimError(ECS_MALFORMED, f"ECS option of {len(option)} bytes, at least 4 needed")
    family, prefix = (option[0] << 8) | option[1], option[2]
    if family == 1:
        width = 4
    elif family == 2:
        width = 16
    else:
        raise ClaimError(ECS_MALFORMED, f"ECS family {family} is neither 1 (IPv4) nor 2 (IPv6)")
    if prefix > width * 8:
        raise ClaimError(ECS_MALFORMED, f"ECS source prefix /{prefix} is longer than the family's")
    raw = option[4:]
    if len(raw) != (prefix + 7) // 8:
        raise ClaimError(ECS_MALFORMED, f"ECS address of {len(raw)} bytes for a /{prefix}")
    if prefix == 0:
        return None
    value = int.from_bytes(raw.ljust(width, b"\x00"), "big")
    if value & ((1 << (width * 8 - prefix)) - 1):
        raise ClaimError(ECS_MALFORMED, f"ECS address has bits set beyond its /{prefix}")
    return str(ipaddress.ip_address(raw.ljust(width, b"\x00")))
