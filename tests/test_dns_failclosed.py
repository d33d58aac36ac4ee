"""Issue 12 item 2: no disallowed address reaches a DNS client, whatever the upstream answers.

Both front ends — a `regionguard dns` process and mitmdump in reverse DNS mode with
addons/regionguard_addon.py — sit in front of the in-process upstream of tests/dns_support.py, which
here answers with hand-made messages: an address in China (a real Zoom address, labelled CN in
the bundled data), the US or India under NXDOMAIN, SERVFAIL, REFUSED or an EDNS extended rcode,
in the authority and additional sections, behind lying counts, swapped types, junk in the OPT
record, or as an IPv4 address inside an IPv6 one. dnspython is the client; `leaks` reads the
reply as a client could, in every section. Every name is new, so no cache answers for another.
"""

from __future__ import annotations

import itertools
import struct

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dns_support import (
    CN_ADDRESS,
    POLICY,
    both_front_ends,
    exchange,
    leaks,
    rdata,
    wire_of,
)

from regionguard.core.decision import Engine
from regionguard.core.policy import load_policy
from regionguard.dns.filter import AnswerFilter

A, AAAA, TXT, OPT, HTTPS = 1, 28, 16, 41, 65
IN = 1
DE = "198.51.100.50"
FRONTS = ("dns", "mitmproxy")
_serial = itertools.count()


@pytest.fixture(scope="module")
def fronts(tmp_path_factory):
    """The upstream and both front ends, started once: (zone, {"dns": port, "mitmproxy": port})."""
    with both_front_ends(tmp_path_factory.mktemp("failclosed")) as started:
        yield started


def name(zoom: bool) -> str:
    """A name no earlier query asked: a Zoom one or not (both exist in the test zone)."""
    return f"t{next(_serial)}-{id(name) % 997}.{'cn.zoom.us' if zoom else 'plain.example.net'}"


def ask_crafted(fronts, front: str, qname: str, make, rdtype: str = "A", tcp: bool = False,
                timeout: float = 3.0) -> bytes | None:
    """Ask `front` for qname while the upstream answers with make(query)."""
    zone, ports = fronts
    zone.answer = lambda query, transport: make(query)
    try:
        return exchange(ports[front], dns.message.make_query(qname, rdtype), tcp=tcp,
                        timeout=timeout)
    finally:
        zone.answer = None


def rec(section: int, owner: str, rdtype: int, data: bytes, rdclass: int = IN, ttl: int = 300):
    return (section, owner, rdtype, rdclass, ttl, data)


def a(section: int, owner: str, address: str):
    return rec(section, owner, A, rdata("A", address))


def aaaa(section: int, owner: str, address: str):
    return rec(section, owner, AAAA, rdata("AAAA", address))


def opt(ext_rcode: int = 0, options: bytes = b""):
    return rec(2, ".", OPT, options, rdclass=1232, ttl=ext_rcode << 24)


def qn(query: dns.message.Message) -> str:
    return query.question[0].name.to_text()


def addresses(reply: bytes | None) -> set[str]:
    if reply is None:
        return set()
    try:
        message = dns.message.from_wire(reply)
    except Exception:  # noqa: BLE001
        return set()
    return {rd.address for s in message.answer if s.rdtype in (A, AAAA) for rd in s}


# --- other response codes -------------------------------------------------------------------------

@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("zoom", [True, False], ids=["zoom-name", "other-name"])
@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_the_answer_section_of_an_error_answer_is_filtered(fronts, front, zoom, rcode):
    reply = ask_crafted(fronts, front, name(zoom), lambda q: wire_of(
        q, [a(0, qn(q), CN_ADDRESS), a(0, qn(q), "203.0.113.7"), a(0, qn(q), DE)], rcode=rcode))
    assert reply is not None and leaks(reply) == []


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("zoom", [True, False], ids=["zoom-name", "other-name"])
def test_an_edns_extended_rcode_does_not_carry_an_answer_past_the_filter(fronts, front, zoom):
    # BADVERS: header rcode 0, extended rcode 1 in the OPT record's TTL field
    reply = ask_crafted(fronts, front, name(zoom), lambda q: wire_of(
        q, [a(0, qn(q), CN_ADDRESS), a(0, qn(q), DE), opt(ext_rcode=1)]))
    assert reply is not None and leaks(reply) == []


