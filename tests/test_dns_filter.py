"""The DNS filter (pure: dnspython messages in and out) and the wire cache, without sockets."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dns.rdtypes.svcbbase import ParamKey
from dns_support import POLICY, REAL_ADDRESSES, zone_answer

from regionguard.core.decision import Engine
from regionguard.core.policy import load_policy
from regionguard.dns.cache import WireCache
from regionguard.dns.filter import AnswerFilter, cache_ttl
from regionguard.dns.wire import WireFormatError, ttl_fields


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dnsfilter") / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def flt(policy_file):
    return AnswerFilter(Engine(load_policy(policy_file)))


def variant(policy_file, extra: str) -> AnswerFilter:
    path = policy_file.with_name(f"v{abs(hash(extra))}.yaml")
    path.write_text(POLICY + extra)
    return AnswerFilter(Engine(load_policy(path)))


def run(f: AnswerFilter, name: str, rdtype: str = "A", client: str = "127.0.0.1"):
    query = dns.message.make_query(name, rdtype)
    return query, f.filter(client, query, zone_answer(query))


def addrs(message, rdtype=None):
    return {rd.address for s in message.answer if s.rdtype in (1, 28)
            and (rdtype is None or s.rdtype == dns.rdatatype.from_text(rdtype)) for rd in s}


def test_non_zoom_answer_is_relayed_untouched(flt):
    query = dns.message.make_query("www.example.org", "A")
    response = zone_answer(query)
    before = response.to_wire()
    result = flt.filter("127.0.0.1", query, response)
    assert not result.zoom and result.outcome == "pass" and result.decisions == []
    assert result.message is response and response.to_wire() == before


def test_disallowed_addresses_are_dropped_and_the_rest_kept(flt):
    _, r = run(flt, "multi.zoom.us")
    assert r.outcome == "filtered"
    assert addrs(r.message) == {"198.51.100.11"}
    assert sorted(r.dropped) == ["100.70.0.11", "203.0.113.11"]
    _, r6 = run(flt, "multi.zoom.us", "AAAA")
    assert addrs(r6.message) == {"2001:db8:de::11"}


def test_group_is_chosen_by_client_address(flt):
    _, us = run(flt, "multi.zoom.us", client="127.0.0.2")
    assert addrs(us.message) == {"198.51.100.11", "203.0.113.11"}
    _, india = run(flt, "multi.zoom.us", client="127.0.0.5")
    assert addrs(india.message) == {"198.51.100.11", "100.70.0.11"}
    assert {d.group for d in india.decisions} == {"india"}


def test_cname_chain_leaving_zoom_is_judged_by_its_final_addresses(flt):
    _, r = run(flt, "chain.zoom.us")
    assert r.outcome == "blocked" and r.name == "chain.zoom.us"
    assert r.message.rcode() == dns.rcode.NXDOMAIN and not r.message.answer
    soa = [s for s in r.message.authority if s.rdtype == dns.rdatatype.SOA]
    assert soa and soa[0].name.to_text() == "zoom.us."
    _, allowed = run(flt, "chain.zoom.us", client="127.0.0.2")
    assert allowed.outcome == "allowed" and addrs(allowed.message) == {"203.0.113.20"}
    assert [s.rdtype for s in allowed.message.answer] == [5, 5, 1]   # chain kept intact


def test_non_zoom_name_with_zoom_cname_or_zoom_range_is_filtered(flt):
    _, r = run(flt, "meet.customer.example", client="127.0.0.5")
    assert r.zoom and r.name == "de.zoom.us" and addrs(r.message) == {"198.51.100.10"}
    _, ranged = run(flt, "rangeonly.example.net")
    assert ranged.zoom and addrs(ranged.message) == {"198.51.100.30"}
    assert ranged.dropped == ["203.0.113.30"]


def test_a_name_the_policy_declares_zoom_is_filtered_on_both_paths(policy_file):
    """A host override with `zoom: true` makes a name Zoom's for the DNS filter as for the
    proxy: its unplaceable address fails closed instead of being relayed."""
    from regionguard.dns.wire import scan_response
    path = policy_file.with_name("declared.yaml")
    path.write_text(POLICY.replace("overrides:\n", "overrides:\n  - {match: www.example.org, "
                                   "region: US, zoom: true}\n", 1))
    f = AnswerFilter(Engine(load_policy(path)))
    query, r = run(f, "www.example.org")
    assert r.zoom and r.outcome == "blocked" and r.decisions[0].rule == "unknown-region"
    scan = scan_response(zone_answer(query).to_wire())
    assert f.filter_scan("127.0.0.1", "www.example.org", 1, scan) is None   # replaced: blocked


def test_unplaceable_zoom_address_fails_closed(flt):
    _, r = run(flt, "unknown.zoom.us")
    assert r.outcome == "blocked"
    assert r.decisions[0].rule == "unknown-region"


def test_wildcard_names(flt):
    _, r = run(flt, "anything.wild.zoom.us")
    assert addrs(r.message) == {"198.51.100.40"}


@pytest.mark.parametrize("how", ["nxdomain", "nodata", "refused", "zero"])
def test_block_answers(policy_file, how):
    f = variant(policy_file, f"dns: {{block_answer: {how}}}\n")
    for rdtype, zero in (("A", "0.0.0.0"), ("AAAA", "::")):
        _, r = run(f, "us.zoom.us", rdtype)
        m = r.message
        assert r.outcome == "blocked"
        expected_rcode = {"nxdomain": dns.rcode.NXDOMAIN, "refused": dns.rcode.REFUSED}.get(
            how, dns.rcode.NOERROR)
        assert m.rcode() == expected_rcode
        if how == "zero":
            assert addrs(m) == {zero}
        else:
            assert not m.answer
            has_soa = any(s.rdtype == dns.rdatatype.SOA for s in m.authority)
            assert has_soa == (how in ("nxdomain", "nodata"))


def test_https_hints_are_filtered_and_ech_kept_unless_asked(flt, policy_file):
    _, r = run(flt, "https.zoom.us", "HTTPS")
    rd = r.message.answer[0][0]
    assert rd.params[ParamKey.IPV4HINT].addresses == ("198.51.100.12",)
    assert rd.params[ParamKey.IPV6HINT].addresses == ("2001:db8:de::12",)
    assert ParamKey.ECH in rd.params
    strip = variant(policy_file, "dns: {strip_ech: true}\n")
    _, s = run(strip, "https.zoom.us", "HTTPS", client="127.0.0.2")
    rd = s.message.answer[0][0]
    assert ParamKey.ECH not in rd.params
    assert rd.params[ParamKey.IPV4HINT].addresses == ("198.51.100.12", "203.0.113.12")


def test_https_record_whose_hints_are_all_disallowed_loses_them(flt):
    _, r = run(flt, "usonly-https.zoom.us", "HTTPS")
    rd = r.message.answer[0][0]
    assert ParamKey.IPV4HINT not in rd.params and ParamKey.ALPN in rd.params
    assert r.dropped == ["203.0.113.13"]


def test_additional_section_cannot_smuggle_addresses(flt):
    query = dns.message.make_query("mail.zoom.us", "MX")
    response = zone_answer(query)
    response.additional.append(dns.rrset.from_text("mx.zoom.us.", 300, "IN", "A",
                                                   "203.0.113.50", "198.51.100.50"))
    r = flt.filter("127.0.0.1", query, response)
    assert r.zoom and r.outcome == "filtered"
    assert {rd.address for s in r.message.additional for rd in s} == {"198.51.100.50"}
    assert r.message.answer[0].rdtype == dns.rdatatype.MX


def test_monitor_keeps_everything_and_records_would_block(flt):
    _, r = run(flt, "us.zoom.us", client="127.0.0.3")
    assert r.outcome == "monitor" and addrs(r.message) == {"203.0.113.10"}
    d = r.audit_decision()
    assert d.action == "monitor" and d.would == "block"


def test_reroute_names_the_alternative_and_builds_its_answer(flt):
    query, r = run(flt, "us.zoom.us", client="127.0.0.4")
    assert r.outcome == "reroute" and r.reroute_to == "de.zoom.us"
    target_q = dns.message.make_query("de.zoom.us", "A")
    target = flt.filter("127.0.0.4", target_q, zone_answer(target_q)).message
    answer = flt.reroute_response(query, target)
    assert answer.question[0].name.to_text() == "us.zoom.us."
    assert addrs(answer) == {"198.51.100.10"}
    empty = dns.message.make_response(target_q)
    assert flt.reroute_response(query, empty) is None


def test_reroute_without_alternative_blocks(policy_file):
    text = POLICY.replace('reroute:\n  - {match: "*.zoom.us", to: de.zoom.us}\n', "")
    path = policy_file.with_name("noreroute.yaml")
    path.write_text(text)
    f = AnswerFilter(Engine(load_policy(path)))
    _, r = run(f, "us.zoom.us", client="127.0.0.4")
    assert r.outcome == "blocked" and r.message.rcode() == dns.rcode.NXDOMAIN


def test_errors_and_empty_answers_pass(flt):
    query = dns.message.make_query("us.zoom.us", "A")
    servfail = dns.message.make_response(query)
    servfail.set_rcode(dns.rcode.SERVFAIL)
    r = flt.filter("127.0.0.1", query, servfail)
    assert r.message is servfail and not r.changed and r.decisions == []   # nothing to decide
    _, nx = run(flt, "nothere.zoom.us")
    assert nx.message.rcode() == dns.rcode.NXDOMAIN and not nx.changed   # relayed as is


def test_cache_ttl_positive_negative_and_errors():
    q = dns.message.make_query("multi.zoom.us", "A")
    assert cache_ttl(zone_answer(q), 86400) == 120
    assert cache_ttl(zone_answer(q), 60) == 60
    chain = zone_answer(dns.message.make_query("chain.zoom.us", "A"))
    assert cache_ttl(chain, 86400) == 30                       # smallest along the chain
    nx = zone_answer(dns.message.make_query("nothere.zoom.us", "A"))
    assert cache_ttl(nx, 86400) == 30                          # SOA minimum (RFC 2308)
    nodata = zone_answer(dns.message.make_query("mail.zoom.us", "A"))
    assert nodata.rcode() == dns.rcode.NOERROR and cache_ttl(nodata, 86400) == 30
    bare = dns.message.make_response(q)
    bare.set_rcode(dns.rcode.NXDOMAIN)
    assert cache_ttl(bare, 86400) == 0
    bare.set_rcode(dns.rcode.SERVFAIL)
    assert cache_ttl(bare, 86400) == 0


# --- the wire cache -----------------------------------------------------------------------------


def _wire(name="multi.zoom.us", rdtype="A") -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    r = zone_answer(q)
    r.use_edns(0, 0, 1232)
    return r.to_wire()


def test_ttl_fields_find_every_record_but_opt():
    wire = _wire("chain.zoom.us")
    offsets, ttls = ttl_fields(wire)
    assert ttls == (300, 60, 30)
    assert [struct.unpack_from("!I", wire, o)[0] for o in offsets] == list(ttls)
    for bad in (b"", b"\x00" * 11, wire[:-3], wire[:20]):
        with pytest.raises(WireFormatError):
            ttl_fields(bad)


def test_cache_counts_ttls_down_and_expires():
    cache = WireCache()
    wire = _wire("chain.zoom.us")
    assert cache.put("k", wire, 30, now=1000.0)
    assert cache.get("k", 1000.5) == wire
    aged = dns.message.from_wire(cache.get("k", 1010.2))
    assert [s.ttl for s in aged.answer] == [290, 50, 20]
    assert cache.get("k", 1030.0) is None and len(cache) == 0
    assert not cache.put("z", wire, 0, now=0.0)
    assert cache.put("k", wire, 30, now=1000.0)
    fields = ttl_fields(wire)
    assert cache.ttl_left_and_fields("k", wire, 1010.0) == (20.0, fields)
    assert cache.ttl_left_and_fields("k", wire[:1] + wire[1:], 1010.0) == (20.0, None)   # a copy
    assert cache.ttl_left_and_fields("nope", wire, 1010.0) == (0.0, None)


def test_cache_stays_within_its_byte_bound():
    cache = WireCache(max_bytes=20_000)
    wire = _wire()
    for i in range(1000):
        cache.put(("g", f"{i}".encode()), wire, 300, now=0.0)
        assert cache.bytes <= 20_000
    assert 0 < len(cache) < 1000
    assert cache.get(("g", b"999"), 0.5) == wire           # newest kept, oldest evicted
    assert cache.get(("g", b"0"), 0.5) is None
    assert not cache.put("huge", b"\x00" * 30_000, 300, now=0.0)
    assert not cache.put("bad", b"\x01\x02", 300, now=0.0)


def test_a_shared_entry_is_the_same_answer_counted_in_both_caches():
    answers, hits = WireCache(max_bytes=20_000), WireCache(max_bytes=20_000)
    wire = _wire("chain.zoom.us")
    assert answers.put("k", wire, 30, now=1000.0)
    hits.put_entry(("g", b"query"), answers.entry("k"))
    assert hits.entry(("g", b"query")) is answers.entry("k")
    assert hits.get(("g", b"query"), 1010.2) == answers.get("k", 1010.2)    # aged alike
    assert hits.get(("g", b"query"), 1031.0) is None                        # expires alike
    for i in range(1000):                                                     # and is bounded
        hits.put_entry(("g", f"{i}".encode()), answers.entry("k"))
        assert hits.bytes <= 20_000


# --- the wire-level fast path agrees with the dnspython path --------------------------------------

ZONE_QUERIES = [(n, t) for n in ("de.zoom.us", "us.zoom.us", "multi.zoom.us", "chain.zoom.us",
                                 "meet.customer.example", "rangeonly.example.net", "x.wild.zoom.us",
                                 "unknown.zoom.us", "www.example.org", "nothere.zoom.us", "mail.zoom.us",
                                 "real.customer.example")
                for t in ("A", "AAAA")]


@pytest.mark.parametrize("client", [f"127.0.0.{i}" for i in range(1, 6)])
def test_wire_filter_agrees_with_message_filter(flt, client):
    from regionguard.dns.wire import remove_records, response_ttl, scan_response, scan_ttls, ttl_fields
    for name, rdtype in ZONE_QUERIES:
        query = dns.message.make_query(name, rdtype)
        wire = zone_answer(query).to_wire()
        scan = scan_response(wire)
        assert scan is not None, name
        fast = flt.filter_scan(client, name, dns.rdatatype.from_text(rdtype), scan)
        slow = flt.filter(client, query, dns.message.from_wire(wire))
        if fast is None:          # the answer is replaced: only the message path does that
            assert slow.outcome in ("blocked", "reroute"), (name, rdtype, slow.outcome)
            continue
        assert (fast.zoom, fast.outcome, fast.kept, fast.dropped) == (
            slow.zoom, slow.outcome, slow.kept, slow.dropped), (name, rdtype)
        cut = remove_records(wire, scan, fast.drop)
        assert cut is not None
        assert dns.message.from_wire(cut).answer == slow.message.answer, (name, rdtype)
        assert response_ttl(scan_response(cut), 86400) == cache_ttl(slow.message, 86400)
        assert response_ttl(scan, 86400, fast.drop) == cache_ttl(slow.message, 86400)
        assert scan_ttls(scan, 86400, fast.drop) == (cache_ttl(slow.message, 86400), ttl_fields(cut))


def test_an_answer_is_readdressed_to_each_query_whatever_the_upstream_echoed():
    """The cached answer carries the upstream's echo of the question (an upstream may change its
    case) and RD bit; every client gets its own ID, RD bit and spelling back."""
    from regionguard.dns.wire import parse_query
    from regionguard.dns.wire import readdressed as _readdressed
    for echoed in ("de.zoom.us", "DE.zoom.US"):
        for upstream_rd in (True, False):
            up = dns.message.make_query(echoed, "A")
            answer = dns.message.make_response(up)
            answer.flags = dns.flags.QR | dns.flags.RA | (dns.flags.RD if upstream_rd else 0)
            canonical = answer.to_wire()
            for spelled in ("de.zoom.us", "De.Zoom.Us"):
                for rd in (dns.flags.RD, 0):
                    q = dns.message.make_query(spelled, "A", flags=rd)
                    got = dns.message.from_wire(_readdressed(parse_query(q.to_wire()), canonical))
                    assert got.id == q.id and got.flags & dns.flags.RD == rd
                    assert got.question[0].name.to_text() == spelled + "."


def test_parse_query_takes_plain_queries_only():
    from regionguard.dns.wire import parse_query
    plain = parse_query(dns.message.make_query("De.Zoom.US", "AAAA").to_wire())
    assert plain is not None and plain.qname == b"\x02De\x04Zoom\x02US\x00" and plain.qtype == 28
    assert not plain.edns and plain.payload == 512
    edns = parse_query(dns.message.make_query("a.zoom.us", "A", use_edns=0, payload=4096,
                                              want_dnssec=True).to_wire())
    assert edns.edns and edns.payload == 4096 and edns.do
    cookie = dns.message.make_query("a.zoom.us", "A", use_edns=0,
                                    options=[dns.edns.GenericOption(10, b"12345678")])
    response = dns.message.make_response(dns.message.make_query("a.zoom.us", "A"))
    for wire in (cookie.to_wire(), response.to_wire(), b"", b"\x00" * 12, b"\x00" * 17,
                 dns.message.make_query("a.zoom.us", "A").to_wire()[:-1]):
        assert parse_query(wire) is None


def test_scan_refuses_what_it_cannot_vouch_for():
    from regionguard.dns.wire import scan_response
    https = zone_answer(dns.message.make_query("https.zoom.us", "HTTPS")).to_wire()
    assert scan_response(https) is None                     # HTTPS: the dnspython path
    good = zone_answer(dns.message.make_query("multi.zoom.us", "A")).to_wire()
    assert scan_response(good) is not None
    for bad in (good[:-1], good + b"\x00", good[:12], b"\x00" * 3):
        assert scan_response(bad) is None
    q_end = 12 + len(b"\x05multi\x04zoom\x02us\x00") + 4
    assert good[q_end] == 0xC0                               # the first owner: a pointer
    forward = bytearray(good)
    forward[q_end + 1] = q_end + 4                           # now pointing forwards: a loop risk
    assert scan_response(bytes(forward)) is None


def test_decision_cache_answers_exactly_as_the_engine_would(policy_file):
    """The filter shares decisions between names that tell the engine the same things; every
    answer must still equal a fresh Engine decision, name included."""
    path = policy_file.with_name("lab.yaml")
    path.write_text(POLICY.replace("overrides:\n", "overrides:\n  - {match: \"*.lab.zoom.us\", "
                                   "region: US, zoom: true}\n", 1))
    f = AnswerFilter(Engine(load_policy(path)))
    hosts = ["a.zoom.us", "b.zoom.us", "A.Zoom.US.", "x.lab.zoom.us", "zoomfrn1mmr.fra.zoom.us",
             "zoomsjc1mmr.sjc.zoom.us", "x.sjc.zoom.us", "a.x.sjc.zoom.us", "room.zoomcrc.com",
             "meet.customer.example", "zoom.us"]
    addresses = ["198.51.100.10", "203.0.113.10", "100.70.0.10", "192.0.2.99", "2001:db8:de::10",
                 "206.247.11.121", "159.124.47.249"]
    for _ in range(2):   # the second round is answered from the cache
        for client in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            for host in hosts:
                for address in addresses:
                    got = f.decide(client, host, address)
                    want = f.engine.decide_safely(client, host, address, 443, "tcp")
                    assert got == want and got.location == want.location, (client, host, address)
    assert f._cache_on


def test_decision_cache_is_per_filter_so_a_new_policy_starts_clean(policy_file):
    old = AnswerFilter(Engine(load_policy(policy_file)))
    assert old.decide("127.0.0.1", "a.zoom.us", "203.0.113.10").blocks
    path = policy_file.with_name("widened.yaml")
    path.write_text(POLICY.replace("opt_in: [DE]}", "opt_in: [DE, US]}", 1))
    assert not AnswerFilter(Engine(load_policy(path))).decide(
        "127.0.0.1", "a.zoom.us", "203.0.113.10").blocks


# --- service bindings that make a name Zoom's ----------------------------------------------------


def hints(message) -> set[str]:
    out = set()
    for section in (message.answer, message.authority, message.additional):
        for rrset in section:
            if rrset.rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
                for rd in rrset:
                    for key in (ParamKey.IPV4HINT, ParamKey.IPV6HINT):
                        if key in rd.params:
                            out.update(rd.params[key].addresses)
    return out


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
def test_a_service_binding_whose_target_is_zoom_makes_the_name_zooms(flt, rdtype):
    """svc-target.customer.example's HTTPS/SVCB points at de.zoom.us, with hints that no source
    places (nor declares Zoom's): Zoom's answer by its target, so the hints are decided as
    de.zoom.us's addresses: unknown, blocked. Read as a non-Zoom answer they would pass."""
    query, r = run(flt, "svc-target.customer.example", rdtype)
    assert r.zoom and r.name == "de.zoom.us"
    assert sorted(r.dropped) == ["192.0.2.60", "2001:db8:ffff::60"] and r.kept == []
    assert hints(r.message) == set()
    assert {(d.action.value, d.rule) for d in r.decisions} == {("block", "unknown-region")}
    # the same record in the additional section of another answer makes that answer Zoom's too
    response = zone_answer(dns.message.make_query("www.example.org", "A"))
    response.additional.append(zone_answer(query).answer[0])
    r2 = flt.filter("127.0.0.1", dns.message.make_query("www.example.org", "A"), response)
    assert r2.zoom and r2.name == "de.zoom.us" and hints(r2.message) == set()
    assert {"192.0.2.60", "2001:db8:ffff::60"} <= set(r2.dropped)


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
def test_a_hint_in_zooms_real_ranges_makes_the_name_zooms(flt, rdtype):
    """svc-hint.customer.example's only Zoom trace is a hint in Zoom's real published range
    3.21.137.128/25 (placed US by zoom-datacenters.csv): the answer is Zoom's; the US hint goes
    for DE-only clients and stays for the US office; the nobody's hint is not Zoom's, it stays."""
    _, r = run(flt, "svc-hint.customer.example", rdtype)
    assert r.zoom and r.outcome == "filtered"
    assert r.dropped == ["3.21.137.130"] and hints(r.message) == {"192.0.2.61"}
    _, us = run(flt, "svc-hint.customer.example", rdtype, client="127.0.0.2")
    assert us.zoom and us.dropped == [] and hints(us.message) == {"192.0.2.61", "3.21.137.130"}


# --- Zoom's real published ranges, no override -----------------------------------------------------


def _published(address: str) -> tuple[bool, str | None]:
    """(in config/data/zoom-ranges.csv, the region zoom-datacenters.csv's most specific row
    gives it or None), read from the files here: the expectations come from the data, not from
    the locator under test."""
    import csv
    import ipaddress
    from pathlib import Path
    data = Path(__file__).resolve().parent.parent / "config" / "data"
    ip = ipaddress.ip_address(address)
    with open(data / "zoom-ranges.csv") as f:
        ranged = any(ip in ipaddress.ip_network(row["prefix"]) for row in csv.DictReader(f)
                     if ipaddress.ip_network(row["prefix"]).version == ip.version)
    with open(data / "zoom-datacenters.csv") as f:
        rows = [(ipaddress.ip_network(row["prefix"]), row["region"]) for row in csv.DictReader(f)]
    placed = [(net.prefixlen, region) for net, region in rows if net.version == ip.version and ip in net]
    return ranged, max(placed)[1] if placed else None


@pytest.mark.parametrize("client, allowed", [("127.0.0.1", {"DE"}), ("127.0.0.2", {"US"}),
                                             ("127.0.0.5", {"IN"})])
def test_answers_in_zooms_real_ranges_are_filtered_by_their_published_region(flt, client, allowed):
    """real.customer.example: a non-Zoom name, answered with addresses in Zoom's real ranges and
    no override. Each group keeps exactly the addresses the data places in its allowed regions
    (the default region DE is always on); unplaced ones (unknown) go everywhere."""
    regions = {}
    for address in REAL_ADDRESSES:
        ranged, regions[address] = _published(address)
        assert ranged, f"{address} is not in zoom-ranges.csv: the fixture is stale"
    assert sorted(r for r in regions.values() if r) == ["DE", "IN", "US"]   # and two unplaced
    for rdtype in ("A", "AAAA"):
        _, r = run(flt, "real.customer.example", rdtype, client=client)
        want = {a for a, region in regions.items() if region in allowed | {"DE"}
                and (":" in a) == (rdtype == "AAAA")}
        assert r.zoom, rdtype
        assert addrs(r.message) == want, rdtype
        if not want:
            assert r.outcome == "blocked" and r.message.rcode() == dns.rcode.NXDOMAIN
