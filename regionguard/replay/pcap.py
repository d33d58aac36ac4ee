"""Packet captures (`.pcap`, `.pcapng`) as connections to decide, and the DNS answers inside them.

People record a Zoom client with Wireshark or tcpdump: mitmproxy cannot record UDP media, so a
capture is often the only recording there is. Files are read with `dpkt` (pcap and pcapng
readers, link layers, IP, TCP, UDP, DNS and TLS records); this module only decides what a flow
*is*:

- Each TCP or UDP flow (the 5-tuple) is one connection. The client is the sender of the SYN (or
  the receiver of the SYN-ACK); without a handshake, or for UDP, the first sender, unless only
  the *other* side uses a well-known server port (a capture that starts after the client's first
  datagram). The SNI comes from the TLS ClientHello, reassembled from the client's first bytes.
- DNS responses (UDP or TCP port 53) are extracted as (time, name, addresses): every A/AAAA
  owner and every alias whose CNAME chain leads to them, as a resolver hands them to a client.
  A UDP response counts only if it answers a query seen earlier in the capture (same ports and
  ID), as a stub resolver would accept it: an unsolicited one teaches nothing.
- Everything is ordered by capture time, so a caller that learns from the DNS answers has seen
  the answer before the flows that follow it are decided.

Bad input is reported with the file and packet number (Wireshark's frame number) and the rest
is read: a packet whose IP/TCP/UDP headers do not decode is skipped; a record whose framing is
corrupt is skipped by finding the next plausible record; a truncated file ends where it ends.
Nothing here opens a network connection.

Link types: Ethernet (with VLAN tags), Linux cooked v1 (SLL) and v2 (SLL2, `tcpdump -i any`),
raw IP (LINKTYPE_RAW and its BSD numbers, IPV4, IPV6) and BSD loopback. pcapng files are read
with their first interface's link type (tcpdump writes one interface per file).
"""

from __future__ import annotations

import io
import mmap
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# A record larger than this is corrupt framing, not a packet (tcpdump's snaplen is 262144).
MAX_RECORD = 4 << 20
# How much of a TCP stream's start is kept to find a ClientHello (a post-quantum key share makes
# it ~2 KB) or to reassemble DNS over TCP.
STREAM_HEAD = 16 << 10
CNAME_HOPS = 16
# How far past a corrupt record to look for the next readable one (a bounded scan, not the
# whole rest of a huge file byte by byte).
MAX_RESYNC = 16 << 20

# Ports on which the *server* listens: a tie-break for flows whose first packet is not the
# client's. Zoom's own ports are here because its media relays and routers answer on them.
SERVER_PORTS = frozenset([*range(1, 1024), 1720, 3478, 3479, 5060, 5061, *range(8801, 8811)])

LINKTYPE_ETHERNET, LINKTYPE_NULL, LINKTYPE_LOOP = 1, 0, 108
LINKTYPE_RAW = frozenset({101, 12, 14})   # 12 and 14: DLT_RAW on BSDs, as some files carry it
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229
LINKTYPE_SLL, LINKTYPE_SLL2 = 113, 276
ETH_IP = frozenset({dpkt.ethernet.ETH_TYPE_IP, dpkt.ethernet.ETH_TYPE_IP6})

ObserveDns = Callable[[float, str, tuple[str, ...]], None]


def is_capture(head: bytes) -> bool:
    """Do these first bytes start a pcap or pcapng file?"""
    return head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC


@dataclass(frozen=True, slots=True)
class CaptureFlow:
    """One TCP or UDP flow, as the client opened it."""

    time: float              # first packet
    packet: int              # its number
    transport: str           # tcp | udp
    client: str
    client_port: int
    server: str
    port: int
    sni: str | None


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """Addresses a DNS response in the capture gave for one name."""

    time: float
    packet: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CaptureProblem:
    packet: int | None       # None: the file as a whole
    message: str
    fix: str = ""

    @property
    def position(self) -> str:
        return f"packet {self.packet}" if self.packet is not None else "file"


CaptureItem = CaptureFlow | DnsAnswer | CaptureProblem


# --- reading records --------------------------------------------------------------------------


class _CorruptFraming(Exception):
    pass