@pytest.mark.parametrize("front", FRONTS)
def test_an_any_answer_is_filtered(fronts, front):
    zone, ports = fronts
    reply = exchange(ports[front], dns.message.make_query(name(True), "ANY"))
    assert reply is not None and leaks(reply) == []
    assert DE in addresses(reply)   # the allowed address stays
    other = ask_crafted(fronts, front, name(False), lambda q: wire_of(
        q, [a(0, qn(q), "192.0.2.50"), rec(0, qn(q), TXT, rdata("TXT", '"x"')),
            a(0, "ns.zoom.us.", CN_ADDRESS)]), rdtype="ANY")
    assert other is not None and leaks(other) == [] and "192.0.2.50" in addresses(other)


# --- other sections ---------------------------------------------------------------------------------

@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("zoom", [True, False], ids=["zoom-name", "other-name"])
@pytest.mark.parametrize("section", [1, 2], ids=["authority", "additional"])
def test_addresses_in_authority_and_additional_sections_are_filtered(fronts, front, tcp, zoom,
                                                                     section):
    reply = ask_crafted(fronts, front, name(zoom), lambda q: wire_of(q, [
        a(0, qn(q), DE if zoom else "192.0.2.50"),
        rec(1, "zoom.us.", 2, rdata("NS", "ns.zoom.us.")),
        a(section, "ns.zoom.us.", CN_ADDRESS),                 # glue for a Zoom name
        aaaa(section, "ns.zoom.us.", "2001:db8:5::53"),
        a(section, "glue.example.net.", "100.70.0.53"),        # a Zoom address as other glue
        rec(section, "svc.example.net.", HTTPS,
            rdata("HTTPS", f'1 . alpn="h2" ipv4hint="{CN_ADDRESS}"'))]), tcp=tcp)
    assert reply is not None and leaks(reply) == []
    assert addresses(reply) == ({DE} if zoom else {"192.0.2.50"})   # the answer itself stays


# --- mutated answers ---------------------------------------------------------------------------------

MUTATED = {
    # the counts say one answer; the CN record after it is read as authority, or is trailing
    "counts-short": lambda q: wire_of(q, [a(0, qn(q), DE), a(0, qn(q), CN_ADDRESS)],
                                      counts=(1, 1, 0)),
    "counts-trailing": lambda q: wire_of(q, [a(0, qn(q), DE), a(0, qn(q), CN_ADDRESS)],
                                         counts=(1, 0, 0)),
    "counts-long": lambda q: wire_of(q, [a(0, qn(q), CN_ADDRESS)], counts=(2, 0, 0)),
    "moved-to-authority": lambda q: wire_of(q, [a(1, qn(q), CN_ADDRESS), a(0, qn(q), DE)]),
    "moved-to-additional": lambda q: wire_of(q, [a(2, qn(q), CN_ADDRESS)]),
    # an unknown type holding a CN address, swapped to A; an A swapped to AAAA (4 bytes)
    "type-swapped-to-a": lambda q: wire_of(q, [rec(0, qn(q), A, rdata("A", CN_ADDRESS))]),
    "a-as-aaaa": lambda q: wire_of(q, [rec(0, qn(q), AAAA, rdata("A", CN_ADDRESS)),
                                       a(0, qn(q), DE)]),
    "aaaa-as-a": lambda q: wire_of(q, [rec(0, qn(q), A, rdata("AAAA", f"::ffff:{CN_ADDRESS}")),
                                       a(0, qn(q), DE)]),
    "chaos-class-a": lambda q: wire_of(q, [rec(0, qn(q), A, rdata("A", CN_ADDRESS), rdclass=3)]),
    "opt-junk": lambda q: wire_of(q, [a(0, qn(q), CN_ADDRESS), a(0, qn(q), DE),
                                      opt(options=b"\x00\x08\x00\x63" + bytes(3))]),
    "opt-in-answer": lambda q: wire_of(q, [rec(0, ".", OPT, b"", rdclass=1232, ttl=0),
                                           a(0, qn(q), CN_ADDRESS)]),
    "two-opts": lambda q: wire_of(q, [a(0, qn(q), CN_ADDRESS), opt(), opt(ext_rcode=1)]),
}


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("zoom", [True, False], ids=["zoom-name", "other-name"])
@pytest.mark.parametrize("mutation", sorted(MUTATED))
def test_mutated_answers_never_hand_out_a_disallowed_address(fronts, front, zoom, mutation):
    # mitmproxy drops what it cannot frame (no reply at all): a short timeout is enough
    reply = ask_crafted(fronts, front, name(zoom), MUTATED[mutation], timeout=1.5)
    assert leaks(reply) == []


