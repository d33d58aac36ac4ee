"""Test support for the DNS front end: an in-process upstream DNS server on 127.0.0.1 serving a
Zoom-like zone, the policy that places its addresses, and a `regionguard dns` subprocess runner.

Addresses are documentation/test ranges, placed into regions by the policy's overrides (and
declared Zoom's there): 198.51.100.0/24 and 2001:db8:de::/48 are DE, 203.0.113.0/24 and
2001:db8:5::/48 are US, 100.70.0.0/24 is IN. 192.0.2.0/24 is nobody's (not Zoom).
CN_ADDRESS is a real Zoom address in China (bundled data: labelled CN by Zoom), so never allowed
to these clients, who are outside China.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from regionguard.mitm.run import stop

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

ECH = base64.b64encode(b"\x00\x05abcde").decode()
CN_ADDRESS = "221.122.88.195"
BIG_ADDRESSES = [f"203.0.113.{i}" for i in range(100, 200)] + [f"198.51.100.{i}" for i in range(100, 140)]

# name → list of (type, ttl, rdata text). Names are absolute, lower case.
ZONE: dict[str, list[tuple[str, int, str]]] = {
    "de.zoom.us.": [("A", 300, "198.51.100.10"), ("AAAA", 300, "2001:db8:de::10")],
    "us.zoom.us.": [("A", 300, "203.0.113.10"), ("AAAA", 300, "2001:db8:5::10")],
    "in.zoom.us.": [("A", 300, "100.70.0.10")],
    "multi.zoom.us.": [("A", 120, "198.51.100.11"), ("A", 120, "203.0.113.11"),
                       ("A", 120, "100.70.0.11"), ("AAAA", 120, "2001:db8:de::11"),
                       ("AAAA", 120, "2001:db8:5::11")],
    # a chain that leaves Zoom's domains and ends in another region
    "chain.zoom.us.": [("CNAME", 300, "edge.cdn-example.net.")],
    "edge.cdn-example.net.": [("CNAME", 60, "node7.cdn-example.net.")],
    "node7.cdn-example.net.": [("A", 30, "203.0.113.20"), ("AAAA", 30, "2001:db8:5::20")],
    # a non-Zoom name whose chain enters Zoom's domains
    "meet.customer.example.": [("CNAME", 300, "de.zoom.us.")],
    # a non-Zoom name with an address in Zoom's ranges only
    "rangeonly.example.net.": [("A", 300, "203.0.113.30"), ("A", 300, "198.51.100.30")],
    "https.zoom.us.": [("HTTPS", 300, f'1 . alpn="h2" ipv4hint="198.51.100.12,203.0.113.12" '
                                      f'ipv6hint="2001:db8:de::12,2001:db8:5::12" ech="{ECH}"'),
                       ("A", 300, "198.51.100.12"), ("A", 300, "203.0.113.12")],
    "usonly-https.zoom.us.": [("HTTPS", 300, '1 . alpn="h2" ipv4hint="203.0.113.13"')],
    "*.wild.zoom.us.": [("A", 300, "203.0.113.40"), ("A", 300, "198.51.100.40")],
    "unknown.zoom.us.": [("A", 300, "192.0.2.99")],      # Zoom's name, unplaceable address
    "www.example.org.": [("A", 300, "192.0.2.80"), ("AAAA", 300, "2001:db8:ffff::80"),
                         ("TXT", 300, '"hello"')],
    "mail.zoom.us.": [("MX", 300, "10 mx.zoom.us.")],
    "big.zoom.us.": [("A", 300, a) for a in BIG_ADDRESSES],
    # every name under these is its own (no cache shares it): for tests that mutate answers
    "*.cn.zoom.us.": [("A", 300, CN_ADDRESS), ("A", 300, "198.51.100.50"),
                      ("AAAA", 300, f"::ffff:{CN_ADDRESS}"), ("AAAA", 300, "2001:db8:de::50"),
                      ("HTTPS", 300, f'1 . alpn="h2" ipv4hint="{CN_ADDRESS},198.51.100.50"')],
    "*.plain.example.net.": [("A", 300, "192.0.2.50"), ("AAAA", 300, "2001:db8:ffff::50"),
                             ("TXT", 300, '"not zoom"')],
    # non-Zoom names made Zoom's only by a service binding: its target is a Zoom name (the hints
    # are nobody's), or a hint lies in Zoom's real published ranges (REAL_US, below)
    "svc-target.customer.example.": [
        ("HTTPS", 300, '1 de.zoom.us. alpn="h2" ipv4hint="192.0.2.60" ipv6hint="2001:db8:ffff::60"'),
        ("SVCB", 300, '1 de.zoom.us. alpn="h2" ipv4hint="192.0.2.60" ipv6hint="2001:db8:ffff::60"')],
    "svc-hint.customer.example.": [
        ("HTTPS", 300, '1 . alpn="h2" ipv4hint="192.0.2.61,3.21.137.130"'),
        ("SVCB", 300, '1 . alpn="h2" ipv4hint="192.0.2.61,3.21.137.130"')],
    # a non-Zoom name answered with addresses in Zoom's real published ranges, no override
    # placing them (REAL_ADDRESSES)
    "real.customer.example.": [("A", 300, "159.124.47.249"), ("A", 300, "3.21.137.130"),
                               ("A", 300, "115.114.115.7"), ("A", 300, "4.34.125.130"),
                               ("AAAA", 300, "2407:30c0::10")],
}
# Addresses of real.customer.example: in Zoom's published ranges (config/data/zoom-ranges.csv);
# placed by config/data/zoom-datacenters.csv (DE, US, IN), or by nothing (unknown).
REAL_ADDRESSES = ("159.124.47.249", "3.21.137.130", "115.114.115.7", "4.34.125.130", "2407:30c0::10")
SOA = "ns.zoom-test. hostmaster.zoom-test. 1 3600 600 86400 30"

POLICY = """\
version: 1
name: dns-test
account: {type: paid, default_region: DE}
regions: {opt_in: [DE]}
actions: {disallowed: block, unknown: block}
overrides:
  - {match: 198.51.100.0/24, region: DE, zoom: true}
  - {match: 203.0.113.0/24, region: US, zoom: true}
  - {match: 100.70.0.0/24, region: IN, zoom: true}
  - {match: "2001:db8:de::/48", region: DE, zoom: true}
  - {match: "2001:db8:5::/48", region: US, zoom: true}