class _Watched(io.RawIOBase):
    """The capture file as dpkt reads it, noticing what dpkt does not: a read cut short by the
    end of the file (a truncated record), and a record length no packet can have (corruption;
    dpkt would otherwise read the rest of the file as one packet, or seek backwards)."""

    def __init__(self, f: BinaryIO, prefix: bytes = b"") -> None:
        self._f = f
        self._prefix = prefix          # a file header replayed before a resumption point
        self.short: tuple[int, int] | None = None   # (wanted, got) of the last short read

    def read(self, n: int = -1) -> bytes:   # type: ignore[override]
        if n is None or n < 0 or n > MAX_RECORD:
            raise _CorruptFraming(f"a record claims a length of {n} bytes")
        if self._prefix:
            head, self._prefix = self._prefix[:n], self._prefix[n:]
            return head + (self._f.read(n - len(head)) if n > len(head) else b"")
        data = self._f.read(n)
        if len(data) < n:
            self.short = (n, len(data))
        return data

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._f.tell() - len(self._prefix)


def _records(f: BinaryIO) -> Iterator[int | tuple[int, float, bytes] | CaptureProblem]:
    """The link type, then (packet number, time, link-layer frame) for each packet record; a
    problem for each truncated or corrupt record, after which reading resumes at the next
    plausible record."""
    f.seek(0)
    head = f.read(4)
    f.seek(0)
    pcapng = head == PCAPNG_MAGIC
    number = 0
    watched = _Watched(f)
    try:
        reader: Any = dpkt.pcapng.Reader(watched) if pcapng else dpkt.pcap.Reader(watched)
    except (ValueError, dpkt.UnpackError, struct.error, _CorruptFraming) as e:
        yield CaptureProblem(None, f"not a readable {'pcapng' if pcapng else 'pcap'} file: {e}",
                             "pass a capture written by tcpdump, dumpcap or Wireshark")
        return
    header_end = f.tell()
    f.seek(0)
    file_header = f.read(header_end)
    yield int(reader.datalink())   # first the link type, then the packets
    while True:
        start = watched.tell()
        try:
            for ts, frame in reader:
                number += 1
                if watched.short is not None:
                    wanted, got = watched.short
                    yield CaptureProblem(number, f"the file ends inside this packet ({got} of its "
                                         f"{wanted} bytes present): the capture is truncated",
                                         "the packets before it were replayed; copy the capture "
                                         "again or stop the capture cleanly (tcpdump -c / Ctrl-C)")
                    return
                yield number, float(ts), bytes(frame)
                start = watched.tell()
            if watched.short is not None and watched.short[1] > 0:
                yield CaptureProblem(number + 1, "the file ends inside this packet's record header: "
                                     "the capture is truncated",
                                     "the packets before it were replayed")
            return
        except (_CorruptFraming, dpkt.UnpackError, struct.error, ValueError) as e:
            number += 1
            if watched.short is not None:
                yield CaptureProblem(number, f"the file ends inside this packet: the capture is "
                                     f"truncated ({e or type(e).__name__})",
                                     "the packets before it were replayed")
                return
            resume = _resume_offset(f, start + 1, file_header, pcapng)
            skipped = (f"; skipped to byte {resume}" if resume is not None else
                       f"; no readable record in the {MAX_RESYNC >> 20} MiB after it, reading stops")
            yield CaptureProblem(number, f"corrupt record at byte {start}: "
                                 f"{e or type(e).__name__}{skipped}",
                                 "the packets before and after it were replayed")
            if resume is None:
                return
            f.seek(resume)
            watched = _Watched(f, file_header)
            reader = dpkt.pcapng.Reader(watched) if pcapng else dpkt.pcap.Reader(watched)


def _resume_offset(f: BinaryIO, offset: int, file_header: bytes, pcapng: bool) -> int | None:
    """The next offset where a well-formed record starts (and is followed by another, or by the
    end of the file)."""
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _scan(data, offset, file_header, pcapng)


