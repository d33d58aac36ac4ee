"""The PROXY protocol, version 2 (haproxy.org's proxy-protocol.txt, section 2.2): the binary
header a balancer such as dnsdist (`useProxyProtocol=true`) puts before each UDP datagram and
at the start of each TCP connection, naming the client it forwards for.

Bytes in, (client address, payload) out; no I/O, no state. Whether to believe the header is the
caller's business (regionguard.dns.forwarded: only from trusted forwarders).

    header = SIGNATURE (12) | version/command (1) | family/transport (1) | length (2) | address
             block (length bytes: addresses, ports, then TLVs, which are skipped)
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16                      # the signature, version/command, family/transport, length
MAX_HEADER = FIXED + 65535      # the length field is 16 bits

_LOCAL, _PROXY = 0x20, 0x21     # version 2 with command LOCAL (the balancer itself) or PROXY
_UNSPEC, _INET, _INET6 = 0x0, 0x1, 0x2
_STREAM, _DGRAM = 0x1, 0x2


class ProxyHeaderError(ValueError):
    """A PROXY v2 header is present but malformed: nobody can say who the client is."""


class Proxied(NamedTuple):
    """What the header says. `source` is None for a LOCAL header (the balancer speaking for
    itself, e.g. a health check) or an unspecified family: the peer is the client."""

    source: str | None
    port: int
    payload: bytes              # what follows the header (for UDP: the DNS message)


def has_signature(data: bytes) -> bool:
    """Whether `data` begins with a PROXY v2 header (not whether the header is well-formed)."""
    return data[:12] == SIGNATURE


def header_length(fixed: bytes) -> int:
    """The whole header's length from its first 16 bytes (TCP reads the rest with it)."""
    if len(fixed) < FIXED or not has_signature(fixed):
        raise ProxyHeaderError("no PROXY v2 signature")
    return FIXED + ((fixed[14] << 8) | fixed[15])


def parse(data: bytes) -> Proxied:
    """The header at the start of `data` and what follows it. Raises ProxyHeaderError for
    anything malformed: no signature, another version, an unknown command, family or
    transport, an address block shorter than its family needs, or a length past the end."""
    if len(data) < FIXED:
        raise ProxyHeaderError(f"{len(data)} bytes: shorter than a PROXY v2 header")
    end = header_length(data)
    if end > len(data):
        raise ProxyHeaderError(f"header says {end} bytes, only {len(data)} present")
    command, family = data[12], data[13]
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"version/command byte 0x{command:02x} is not v2 LOCAL or PROXY")
    payload = data[end:]
    if command == _LOCAL:
        return Proxied(None, 0, payload)   # the address block, if any, is to be ignored
    af, transport = family >> 4, family & 0x0F
    if af == _UNSPEC:
        return Proxied(None, 0, payload)   # "the receiver should use the real connection address"
    if transport not in (_STREAM, _DGRAM):
        raise ProxyHeaderError(f"transport {transport} is neither STREAM nor DGRAM")
    if af == _INET:
        size, width = 12, 4
    elif af == _INET6:
        size, width = 36, 16
    else:
        raise ProxyHeaderError(f"address family {af} is neither INET nor INET6")   # UNIX: no IP
    if end - FIXED < size:
        raise ProxyHeaderError(f"address block of {end - FIXED} bytes, family needs {size}")
    raw = data[FIXED:FIXED + width]
    source = str(ipaddress.IPv4Address(raw) if width == 4 else ipaddress.IPv6Address(raw))
    port_at = FIXED + 2 * width
    return Proxied(source, (data[port_at] << 8) | data[port_at + 1], payload)


def build(source: str, port: int, dest: str, dest_port: int, payload: bytes = b"",
          stream: bool = False, tlvs: bytes = b"") -> bytes:
    """A PROXY v2 header for `source` (and `payload` after it), as a balancer writes it: for
    tests and tools (regionguard only reads headers)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    if src.version != dst.version:
        raise ValueError("source and destination must be of one family")
    af = _INET if src.version == 4 else _INET6
    block = src.packed + dst.packed + port.to_bytes(2, "big") + dest_port.to_bytes(2, "big") + tlvs
    return (SIGNATURE + bytes([_PROXY, (af << 4) | (_STREAM if stream else _DGRAM)])
            + len(block).to_bytes(2, "big") + block + payload)


def build_local(payload: bytes = b"") -> bytes:
    """A LOCAL header (the balancer's own traffic, e.g. a health check)."""
    return SIGNATURE + bytes([_LOCAL, 0]) + b"\x00\x00" + payload