# --- IPv4 inside IPv6 ---------------------------------------------------------------------------------

EMBEDDED = [f"::ffff:{CN_ADDRESS}", f"::{CN_ADDRESS}", f"64:ff9b::{CN_ADDRESS}",
            "::ffff:203.0.113.9", "::203.0.113.9"]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("zoom", [True, False], ids=["zoom-name", "other-name"])
@pytest.mark.parametrize("broken", [False, True], ids=["alone", "beside-an-unreadable-record"])
def test_ipv6_addresses_embedding_a_disallowed_ipv4_are_filtered(fronts, front, zoom, broken):
    def make(q):
        records = [aaaa(0, qn(q), x) for x in EMBEDDED] + [aaaa(0, qn(q), "2001:db8:de::50")]
        if broken:   # an A record of 5 bytes: dnspython cannot read it, mitmproxy can frame it
            records.append(rec(2, "x.example.net.", A, b"\x01\x02\x03\x04\x05"))
        return wire_of(q, records)
    reply = ask_crafted(fronts, front, name(zoom), make, rdtype="AAAA")
    assert reply is not None and leaks(reply) == []
    if not broken:
        assert "2001:db8:de::50" in addresses(reply)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("mapped", ["::ffff:203.0.113.9", "::203.0.113.9", "64:ff9b::203.0.113.9"])
def test_a_mapped_address_beside_an_unparseable_record_is_not_relayed(fronts, front, mapped):
    # The case from the issue: a TXT whose string runs past its rdata (mitmproxy frames it,
    # dnspython cannot read it) beside an AAAA carrying a US address (a policy `zoom: true`
    # network) as IPv4 inside IPv6, for a name that is not Zoom's.
    reply = ask_crafted(fronts, front, name(False), lambda q: wire_of(q, [
        aaaa(0, qn(q), mapped), aaaa(0, qn(q), "2001:db8:ffff::50"),
        rec(2, "o.example.net.", TXT, b"\x05ab")]), rdtype="AAAA")
    assert reply is not None and leaks(reply) == []


