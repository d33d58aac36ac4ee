"""Client identity behind a balancer (issue 13, section 4): `regionguard dns` believes a PROXY v2
header or an EDNS Client Subnet option only from `--trusted-forwarder` networks, so per-client
policy groups apply behind dnsdist; from anyone else both are ignored and counted; a trusted
forwarder's malformed claim is dropped (PROXY) or FORMERR (ECS), never guessed around.

The parsers are fuzzed with hypothesis. The server runs in-process (its own event loop in a
thread, so its counters can be read) on 127.0.0.1; the trusted forwarder is 127.0.0.1, the
untrusted peer 127.0.0.9; queries go over real UDP and TCP sockets. The test policy's groups
(tests/dns_support.py): 127.0.0.2 us-office (DE+US), 127.0.0.5 india (DE+IN), else DE only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import dns.edns
import dns.message
import dns.rcode
import pytest
from dns_support import POLICY, ZoneServer, addresses
from hypothesis import given, settings
from hypothesis import strategies as st

from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.dns import forwarded, proxyproto
from regionguard.dns.cli import Config
from regionguard.dns.server import DnsServer
from regionguard.dns.wire import WireFormatError

DE, US, IN = "198.51.100.11", "203.0.113.11", "100.70.0.11"   # multi.zoom.us's A records
FORWARDER, UNTRUSTED = "127.0.0.1", "127.0.0.9"
US_OFFICE, INDIA = "127.0.0.2", "127.0.0.5"


# --- the parsers ---------------------------------------------------------------------------------


def test_proxy_v2_headers_parse_as_balancers_write_them():
    query = dns.message.make_query("de.zoom.us", "A").to_wire()
    p = proxyproto.parse(proxyproto.build("10.20.1.7", 40000, "10.0.0.53", 53, query))
    assert (p.source, p.port, p.payload) == ("10.20.1.7", 40000, query)
    tlv = b"\x04\x00\x03abc"   # a TLV (NOOP) after the addresses: skipped
    p6 = proxyproto.parse(proxyproto.build("2001:db8::7", 1, "2001:db8::53", 53, query,
                                           stream=True, tlvs=tlv))
    assert (p6.source, p6.port, p6.payload) == ("2001:db8::7", 1, query)
    assert proxyproto.parse(proxyproto.build_local(query)) == (None, 0, query)
    header = proxyproto.build("10.20.1.7", 1, "10.0.0.53", 53)
    assert proxyproto.header_length(header[:16]) == len(header) == 28


@pytest.mark.parametrize("bad", [
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11",                                 # shorter than 16 bytes
    proxyproto.build("10.0.0.1", 1, "10.0.0.2", 2)[:-1],               # length past the end
    proxyproto.SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),            # version 1 byte
    proxyproto.SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),            # unknown command
    proxyproto.SIGNATURE + b"\x21\x31\x00\x6c" + bytes(108),           # AF_UNIX: no IP
    proxyproto.SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12),            # unknown transport
    proxyproto.SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),            # INET6 block too short
    b"\r\n\r\n\x00\r\nQUIT!" + b"\x21\x11\x00\x0c" + bytes(12),         # not the signature
])
def test_malformed_proxy_headers_are_errors(bad):
    with pytest.raises(proxyproto.ProxyHeaderError):
        proxyproto.parse(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=40))
def test_fuzz_proxy_parse_never_raises_anything_else(tail, payload):
    for data in (proxyproto.SIGNATURE + tail, tail,
                 proxyproto.build("192.0.2.1", 5, "192.0.2.2", 53, payload)[:len(tail)] + tail):
        try:
            p = proxyproto.parse(data)
        except proxyproto.ProxyHeaderError:
            continue
        assert p.source is None or p.source.count(".") == 3 or ":" in p.source
        assert data.endswith(p.payload)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 65535), st.binary(max_size=60),
       st.integers(0, 27), st.integers(0, 255))
def test_fuzz_proxy_round_trip_and_single_byte_corruption(address, port, payload, at, value):
    source = socket.inet_ntoa(address.to_bytes(4, "big"))
    data = proxyproto.build(source, port, "192.0.2.53", 53, payload)
    assert proxyproto.parse(data) == (source, port, payload)
    broken = data[:at] + bytes([value]) + data[at + 1:]
    try:
        p = proxyproto.parse(broken)
    except proxyproto.ProxyHeaderError:
        return
    assert broken.endswith(p.payload)


def _ecs(address: str, prefix: int) -> dns.edns.ECSOption:
    return dns.edns.ECSOption(address, prefix)


def test_ecs_option_is_found_and_read():
    q = dns.message.make_query("de.zoom.us", "A", use_edns=0,
                               options=[dns.edns.GenericOption(65001, b"x"), _ecs("10.20.3.0", 24)])
    option = forwarded.ecs_option(q.to_wire())
    assert forwarded.ecs_client(option) == "10.20.3.0"
    assert forwarded.ecs_client(_ecs("2001:db8:7::", 48).to_wire()) == "2001:db8:7::"
    assert forwarded.ecs_client(b"\x00\x01\x00\x00") is None          # /0: "do not locate me"
    assert forwarded.ecs_option(dns.message.make_query("a.b", "A").to_wire()) is None
    for bad in (b"\x00\x01\x18", b"\x00\x03\x08\x00\x0a", b"\x00\x01\x21\x00" + bytes(5),
                b"\x00\x01\x18\x00\x0a\x14", b"\x00\x01\x18\x00\x0a\x14\x03\x01"):
        with pytest.raises(forwarded.ClaimError) as e:
            forwarded.ecs_client(bad)
        assert e.value.counter == forwarded.ECS_MALFORMED


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_fuzz_identify_never_raises_anything_but_a_claim_error(data, trusted):
    fw = forwarded.TrustedForwarders(["127.0.0.1/32"])
    for candidate in (data, proxyproto.SIGNATURE + data):
        try:
            identity = fw.identify(candidate, "127.0.0.1", trusted)
        except forwarded.ClaimError as e:
            assert trusted and e.counter in (forwarded.PROXY_MALFORMED, forwarded.ECS_MALFORMED)
            continue
        if not trusted:
            assert identity.client == "127.0.0.1"   # an untrusted peer is always itself
    try:
        forwarded.ecs_option(data)
    except WireFormatError:
        pass


def test_trusted_networks():
    fw = forwarded.TrustedForwarders(["10.0.0.0/29", "2001:db8::53"])
    assert fw.trusts("10.0.0.5") and fw.trusts("::ffff:10.0.0.5") and fw.trusts("2001:db8::53")
    assert not fw.trusts("10.0.0.9") and not fw.trusts("2001:db8::54") and not fw.trusts("?")
    assert not forwarded.TrustedForwarders()


# --- the server ----------------------------------------------------------------------------------


class Resolver:
    """DnsServer in a thread of its own, trusting 127.0.0.1 as a forwarder."""

    def __init__(self, tmp_path, upstream: ZoneServer) -> None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY + "gateway: {clients: [127.0.0.0/8]}\n")
        config = Config(listen=("127.0.0.1", 0), upstreams=(("127.0.0.1", upstream.port),),
                        timeout=3.0, cache_bytes=1 << 20, trusted_forwarders=("127.0.0.1/32",))
        self.server = DnsServer(EngineHolder(policy), config)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.port = self.server.address[1]

    @property
    def stats(self) -> dict:
        return dict(self.server.stats)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def resolver(tmp_path):
    zone = ZoneServer()
    r = Resolver(tmp_path, zone)
    try:
        yield r
    finally:
        r.close()
        zone.close()


def udp(port: int, data: bytes, source: str, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp(port: int, opening: bytes, queries: list[bytes], source: str) -> list[bytes | None]:
    """Open a connection from `source`, send `opening` (a PROXY header, or nothing), then each
    query; the replies (None once the server has closed the connection)."""
    replies: list[bytes | None] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        if opening:
            s.sendall(opening)
        for q in queries:
            try:
                s.sendall(struct.pack("!H", len(q)) + q)
                head = _read(s, 2)
                replies.append(_read(s, struct.unpack("!H", head)[0]) if head else None)
            except (ConnectionError, OSError):
                replies.append(None)
    return replies


def _read(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def multi(**make) -> bytes:
    q = dns.message.make_query("multi.zoom.us", "A", **make)
    q.id = 4242
    return q.to_wire()


def got(reply: bytes | None) -> set[str]:
    assert reply is not None, "no reply"
    return addresses(dns.message.from_wire(reply))


def proxied(client: str, payload: bytes = b"") -> bytes:
    return proxyproto.build(client, 53000, "127.0.0.1", 53, payload)


def test_a_trusted_proxy_header_names_the_client_over_udp_and_tcp(resolver):
    port = resolver.port
    query = multi()
    for _ in range(2):   # the second round is served from the caches: still per group
        assert got(udp(port, proxied(US_OFFICE, query), FORWARDER)) == {DE, US}
        assert got(udp(port, proxied(INDIA, query), FORWARDER)) == {DE, IN}
        assert got(udp(port, query, FORWARDER)) == {DE}   # the forwarder asking for itself
    assert dns.message.from_wire(udp(port, proxied(INDIA, query), FORWARDER)).id == 4242
    assert resolver.stats["forwarded_proxy"] == 5
    replies = tcp(port, proxyproto.build(INDIA, 1, "127.0.0.1", 53, stream=True),
                  [query, multi(use_edns=0)], FORWARDER)
    assert [got(r) for r in replies] == [{DE, IN}, {DE, IN}]
    assert [got(r) for r in tcp(port, b"", [query], FORWARDER)] == [{DE}]
    local = tcp(port, proxyproto.build_local(), [query], FORWARDER)   # LOCAL: itself
    assert [got(r) for r in local] == [{DE}]
    assert resolver.stats["proxy_untrusted"] == 0


def test_an_untrusted_peers_proxy_header_is_ignored_and_counted(resolver):
    port = resolver.port
    assert got(udp(port, proxied(US_OFFICE, multi()), UNTRUSTED)) == {DE}
    replies = tcp(port, proxyproto.build(US_OFFICE, 1, "127.0.0.1", 53, stream=True),
                  [multi()], UNTRUSTED)
    assert [got(r) for r in replies] == [{DE}]
    assert resolver.stats["proxy_untrusted"] == 2
    assert resolver.stats["forwarded_proxy"] == 0


def test_ecs_is_believed_from_a_trusted_forwarder_only(resolver):
    port = resolver.port
    claim = multi(use_edns=0, options=[_ecs(US_OFFICE, 32)])
    # the untrusted peer asks first: its answer (its own group's) must not reach the forwarder's
    # client, though the bytes are the same (the hit cache is keyed by the group decided first)
    assert got(udp(port, claim, UNTRUSTED)) == {DE}
    assert got(udp(port, claim, FORWARDER)) == {DE, US}
    assert got(udp(port, claim, UNTRUSTED)) == {DE}
    assert got(udp(port, claim, FORWARDER)) == {DE, US}
    assert [got(r) for r in tcp(port, b"", [claim], FORWARDER)] == [{DE, US}]
    assert [got(r) for r in tcp(port, b"", [claim], UNTRUSTED)] == [{DE}]
    stats = resolver.stats
    assert stats["forwarded_ecs"] == 3 and stats["ecs_untrusted"] == 2
    # behind a PROXY header, the client's own ECS is the client's word, not the balancer's
    assert got(udp(port, proxied(INDIA, claim), FORWARDER)) == {DE, IN}


def test_a_trusted_forwarders_malformed_claim_is_never_guessed_around(resolver):
    port = resolver.port
    broken = proxyproto.SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12)   # unknown command
    assert udp(port, broken + multi(), FORWARDER, timeout=1.0) is None
    assert udp(port, proxied(US_OFFICE)[:20], FORWARDER, timeout=1.0) is None
    # one socket reads datagrams in order: once this is answered, both drops have been counted
    assert got(udp(port, multi(), FORWARDER)) == {DE}
    assert resolver.stats["proxy_malformed"] == 2
    bad_header = proxyproto.SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12)   # AF_UNIX
    assert tcp(port, bad_header, [multi()], FORWARDER) == [None]          # closed, unanswered
    assert resolver.stats["proxy_malformed"] == 3
    ecs = dns.edns.GenericOption(8, b"\x00\x01\x18\x00\x7f\x00\x00\x02")  # /24, 4 address bytes
    bad_ecs = multi(use_edns=0, options=[ecs])
    reply = udp(port, bad_ecs, FORWARDER)
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    assert dns.message.from_wire(tcp(port, b"", [bad_ecs], FORWARDER)[0]).rcode() == \
        dns.rcode.FORMERR
    assert resolver.stats["ecs_malformed"] == 2
    assert resolver.stats["forwarded_proxy"] == resolver.stats["forwarded_ecs"] == 0
    # the same bad ECS from an untrusted peer: the claim is ignored and counted; the query is
    # then the peer's own, which the general path finds malformed too
    reply = udp(port, bad_ecs, UNTRUSTED)
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    assert resolver.stats["ecs_untrusted"] == 1


def test_a_forwarded_client_outside_gateway_clients_is_refused(resolver):
    reply = udp(resolver.port, proxied("10.9.9.9", multi()), FORWARDER)
    assert reply is not None and reply[3] & 0x0F == dns.rcode.REFUSED
    reply = udp(resolver.port, multi(use_edns=0, options=[_ecs("10.9.9.0", 24)]), FORWARDER)
    assert reply is not None and reply[3] & 0x0F == dns.rcode.REFUSED


def test_what_peers_claimed_is_exported_as_metrics(resolver):
    """The counts above reach Prometheus (`regionguard dns --metrics`): what a peer said about
    its client, by kind and by what the server made of it; no address becomes a label."""
    from prometheus_client import CollectorRegistry, generate_latest

    from regionguard.dns.metrics import DnsCollector

    port = resolver.port
    assert got(udp(port, proxied(US_OFFICE, multi()), FORWARDER)) == {DE, US}
    assert got(udp(port, proxied(US_OFFICE, multi()), UNTRUSTED)) == {DE}
    assert udp(port, proxied(US_OFFICE)[:20], FORWARDER, timeout=1.0) is None
    # one socket reads datagrams in order: once this is answered, the drop has been counted
    assert got(udp(port, multi(), FORWARDER)) == {DE}
    registry = CollectorRegistry()
    registry.register(DnsCollector(resolver.server))
    text = generate_latest(registry).decode()
    for kind, result, n in (("proxy", "believed", 1), ("proxy", "untrusted", 1),
                            ("proxy", "malformed", 1), ("ecs", "believed", 0)):
        line = f'regionguard_dns_client_claims_total{{kind="{kind}",result="{result}"}} {n}.0'
        assert line in text, text
    assert US_OFFICE not in text