def _scan(data: mmap.mmap, offset: int, file_header: bytes, pcapng: bool) -> int | None:
    size = len(data)
    if pcapng:
        little = file_header[8:12] == b"\x4d\x3c\x2b\x1a"
        fmt = "<II" if little else ">II"

        def block_end(at: int) -> int | None:
            if at + 12 > size:
                return None
            kind, length = struct.unpack_from(fmt, data, at)
            if kind not in (2, 3, 5, 6) or length < 12 or length % 4 or at + length > size:
                return None
            if struct.unpack_from(fmt[0] + "I", data, at + length - 4)[0] != length:
                return None
            return at + length
        check = block_end
    else:
        little = file_header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        fmt = "<IIII" if little else ">IIII"
        snaplen = struct.unpack_from(fmt[0] + "I", file_header, 16)[0] or 262144

        def record_end(at: int) -> int | None:
            if at + 16 > size:
                return None
            _, _, caplen, wirelen = struct.unpack_from(fmt, data, at)
            if caplen > min(snaplen, MAX_RECORD) or caplen > wirelen or wirelen > MAX_RECORD \
                    or caplen < 14 or at + 16 + caplen > size:
                return None
            return at + 16 + caplen
        check = record_end
    for at in range(offset, min(size - 11, offset + MAX_RESYNC)):
        end = check(at)
        if end is not None and (end == size or check(end) is not None):
            return at
    return None


# --- from frames to flows -------------------------------------------------------------------------


def _network(linktype: int, frame: bytes) -> Any:
    """The IP packet inside a frame (dpkt IP or IP6), None for non-IP frames; raises
    dpkt.UnpackError for a frame that claims to carry IP but does not decode."""
    if linktype == LINKTYPE_ETHERNET:
        link: Any = dpkt.ethernet.Ethernet(frame)
        kind = link.type
    elif linktype == LINKTYPE_SLL:
        link = dpkt.sll.SLL(frame)
        kind = link.ethtype
    elif linktype == LINKTYPE_SLL2:
        link = dpkt.sll2.SLL2(frame)
        kind = link.ethtype
    elif linktype in LINKTYPE_RAW or linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        return _ip(frame)
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return _ip(frame[4:]) if frame[4:5] and frame[4] >> 4 in (4, 6) else None
    else:
        raise ValueError(f"link type {linktype}")
    if kind not in ETH_IP:
        return None
    return _ip(link.data if isinstance(link.data, bytes) else bytes(link.data))


def _ip(buf: bytes) -> Any:
    version = buf[0] >> 4 if buf else 0
    if version == 4:
        return dpkt.ip.IP(buf)
    if version == 6:
        return dpkt.ip6.IP6(buf)
    raise dpkt.UnpackError(f"IP version {version}")


def _addresses(ip: Any) -> tuple[str, str]:
    family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
    return socket.inet_ntop(family, ip.src), socket.inet_ntop(family, ip.dst)


def _fragment_tail(ip: Any) -> bool:
    """A non-first fragment carries no transport header."""
    if isinstance(ip, dpkt.ip.IP):
        return ip.offset != 0
    frag = ip.extension_hdrs.get(dpkt.ip.IP_PROTO_FRAGMENT)
    return frag is not None and frag.frag_off != 0


Endpoint = tuple[str, int]


@dataclass
class _Flow:
    time: float
    packet: int
    transport: str
    first: Endpoint                     # the first sender seen
    other: Endpoint
    client: Endpoint | None = None      # known from the handshake
    isn: int | None = None              # the client's initial sequence number
    head: dict[int, bytes] = field(default_factory=dict)   # client stream: offset → bytes
    head_size: int = 0
    dns_buf: bytearray = field(default_factory=bytearray)  # DNS over TCP, server → client

    def sides(self) -> tuple[Endpoint, Endpoint]:
        if self.client is not None:
            return self.client, (self.other if self.client == self.first else self.first)
        if self.first[1] in SERVER_PORTS and self.other[1] not in SERVER_PORTS:
            return self.other, self.first
        return self.first, self.other

    def add_client_bytes(self, seq: int, payload: bytes) -> None:
        if not payload or self.head_size >= STREAM_HEAD:
            return
        if self.isn is None:   # the capture began after the handshake: start at this segment
            self.isn = (seq - 1) % (1 << 32)
        offset = (seq - self.isn - 1) % (1 << 32)
        if offset < STREAM_HEAD and offset not in self.head:
            self.head[offset] = payload[:STREAM_HEAD - offset]
            self.head_size += len(self.head[offset])

    def stream_start(self) -> bytes:
        out = bytearray()
        for offset in sorted(self.head):
            chunk = self.head[offset]
            if offset > len(out):
                break   # a gap: a lost segment
            out += chunk[len(out) - offset:]
        return bytes(out)


def read_capture(path: str | Path, progress: Callable[[int], None] | None = None
                 ) -> Iterator[CaptureItem]:
    """Every flow and DNS answer in a capture, by capture time, and a problem for every packet
    or record that could not be read."""
    path = Path(path)
    with open(path, "rb") as f:
        yield from _read(f, progress)