groups:
  - {name: us-office, clients: [127.0.0.2/32], regions: {opt_in: [US]}}
  - {name: watch, clients: [127.0.0.3/32], actions: {disallowed: monitor}}
  - {name: detour, clients: [127.0.0.4/32], actions: {disallowed: reroute}}
  - {name: india, clients: [127.0.0.5/32], regions: {opt_in: [IN]}}
reroute:
  - {match: "*.zoom.us", to: de.zoom.us}
"""


def _lookup(name: str) -> list[tuple[str, int, str]] | None:
    if name in ZONE:
        return ZONE[name]
    labels = name.split(".")
    for i in range(1, len(labels) - 1):
        wild = "*." + ".".join(labels[i:])
        if wild in ZONE:
            return ZONE[wild]
    return None


def zone_answer(query: dns.message.Message) -> dns.message.Message:
    """What a recursive resolver would answer from ZONE: CNAME chains followed, NXDOMAIN and
    NODATA with the SOA."""
    r = dns.message.make_response(query)
    r.flags |= dns.flags.RA
    q = query.question[0]
    name = q.name.to_text().lower()
    for _ in range(8):
        records = _lookup(name)
        if records is None:
            r.set_rcode(dns.rcode.NXDOMAIN)
            break
        owner = dns.name.from_text(name)
        cname = [rec for rec in records if rec[0] == "CNAME"]
        if cname and q.rdtype != dns.rdatatype.CNAME:
            r.answer.append(dns.rrset.from_text(owner, cname[0][1], "IN", "CNAME", cname[0][2]))
            name = cname[0][2]
            continue
        wanted = [rec for rec in records if dns.rdatatype.from_text(rec[0]) == q.rdtype
                  or q.rdtype == dns.rdatatype.ANY]
        for rdtype in dict.fromkeys(dns.rdatatype.from_text(t) for t, _, _ in wanted):
            same = [rec for rec in wanted if dns.rdatatype.from_text(rec[0]) == rdtype]
            r.answer.append(dns.rrset.from_text_list(owner, min(t for _, t, _ in same), "IN",
                                                     rdtype, [d for _, _, d in same]))
        break
    if not r.answer or r.rcode() == dns.rcode.NXDOMAIN:
        if not any(s.rdtype == q.rdtype for s in r.answer):
            r.authority.append(dns.rrset.from_text("zoom-test.", 600, "IN", "SOA", SOA))
    return r


class ZoneServer:
    """An upstream resolver on 127.0.0.1 (UDP and TCP, one port) in a thread.

    mode: "normal"; "dead" (reads and never answers); "garbage" (answers random bytes with the
    query's ID); "truncate" (every UDP answer truncated: TC set, no records, so a resolver must
    ask again over TCP). `delay`: seconds before each answer (a slow upstream).
    tcp: "normal"; "refuse" (nothing listens on TCP: connections are refused); "close" (reads the
    query, then closes without a word); "reset" (reads the query, then resets the connection);
    "half" (sends a length prefix and half the answer, then closes).
    `queries` counts what it received. `answer`, when set: a function (query, transport) → the
    reply's bytes (None: no reply), in place of the zone's answer (tests that hand-craft or
    mutate answers set it)."""

    def __init__(self, mode: str = "normal", delay: float = 0.0, tcp: str = "normal") -> None:
        self.mode = mode
        self.delay = delay
        self.tcp_mode = tcp
        self.queries: list[tuple[str, str, str]] = []   # (transport, name, type)
        self.answer: Callable[[dns.message.Message, str], bytes | None] | None = None
        for _attempt in range(50):   # a free UDP port whose TCP twin is free too
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        if tcp == "refuse":
            self.tcp.close()   # the port stays ours on UDP; on TCP the kernel refuses
        self._stop = False
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, name: str, rdtype: str | None = None) -> int:
        name = name.rstrip(".").lower()
        return sum(1 for _, n, t in self.queries if n == name and (rdtype is None or t == rdtype))

    def _reply(self, data: bytes, transport: str) -> bytes | None:
        if self.mode == "garbage":
            return data[:2] + os.urandom(random.randint(0, 60))
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001
            return None
        q = query.question[0]
        self.queries.append((transport, q.name.to_text().rstrip(".").lower(),
                             dns.rdatatype.to_text(q.rdtype)))
        if self.mode == "dead":
            return None
        if self.delay:
            time.sleep(self.delay)
        if self.answer is not None:
            return self.answer(query, transport)
        response = zone_answer(query)
        if transport == "udp" and self.mode == "truncate":
            response.answer, response.authority = [], []
            response.flags |= dns.flags.TC
            return response.to_wire()
        if transport == "udp":
            limit = query.payload if query.edns >= 0 else 512
            try:
                return response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                response.answer, response.authority = [], []
                response.flags |= dns.flags.TC
        return response.to_wire(max_size=65535)

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop:
            try:
                data, addr = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self._reply(data, "udp")
            except Exception:  # noqa: BLE001 - a test server must outlive bad input
                continue
            if reply is not None:
                self.udp.sendto(reply, addr)

    def _serve_tcp(self) -> None:
        if self.tcp_mode == "refuse":
            return
        self.tcp.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    (length,) = struct.unpack("!H", _read(conn, 2))
                    reply = self._reply(_read(conn, length), "tcp")
                    if self.tcp_mode == "reset":   # RST instead of FIN
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    elif self.tcp_mode == "half" and reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply[:len(reply) // 2])
                    elif self.tcp_mode == "normal" and reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except Exception:  # noqa: BLE001 - a test server must outlive bad input
                    pass

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(timeout=2)
        self.udp.close()
        self.tcp.close()


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ValueError("closed")
        data += chunk
    return data


class DnsProcess:
    """`regionguard dns` as a subprocess on 127.0.0.1:<free port> (or `listen_host`, run under
    `prefix`, e.g. ip netns exec NS)."""

    def __init__(self, policy: Path, upstreams: list[str], *extra: str,
                 audit: Path | None = None, listen_host: str = "127.0.0.1",
                 prefix: tuple[str, ...] = ()) -> None:
        cmd = [*prefix, str(BIN / "regionguard"), "dns", "--policy", str(policy),
               "--listen", f"{listen_host}:0"]
        for u in upstreams:
            cmd += ["--upstream", u]
        if audit is not None:
            cmd += ["--audit", str(audit)]
        cmd += list(extra)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = 0
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(rf"listening on {re.escape(listen_host)}:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.close()
            raise RuntimeError("regionguard dns did not start:\n" + "".join(lines))
        # keep draining stderr so a chatty server never blocks on a full pipe
        self.log: list[str] = lines
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def close(self) -> None:
        stop(self.proc)


def ask(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1", tcp: bool = False,
        timeout: float = 10.0, server: str = "127.0.0.1", **make) -> dns.message.Message:
    import dns.query
    q = dns.message.make_query(name, rdtype, **make)
    if tcp:
        return dns.query.tcp(q, server, port=port, source=source, timeout=timeout)
    return dns.query.udp(q, server, port=port, source=source, timeout=timeout)


def addresses(response: dns.message.Message, rdtype: str | None = None) -> set[str]:
    out = set()
    for rrset in response.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and (
                rdtype is None or rrset.rdtype == dns.rdatatype.from_text(rdtype)):
            out.update(rd.address for rd in rrset)
    return out


# --- hand-made and mutated answers (tests/test_dns_failclosed*.py) --------------------------------

# One record as it goes on the wire, names uncompressed: (section 0-2, owner, type, class, ttl,
# rdata). A message is a header, the question and these; counts may be made to lie.
Record = tuple[int, str, int, int, int, bytes]


def rdata(rdtype: str, text: str) -> bytes:
    """The wire rdata of a record given as text (no compression)."""
    import dns.rdata
    return dns.rdata.from_text("IN", rdtype, text).to_digestable()


def records_of(message: dns.message.Message) -> list[Record]:
    """The records of a (real) answer, every section, OPT included, rdata uncompressed."""
    out: list[Record] = []
    for section, rrsets in enumerate((message.answer, message.authority, message.additional)):
        for rrset in rrsets:
            for rd in rrset:
                out.append((section, rrset.name.to_text(), rrset.rdtype, rrset.rdclass,
                            rrset.ttl, rd.to_digestable()))
    if message.edns >= 0:
        options = b"".join(struct.pack("!HH", o.otype, len(w)) + w
                           for o in message.options for w in [o.to_wire()])
        out.append((2, ".", 41, message.payload, message.ednsflags, options))
    return out


def wire_of(query: dns.message.Message, records: list[Record], rcode: int = 0,
            flags: int = 0x8180, counts: tuple[int, int, int] | None = None,
            trailing: bytes = b"") -> bytes:
    """A response to `query` holding `records` in order (sections need not be in order: the
    counts say what a reader takes for which section; `counts` overrides them)."""
    an, ns, ar = counts if counts is not None else tuple(
        sum(1 for r in records if r[0] == s) for s in range(3))
    head = struct.pack("!HHHHHH", query.id, (flags & ~0xF) | (rcode & 0xF), 1,
                       an & 0xFFFF, ns & 0xFFFF, ar & 0xFFFF)
    q = query.question[0]
    body = q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)
    for _section, owner, rdtype, rdclass, ttl, data in sorted(records, key=lambda r: r[0]):
        body += dns.name.from_text(owner).to_wire()
        body += struct.pack("!HHIH", rdtype & 0xFFFF, rdclass & 0xFFFF, ttl & 0xFFFFFFFF,
                            len(data)) + data
    return head + body + trailing


def exchange(port: int, query: dns.message.Message, tcp: bool = False,
             source: str = "127.0.0.1", timeout: float = 3.0) -> bytes | None:
    """Send a dnspython query, return the reply's raw bytes (None: no reply in time), so a reply
    dnspython cannot parse is still seen."""
    wire = query.to_wire()
    family = socket.AF_INET
    try:
        if tcp:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(source, 0)) as s:
                s.sendall(struct.pack("!H", len(wire)) + wire)
                (length,) = struct.unpack("!H", _read(s, 2))
                return _read(s, length)
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.bind((source, 0))
            s.sendto(wire, ("127.0.0.1", port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(65535)
                if data[:2] == wire[:2]:
                    return data
    except (TimeoutError, OSError, ValueError):
        return None
    return None


class MitmDns:
    """mitmdump in reverse DNS mode on 127.0.0.1:<free port> in front of `upstream`, with an addon
    script of addons/ (regionguard.py includes the DNS filter)."""

    def __init__(self, script: str, upstream: int, policy: Path, *extra: str) -> None:
        from tests.ports import free_port
        self.port = free_port()
        # its own mitmproxy conf dir: a ~/.mitmproxy/config.yaml never changes what is tested
        self._confdir = tempfile.TemporaryDirectory(prefix="rg-mitmconf-")
        cmd = [str(BIN / "mitmdump"), "-q", "--set", "listen_host=127.0.0.1",
               "--set", f"confdir={self._confdir.name}",
               "--mode", f"reverse:dns://127.0.0.1:{upstream}@{self.port}",
               "-s", str(ROOT / "addons" / script), "--set", f"regionguard_policy={policy}", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:   # bounded: mitmdump needs a few seconds to start
            if self.proc.poll() is not None:
                raise RuntimeError("mitmdump exited:\n" + self.proc.stdout.read())
            try:
                ask(self.port, "www.example.org", timeout=1)
                return
            except Exception:  # noqa: BLE001 - not answering yet
                continue
        self.close()
        raise RuntimeError("mitmdump did not answer DNS")

    def close(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=15)
        self._confdir.cleanup()
        return out or ""


# What the default clients (127.0.0.1: DE only, outside China) must never be handed.
DISALLOWED = ("203.0.113.0/24", "100.70.0.0/24", "221.122.88.128/25", "2001:db8:5::/48")


def _embedded(address) -> list:
    """The IPv4 addresses an IPv6 one embeds: mapped, compatible, NAT64 well-known prefix."""
    import ipaddress
    if address.version == 4:
        return []
    packed = address.packed
    if packed[:12] in (bytes(10) + b"\xff\xff", bytes(12), bytes.fromhex("0064ff9b") + bytes(8)):
        return [ipaddress.IPv4Address(packed[12:])]
    return []


def leaks(reply: bytes | None, disallowed: tuple[str, ...] = DISALLOWED) -> list[str]:
    """Every disallowed address a client could take from `reply`: as dnspython reads it, every
    A/AAAA (any class; one it cannot read as an address counts by its bytes), every HTTPS/SVCB
    hint, the IPv4 inside an IPv6 address, in every section. A reply dnspython cannot parse is
    read record by record as mitmproxy frames it: a record dnspython cannot read leaks if any 4
    of its bytes are a disallowed IPv4 address or 16 a disallowed IPv6 one; a reply nothing can
    frame, if any of its bytes do."""
    import ipaddress

    import dns.rdata
    import dns.rdtypes.svcbbase as svcb
    from mitmproxy.dns import DNSMessage
    nets = [ipaddress.ip_network(n) for n in disallowed]

    def bad(address) -> bool:
        return any(a.version == n.version and a in n
                   for a in [address, *_embedded(address)] for n in nets)

    def from_bytes(data: bytes) -> list[str]:
        found = [ipaddress.ip_address(data[i:i + 4]) for i in range(len(data) - 3)]
        found += [ipaddress.ip_address(data[i:i + 16]) for i in range(len(data) - 15)]
        return [str(a) for a in found if bad(a)]

    if reply is None:
        return []
    out: list[str] = []
    try:
        message = dns.message.from_wire(reply)
        rdatas = [(rrset.rdtype, rd) for section in (message.answer, message.authority,
                                                      message.additional)
                  for rrset in section for rd in rrset]
    except Exception:  # noqa: BLE001 - not a message for dnspython: record by record
        try:
            framed = DNSMessage.unpack(reply)
        except Exception:  # noqa: BLE001 - not even framed: every byte counts
            return from_bytes(reply)
        rdatas = []
        for rr in [*framed.answers, *framed.authorities, *framed.additionals]:
            try:
                rdatas.append((rr.type, dns.rdata.from_wire(rr.class_, rr.type, rr.data, 0,
                                                            len(rr.data))))
            except Exception:  # noqa: BLE001 - unreadable: its bytes count
                out += from_bytes(rr.data)
    for rdtype, rd in rdatas:
        if isinstance(rd, svcb.SVCBBase):
            for key in (svcb.ParamKey.IPV4HINT, svcb.ParamKey.IPV6HINT):
                param = rd.params.get(key)
                out += [a for a in (param.addresses if param is not None else ())
                        if bad(ipaddress.ip_address(a))]
        elif rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            address = getattr(rd, "address", None)
            if isinstance(address, str):
                out += [address] if bad(ipaddress.ip_address(address)) else []
            else:
                out += from_bytes(rd.to_digestable())   # not an IN address: its bytes count
        elif rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
            out += from_bytes(rd.to_digestable())   # an HTTPS rdata of another class
    return out


@contextlib.contextmanager
def both_front_ends(tmp: Path, policy_text: str = POLICY):
    """The test upstream and, in front of it, both DNS front ends under one policy: yields
    (zone, {"dns": port of `regionguard dns`, "mitmproxy": port of mitmdump in reverse DNS
    mode with addons/regionguard_addon.py}). Fails if mitmdump logged a traceback through our code
    (mitmproxy's own strip_dns_https_records addon logs one for a malformed HTTPS record)."""
    zone = ZoneServer()
    policy = tmp / "policy.yaml"
    policy.write_text(policy_text)
    server = mitm = None
    try:
        server = DnsProcess(policy, [zone.address])
        mitm = MitmDns("regionguard_addon.py", zone.port, policy)
        yield zone, {"dns": server.port, "mitmproxy": mitm.port}
    finally:
        out = mitm.close() if mitm is not None else ""
        if server is not None:
            server.close()
        zone.close()
    # Tracebacks through our code (the checkout's package and addons, or an installed package);
    # mitmproxy's own addons (e.g. strip_dns_https_records on a garbled HTTPS record) log theirs,
    # and the venv may sit inside the checkout.
    mine = (str(ROOT / "regionguard"), str(ROOT / "addons"), "/site-packages/regionguard/")
    ours = [line for line in out.splitlines() if line.strip().startswith('File "')
            and any(m in line for m in mine)]
    assert not ours, out