def test_is_zoom_knows_ipv4_inside_ipv6(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    engine = Engine(load_policy(policy))
    for v4 in ("203.0.113.9", CN_ADDRESS, "159.124.47.249"):   # override network, bundled ranges
        for form in (v4, f"::ffff:{v4}", f"::{v4}", f"64:ff9b::{v4}"):
            assert engine.is_zoom(address=form), form
        assert engine.decide("127.0.0.1", None, f"::ffff:{v4}", 443).zoom   # as decide has it
    for other in ("192.0.2.9", "::ffff:192.0.2.9", "::192.0.2.9", "2001:db8:ffff::1", "::1"):
        assert not engine.is_zoom(address=other), other


# --- the filter itself: what it cannot read ------------------------------------------------------------

@pytest.fixture(scope="module")
def flt(tmp_path_factory):
    path = tmp_path_factory.mktemp("failclosed-unit") / "policy.yaml"
    path.write_text(POLICY)
    return AnswerFilter(Engine(load_policy(path)))


def _parsed(query, records) -> dns.message.Message:
    return dns.message.from_wire(wire_of(query, records))


def test_an_unreadable_address_record_blocks_a_zoom_answer(flt):
    q = dns.message.make_query("x.cn.zoom.us", "A")
    r = flt.filter("127.0.0.1", q, _parsed(q, [a(0, qn(q), DE),
                                               rec(0, qn(q), A, b"\x00\x01\x02", rdclass=3)]))
    assert r.outcome == "blocked" and r.message.rcode() == dns.rcode.NXDOMAIN
    assert r.audit_decision().rule == "unreadable-answer"


def test_an_unreadable_record_passes_only_when_proven_harmless(flt):
    q = dns.message.make_query("x.plain.example.net", "A")
    # an A of an unknown class and 5 bytes: dnspython keeps it as generic data
    harmless = _parsed(q, [a(0, qn(q), "192.0.2.50"),
                           rec(2, "o.example.net.", A, b"\x00\x01\x02\x03\x04", rdclass=0x1234)])
    assert flt.filter("127.0.0.1", q, harmless).outcome == "pass"
    # the same unreadable record, its bytes a Zoom address: might be Zoom's, so blocked
    zoomish = _parsed(q, [a(0, qn(q), "192.0.2.50"),
                          rec(2, "o.example.net.", A, rdata("A", CN_ADDRESS) + b"\x00",
                              rdclass=0x1234)])
    assert flt.filter("127.0.0.1", q, zoomish).outcome == "blocked"
    # a Chaosnet A: dnspython reads a name and a 16-bit address, which a client reading any
    # class's A as 4 bytes would not; its wire bytes are not dnspython's to give: blocked
    chaos = _parsed(q, [a(0, qn(q), "192.0.2.50"), rec(2, "o.example.net.", A, b"\x00\x12\x34",
                                                       rdclass=3)])
    assert flt.filter("127.0.0.1", q, chaos).outcome == "blocked"


def test_the_mitmproxy_mode_relays_an_unreadable_answer_only_when_proven_harmless(fronts):
    harmless = ask_crafted(fronts, "mitmproxy", name(False), lambda q: wire_of(
        q, [a(0, qn(q), "192.0.2.50"), rec(2, "o.example.net.", A, b"\x01\x02\x03\x04\x05")]))
    assert harmless is not None and struct.unpack("!H", harmless[2:4])[0] & 0xF == dns.rcode.NOERROR
    zoomish = ask_crafted(fronts, "mitmproxy", name(False), lambda q: wire_of(
        q, [a(0, qn(q), "192.0.2.50"), rec(2, "o.example.net.", A,
                                              rdata("A", CN_ADDRESS) + b"\x00")]))
    assert zoomish is not None and struct.unpack("!H", zoomish[2:4])[0] & 0xF == dns.rcode.SERVFAIL



def test_embedded_ipv4_agrees_with_ipaddress():
    """zoom.embedded_ipv4 (compiled on the hot path) against the standard library's reading of
    IPv4-mapped (ipv4_mapped), NAT64 and IPv4-compatible addresses, on random addresses."""
    import ipaddress
    import random

    from regionguard.core.zoom import embedded_ipv4
    rng = random.Random(12)
    prefixes = [bytes(10) + b"\xff\xff", bytes(12), bytes.fromhex("0064ff9b") + bytes(8),
                bytes.fromhex("0064ff9b0001") + bytes(6), bytes(11) + b"\x01"]
    for _ in range(3000):
        packed = rng.choice(prefixes) + rng.randbytes(4) if rng.random() < 0.8 else rng.randbytes(16)
        v6 = ipaddress.IPv6Address(packed)
        tail = str(ipaddress.IPv4Address(packed[12:]))
        compatible = packed[:12] == bytes(12) and packed[12] != 0   # ::/104 holds ::1 and ::
        expected = (str(v6.ipv4_mapped) if v6.ipv4_mapped else
                    tail if compatible or packed[:12] == bytes.fromhex("0064ff9b") + bytes(8) else None)
        assert embedded_ipv4(str(v6)) == expected, str(v6)
        assert embedded_ipv4(v6.exploded.upper()) == expected
    assert embedded_ipv4("192.0.2.1") is None and embedded_ipv4("not an address") is None
    assert embedded_ipv4("::1") is None and embedded_ipv4("::") is None