def _read(f: BinaryIO, progress: Callable[[int], None] | None) -> Iterator[CaptureItem]:
    capture = _Capture()
    linktype = -1
    for item in _records(f):
        if isinstance(item, CaptureProblem):
            capture.problems.append(item)
            continue
        if isinstance(item, int):
            linktype = item
            if not _supported(linktype):
                capture.problems.append(CaptureProblem(
                    None, f"link type {linktype} is not supported",
                    "capture on an Ethernet interface or with tcpdump -i any (Linux cooked)"))
                break
            continue
        number, ts, frame = item
        if progress and number % 4096 == 0:
            progress(f.tell())
        try:
            ip = _network(linktype, frame)
            if ip is None or _fragment_tail(ip):
                continue
            segment = ip.data
            if ip.p == dpkt.ip.IP_PROTO_TCP:
                if not isinstance(segment, dpkt.tcp.TCP):
                    raise dpkt.UnpackError("TCP header does not decode")
            elif ip.p == dpkt.ip.IP_PROTO_UDP:
                if not isinstance(segment, dpkt.udp.UDP):
                    raise dpkt.UnpackError("UDP header does not decode")
            else:
                continue
            src, dst = _addresses(ip)
        except (dpkt.UnpackError, struct.error, IndexError, ValueError) as e:
            capture.problems.append(CaptureProblem(number, f"corrupt packet: {e or type(e).__name__}",
                                                   "the other packets were replayed"))
            continue
        capture.packet(number, ts, src, dst, segment)
    yield from capture.problems
    yield from capture.in_time_order()


def _supported(linktype: int) -> bool:
    return linktype in (LINKTYPE_ETHERNET, LINKTYPE_SLL, LINKTYPE_SLL2, LINKTYPE_IPV4,
                        LINKTYPE_IPV6, LINKTYPE_NULL, LINKTYPE_LOOP) or linktype in LINKTYPE_RAW


class _Capture:
    """What the packets of one capture add up to: flows, DNS answers, problems."""

    def __init__(self) -> None:
        self.flows: dict[tuple, _Flow] = {}
        self.done: list[_Flow] = []
        self.answers: list[DnsAnswer] = []
        self.problems: list[CaptureProblem] = []
        # UDP DNS queries seen: (client, client port, server, id). A response is evidence only
        # if it answers one, as a resolver's stub would accept it; an unsolicited or spoofed
        # response in the capture teaches nothing.
        self.queries: set[tuple[str, int, str, bytes]] = set()

    def packet(self, number: int, ts: float, src: str, dst: str, seg: Any) -> None:
        tcp = isinstance(seg, dpkt.tcp.TCP)
        transport = "tcp" if tcp else "udp"
        a, b = (src, seg.sport), (dst, seg.dport)
        key = (transport, *sorted((a, b)))
        flow = self.flows.get(key)
        syn = tcp and seg.flags & dpkt.tcp.TH_SYN and not seg.flags & dpkt.tcp.TH_ACK
        if flow is not None and syn and flow.isn is not None and flow.isn != seg.seq:
            self.done.append(self.flows.pop(key))   # the same ports reused for a new connection
            flow = None
        if flow is None:
            flow = self.flows[key] = _Flow(ts, number, transport, a, b)
        payload = bytes(seg.data)
        if tcp:
            if syn:
                flow.client, flow.isn = a, seg.seq
            elif seg.flags & dpkt.tcp.TH_SYN and flow.client is None:   # SYN-ACK: SYN missed
                flow.client = b
            client, _ = flow.sides()
            if a == client:
                flow.add_client_bytes(seg.seq, payload)
        if seg.dport == 53 and not tcp and len(payload) >= 3 and not payload[2] & 0x80:
            self.queries.add((src, seg.sport, dst, payload[:2]))
        if seg.sport != 53 or not payload:
            return
        if tcp:
            flow.dns_buf += payload[:STREAM_HEAD - len(flow.dns_buf)]
            while len(flow.dns_buf) >= 2:
                size = int.from_bytes(flow.dns_buf[:2], "big")
                if len(flow.dns_buf) < 2 + size:
                    break
                self.answers.extend(dns_answers(bytes(flow.dns_buf[2:2 + size]), ts, number))
                del flow.dns_buf[:2 + size]
        elif (dst, seg.dport, src, payload[:2]) in self.queries:
            self.queries.discard((dst, seg.dport, src, payload[:2]))   # one answer per query
            self.answers.extend(dns_answers(payload, ts, number))

    def in_time_order(self) -> Iterator[CaptureFlow | DnsAnswer]:
        """DNS answers and finished flows by capture time (then packet number); at equal times
        an answer comes first: it is what made the flow possible."""
        items: list[tuple[float, int, int, CaptureFlow | DnsAnswer]] = []
        for a in self.answers:
            items.append((a.time, a.packet, 0, a))
        for flow in [*self.done, *self.flows.values()]:
            items.append((flow.time, flow.packet, 1, _finish(flow)))
        items.sort(key=lambda t: t[:3])
        for *_, item in items:
            yield item


def _finish(flow: _Flow) -> CaptureFlow:
    client, server = flow.sides()
    sni = client_hello_sni(flow.stream_start()) if flow.transport == "tcp" else None
    return CaptureFlow(flow.time, flow.packet, flow.transport, client[0], client[1], server[0],
                       server[1], sni)


# --- DNS ------------------------------------------------------------------------------------------


def dns_answers(message: bytes, ts: float, number: int) -> list[DnsAnswer]:
    """The (name, addresses) pairs a DNS response gives: each A/AAAA owner, and each alias whose
    CNAME chain ends in it. Not a response, not NOERROR, or not decodable: nothing."""
    try:
        msg = dpkt.dns.DNS(message)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return []
    if msg.qr != dpkt.dns.DNS_R or msg.rcode != dpkt.dns.DNS_RCODE_NOERR or msg.opcode != 0:
        return []
    direct: dict[str, list[str]] = {}
    alias: dict[str, str] = {}
    for rr in msg.an:
        name = str(rr.name).lower().rstrip(".")
        if rr.type == dpkt.dns.DNS_A and len(rr.rdata) == 4:
            direct.setdefault(name, []).append(socket.inet_ntop(socket.AF_INET, rr.rdata))
        elif rr.type == dpkt.dns.DNS_AAAA and len(rr.rdata) == 16:
            direct.setdefault(name, []).append(socket.inet_ntop(socket.AF_INET6, rr.rdata))
        elif rr.type == dpkt.dns.DNS_CNAME and getattr(rr, "cname", None):
            alias[name] = str(rr.cname).lower().rstrip(".")
    out = [DnsAnswer(ts, number, name, tuple(dict.fromkeys(addrs))) for name, addrs in direct.items()]
    for name in alias:
        target, hops = name, 0
        while target in alias and hops < CNAME_HOPS:
            target, hops = alias[target], hops + 1
        if target in direct and name not in direct:
            out.append(DnsAnswer(ts, number, name, tuple(dict.fromkeys(direct[target]))))
    return out


# --- TLS ------------------------------------------------------------------------------------------


def client_hello_sni(stream: bytes) -> str | None:
    """The server name of the TLS ClientHello at the start of a client's stream, if there is one.
    The handshake may span several TLS records; all lengths are checked against the bytes
    present, so a short or hostile stream gives None, never an exception."""
    handshake = bytearray()
    at = 0
    while at + 5 <= len(stream) and stream[at] == 22 and len(handshake) < STREAM_HEAD:
        length = int.from_bytes(stream[at + 3:at + 5], "big")
        handshake += stream[at + 5:at + 5 + length]
        at += 5 + length
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            break
    if len(handshake) < 4 or handshake[0] != 1:   # 1: ClientHello
        return None
    body = bytes(handshake[4:4 + int.from_bytes(handshake[1:4], "big")])
    try:
        hello = dpkt.ssl.TLSClientHello(body)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError):
        return None
    for kind, data in getattr(hello, "extensions", None) or ():
        if kind == 0:   # server_name (RFC 6066 §3)
            return _server_name(data)
    return None


def _server_name(data: bytes) -> str | None:
    if len(data) < 2:
        return None
    end = min(len(data), 2 + int.from_bytes(data[:2], "big"))
    at = 2
    while at + 3 <= end:
        kind, length = data[at], int.from_bytes(data[at + 1:at + 3], "big")
        name = data[at + 3:at + 3 + length]
        if kind == 0 and len(name) == length and length:   # 0: host_name
            try:
                return name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                return None
        at += 3 + length
    return None


__all__ = ["CaptureFlow", "CaptureProblem", "DnsAnswer", "ObserveDns", "client_hello_sni",
           "dns_answers", "is_capture", "read_capture"]
