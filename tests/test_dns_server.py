"""`regionguard dns` as a real subprocess, against an in-process upstream on 127.0.0.1, queried
with dnspython and dig from several 127.0.0.x source addresses (one per policy group)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dns.rdtypes.svcbbase import ParamKey
from dns_support import BIN, POLICY, DnsProcess, ZoneServer, addresses, ask

DEFAULT, US_OFFICE, WATCH, DETOUR, INDIA = (f"127.0.0.{i}" for i in range(1, 6))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("dnsserver")
    policy = base / "policy.yaml"
    policy.write_text(POLICY)
    audit = base / "audit.jsonl"
    zone = ZoneServer()
    # lines written at once, so a test reads its line right after the answer
    server = DnsProcess(policy, [zone.address], "--audit-flush-ms", "0", audit=audit)
    yield server, zone, audit
    server.close()
    zone.close()


def dig(port: int, *args: str, source: str = DEFAULT) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "-b", source, "+time=10",
                          "+tries=1", *args], capture_output=True, text=True, timeout=30)
    return out.stdout


def audit_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_groups_by_source_address(setup):
    server, _, _ = setup
    port = server.port
    assert addresses(ask(port, "multi.zoom.us", source=DEFAULT)) == {"198.51.100.11"}
    assert addresses(ask(port, "multi.zoom.us", source=US_OFFICE)) == {"198.51.100.11", "203.0.113.11"}
    assert addresses(ask(port, "multi.zoom.us", source=INDIA)) == {"198.51.100.11", "100.70.0.11"}
    assert addresses(ask(port, "multi.zoom.us", "AAAA", source=DEFAULT)) == {"2001:db8:de::11"}
    assert addresses(ask(port, "multi.zoom.us", "AAAA", source=US_OFFICE)) == {
        "2001:db8:de::11", "2001:db8:5::11"}


def test_chain_into_another_region_blocked_with_soa(setup):
    server, _, _ = setup
    r = ask(server.port, "chain.zoom.us", source=DEFAULT)
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
    assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    ok = ask(server.port, "chain.zoom.us", source=US_OFFICE)
    assert addresses(ok) == {"203.0.113.20"}
    assert [s.rdtype for s in ok.answer] == [dns.rdatatype.CNAME, dns.rdatatype.CNAME, dns.rdatatype.A]


def test_dig_udp_and_tcp(setup):
    server, _, _ = setup
    assert dig(server.port, "+short", "us.zoom.us").strip() == ""
    assert "status: NXDOMAIN" in dig(server.port, "us.zoom.us")
    assert dig(server.port, "+short", "us.zoom.us", source=US_OFFICE).split() == ["203.0.113.10"]
    assert dig(server.port, "+short", "+tcp", "x.wild.zoom.us").split() == ["198.51.100.40"]
    assert sorted(dig(server.port, "+short", "+tcp", "x.wild.zoom.us", source=US_OFFICE).split()) == [
        "198.51.100.40", "203.0.113.40"]
    assert dig(server.port, "+short", "meet.customer.example", source=INDIA).split() == [
        "de.zoom.us.", "198.51.100.10"]


def test_non_zoom_names_are_relayed(setup):
    server, _, _ = setup
    r = ask(server.port, "www.example.org", "TXT")
    assert r.answer[0].to_text() == 'www.example.org. 300 IN TXT "hello"'
    assert addresses(ask(server.port, "www.example.org", "AAAA")) == {"2001:db8:ffff::80"}
    assert ask(server.port, "nothere.example.org").rcode() == dns.rcode.NXDOMAIN


def test_https_hints_filtered(setup):
    server, _, _ = setup
    r = ask(server.port, "https.zoom.us", "HTTPS", use_edns=0)
    rd = r.answer[0][0]
    assert rd.params[ParamKey.IPV4HINT].addresses == ("198.51.100.12",)
    assert rd.params[ParamKey.IPV6HINT].addresses == ("2001:db8:de::12",)
    out = dig(server.port, "+short", "https.zoom.us", "TYPE65", source=US_OFFICE)
    assert "203.0.113.12" in out and "198.51.100.12" in out


def _hints(r: dns.message.Message) -> set[str]:
    return {a for rrset in r.answer if rrset.rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB)
            for rd in rrset for key in (ParamKey.IPV4HINT, ParamKey.IPV6HINT)
            if key in rd.params for a in rd.params[key].addresses}


def test_service_bindings_and_real_zoom_ranges_make_non_zoom_names_zooms(setup):
    """Non-Zoom names made Zoom's by an HTTPS/SVCB target (de.zoom.us, hints nobody places), by a
    hint in Zoom's real US range, or by A/AAAA answers in Zoom's real ranges (no override)."""
    server, _, audit = setup
    for rdtype in ("HTTPS", "SVCB"):
        target = ask(server.port, "svc-target.customer.example", rdtype, use_edns=0)
        assert target.answer and _hints(target) == set()        # unknown: blocked
        hint = ask(server.port, "svc-hint.customer.example", rdtype, use_edns=0)
        assert _hints(hint) == {"192.0.2.61"}
        us = ask(server.port, "svc-hint.customer.example", rdtype, use_edns=0, source=US_OFFICE)
        assert _hints(us) == {"192.0.2.61", "3.21.137.130"}
    assert addresses(ask(server.port, "real.customer.example")) == {"159.124.47.249"}
    assert addresses(ask(server.port, "real.customer.example", source=INDIA)) == {
        "159.124.47.249", "115.114.115.7"}
    assert addresses(ask(server.port, "real.customer.example", source=US_OFFICE)) == {
        "159.124.47.249", "3.21.137.130"}
    six = ask(server.port, "real.customer.example", "AAAA")
    assert six.rcode() == dns.rcode.NXDOMAIN and not six.answer    # 2407:30c0::/32: unplaced
    lines = [x for x in audit_lines(audit) if x["dns_qname"] == "real.customer.example"
             and x["client"] == DEFAULT and x["dns_qtype"] == "A"]
    assert lines and sorted(lines[-1]["dns_dropped"]) == ["115.114.115.7", "3.21.137.130",
                                                          "4.34.125.130"]


def test_monitor_and_reroute_groups(setup):
    server, _, audit = setup
    assert addresses(ask(server.port, "us.zoom.us", source=WATCH)) == {"203.0.113.10"}
    assert addresses(ask(server.port, "us.zoom.us", source=DETOUR)) == {"198.51.100.10"}
    lines = audit_lines(audit)
    watch = [x for x in lines if x["client"] == WATCH and x["dns_qname"] == "us.zoom.us"]
    assert watch and watch[-1]["action"] == "monitor" and watch[-1]["would"] == "block"
    detour = [x for x in lines if x["client"] == DETOUR and x["dns_qname"] == "us.zoom.us"]
    assert detour and detour[-1]["dns_outcome"] == "reroute"
    assert detour[-1]["dns_reroute_to"] == "de.zoom.us" and detour[-1]["action"] == "reroute"


def test_audit_line_per_filtered_answer(setup):
    server, _, audit = setup
    # a non-Zoom name asked here, before the Zoom one: its answer must leave no line
    assert addresses(ask(server.port, "audit-free.plain.example.net")) == {"192.0.2.50"}
    ask(server.port, "in.zoom.us", source=DEFAULT)
    lines = [x for x in audit_lines(audit) if x["dns_qname"] == "in.zoom.us"]
    assert len(lines) == 1
    line = lines[0]
    assert line["front_end"] == "dns" and line["action"] == "block" and line["region"] == "IN"
    assert line["rule"] == "region-disallowed" and line["group"] == "default"
    assert line["evidence_source"] == "override" and line["policy_version"]
    assert line["dns_dropped"] == ["100.70.0.10"] and line["dns_kept"] == []
    assert not [x for x in audit_lines(audit) if x["dns_qname"] == "audit-free.plain.example.net"]


def test_cache_hits_and_negative_caching(setup):
    server, zone, _ = setup
    for _ in range(5):
        assert addresses(ask(server.port, "de.zoom.us", "AAAA", source=INDIA, use_edns=0)) == {
            "2001:db8:de::10"}
        # dig sends a fresh EDNS cookie each time: the raw-bytes cache misses, the answer cache hits
        assert dig(server.port, "+short", "de.zoom.us", "AAAA", source=INDIA).split() == ["2001:db8:de::10"]
    assert zone.count("de.zoom.us", "AAAA") == 1
    for _ in range(3):
        assert ask(server.port, "gone.zoom.us").rcode() == dns.rcode.NXDOMAIN
    assert zone.count("gone.zoom.us") == 1


def test_an_answer_keeps_the_spelling_and_flags_of_each_query(setup):
    """A query asked as the server asks upstream (RD, lower case) shares the cached answer; any
    other spelling or RD bit gets that answer re-addressed to it, from the cache too."""
    server, zone, _ = setup
    name = "spelling.wild.zoom.us"
    for spelled, flags in ((name, dns.flags.RD), (name.upper(), dns.flags.RD), (name, 0),
                           (name, dns.flags.RD), ("sPelling.WILD.zoom.us", 0)):
        q = dns.message.make_query(spelled, "A", flags=flags)
        r = dns.query.udp(q, "127.0.0.1", port=server.port, source=DEFAULT, timeout=10)
        assert r.id == q.id and r.question[0].name.to_text() == spelled + "."
        assert bool(r.flags & dns.flags.RD) == bool(flags) and r.flags & dns.flags.RA
        assert addresses(r) == {"198.51.100.40"}           # the US address filtered out
    assert zone.count(name) == 1


def test_cached_ttls_count_down(setup):
    server, _, _ = setup
    first = ask(server.port, "x1.wild.zoom.us", source=US_OFFICE)
    time.sleep(1.2)
    again = ask(server.port, "x1.wild.zoom.us", source=US_OFFICE)
    assert again.answer[0].ttl < first.answer[0].ttl <= 300


def test_truncated_upstream_answer_retried_over_tcp(setup):
    server, zone, _ = setup
    r = ask(server.port, "big.zoom.us", use_edns=0, payload=4096, source=US_OFFICE)
    assert len(addresses(r)) == 140
    assert zone.count("big.zoom.us") >= 2 and ("tcp", "big.zoom.us", "A") in zone.queries
    small = ask(server.port, "big.zoom.us", source=US_OFFICE)          # no EDNS: 512 bytes
    assert small.flags & dns.flags.TC and not small.answer
    tcp = ask(server.port, "big.zoom.us", source=DEFAULT, tcp=True)
    assert len(addresses(tcp)) == 40                                    # the DE ones only


def test_malformed_queries_get_formerr_or_nothing(setup):
    server, _, _ = setup
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    try:
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07broken", ("127.0.0.1", server.port))
        reply = s.recv(4096)
        assert reply[:2] == b"\x12\x34" and reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR
        s.sendto(b"\x01", ("127.0.0.1", server.port))          # no header: dropped
        s.sendto(dns.message.make_response(dns.message.make_query("a.zoom.us", "A")).to_wire(),
                 ("127.0.0.1", server.port))                    # a response: never answered
        good = dns.message.make_query("de.zoom.us", "A")
        s.sendto(good.to_wire(), ("127.0.0.1", server.port))
        assert dns.message.from_wire(s.recv(4096)).id == good.id   # the next reply is for it
    finally:
        s.close()


def _mutate(packet: bytes, rng: random.Random) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.7:
            data = data[:rng.randrange(len(data) + 1)]
        elif op < 0.9:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = os.urandom(rng.randint(1, 8))
        elif len(data) > 12:
            data[4:6] = rng.randrange(65536).to_bytes(2, "big")     # lie about counts
    return bytes(data)


def test_fuzz_100k_packets_then_still_correct(setup):
    server, _, _ = setup
    rng = random.Random(4)
    names = ["de.zoom.us", "multi.zoom.us", "chain.zoom.us", "https.zoom.us", "www.example.org",
             "a.wild.zoom.us", "big.zoom.us"]
    seeds = [dns.message.make_query(n, t, use_edns=e).to_wire()
             for n in names for t in ("A", "AAAA", "HTTPS") for e in (None, 0)]
    sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for i, s in enumerate(sources):
        s.bind((f"127.0.0.{i + 1}", 0))
        s.setblocking(False)
    target = ("127.0.0.1", server.port)
    sent = 0
    deadline = time.monotonic() + 150
    try:
        while sent < 100_000 and time.monotonic() < deadline:
            for _ in range(100):   # small bursts: a full socket buffer drops packets, by design
                r = rng.random()
                if r < 0.4:
                    packet = os.urandom(rng.randint(0, 120))
                elif r < 0.5:
                    packet = rng.choice(seeds)
                else:
                    packet = _mutate(rng.choice(seeds), rng)
                try:
                    rng.choice(sources).sendto(packet, target)
                except BlockingIOError:
                    pass
                sent += 1
            # one real query per batch: the server works through the batch before it answers
            for attempt in range(3):
                try:
                    ask(server.port, "de.zoom.us", timeout=5)
                    break
                except dns.exception.Timeout:
                    assert attempt < 2, "server stopped answering during the fuzz"
    finally:
        for s in sources:
            s.close()
    assert sent == 100_000, f"only {sent} packets within the time bound"
    assert server.proc.poll() is None, "".join(server.log)
    assert addresses(ask(server.port, "multi.zoom.us", source=DEFAULT)) == {"198.51.100.11"}
    assert addresses(ask(server.port, "multi.zoom.us", source=US_OFFICE)) == {"198.51.100.11", "203.0.113.11"}
    assert ask(server.port, "us.zoom.us").rcode() == dns.rcode.NXDOMAIN
    assert addresses(ask(server.port, "www.example.org", tcp=True)) == {"192.0.2.80"}
    assert "Traceback" not in "".join(server.log)


# --- bad upstreams, bad options -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dead", "garbage"])
def test_bad_upstream_gives_servfail_and_server_keeps_serving(tmp_path, mode):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    bad, good = ZoneServer(mode), ZoneServer()
    server = DnsProcess(policy, [bad.address], "--timeout", "1")
    both = DnsProcess(policy, [bad.address, good.address], "--timeout", "4")
    try:
        for name in ("de.zoom.us", "www.example.org"):
            r = ask(server.port, name, timeout=20)
            assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
        assert ask(server.port, "de.zoom.us", tcp=True, timeout=20).rcode() == dns.rcode.SERVFAIL
        # with a working second upstream the answer comes from it, still filtered
        assert addresses(ask(both.port, "multi.zoom.us", timeout=20)) == {"198.51.100.11"}
        assert server.proc.poll() is None and both.proc.poll() is None
    finally:
        server.close()
        both.close()
        bad.close()
        good.close()


def test_batched_audit_lines_arrive_soon_and_at_exit(tmp_path):
    """By default audit lines are written in batches: soon after the answer, and all of them
    when the server is stopped, even with a long interval."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    soon, late = tmp_path / "soon.jsonl", tmp_path / "late.jsonl"
    batched = DnsProcess(policy, [zone.address], audit=soon)
    slow = DnsProcess(policy, [zone.address], "--audit-flush-ms", "60000", audit=late)
    try:
        ask(batched.port, "in.zoom.us")
        deadline = time.monotonic() + 30
        while not audit_lines(soon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [x["dns_qname"] for x in audit_lines(soon)] == ["in.zoom.us"]
        for name in ("in.zoom.us", "us.zoom.us", "multi.zoom.us"):
            ask(slow.port, name)
        assert audit_lines(late) == []          # still queued
    finally:
        batched.close()
        slow.close()
        zone.close()
    assert slow.proc.returncode == 0
    assert [x["dns_qname"] for x in audit_lines(late)] == ["in.zoom.us", "us.zoom.us", "multi.zoom.us"]


def test_policy_reload_empties_the_cache(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address])
    try:
        assert addresses(ask(server.port, "multi.zoom.us")) == {"198.51.100.11"}
        policy.write_text(POLICY.replace("regions: {opt_in: [DE]}", "regions: {opt_in: [DE, US]}", 1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if addresses(ask(server.port, "multi.zoom.us")) == {"198.51.100.11", "203.0.113.11"}:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the changed policy was not applied")
        policy.write_text("version: 1\naccount: {type: paid}\n")    # invalid: keep the old one
        # the server's own word that it read the invalid file and kept the running policy
        deadline = time.monotonic() + 30
        while not any("not reloaded" in line for line in server.log):
            assert time.monotonic() < deadline, "the invalid policy was never read:\n" + "".join(server.log)
            time.sleep(0.1)
        refusal = "".join(server.log).split("not reloaded", 1)[1]
        assert str(policy) in refusal and "account.default_region: missing" in refusal
        assert addresses(ask(server.port, "multi.zoom.us")) == {"198.51.100.11", "203.0.113.11"}
        assert server.proc.poll() is None
    finally:
        server.close()
        zone.close()


@pytest.mark.parametrize("args, message", [
    (["--listen", "nonsense:port"], "--listen"),
    (["--listen", "nonsense"], "--listen: 'nonsense' is not an IP address"),
    (["--listen", "dns.example:5353"], "--listen: 'dns.example' is not an IP address"),
    (["--upstream", "dns.example"], "--upstream: 'dns.example' is not an IP address"),
    (["--upstream", "1.2.3.4:99999"], "--upstream"),
    (["--audit-flush-ms", "-5"], "--audit-flush-ms"),
    (["--listen", "127.0.0.1:5399", "--upstream", "127.0.0.1:5399"], "loop"),
    (["--policy", "/nonexistent/policy.yaml"], "file not found"),
])
def test_bad_options_are_clear_errors(args, message):
    out = subprocess.run([str(BIN / "regionguard"), "dns", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_busy_port_is_a_clear_error(setup, tmp_path):
    server, zone, _ = setup
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    out = subprocess.run([str(BIN / "regionguard"), "dns", "--policy", str(policy), "--listen",
                          f"127.0.0.1:{server.port}", "--upstream", zone.address],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "cannot listen" in out.stderr and "Traceback" not in out.stderr


def test_asyncio_loop_without_uvloop(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address], "--no-uvloop")
    try:
        assert addresses(ask(server.port, "multi.zoom.us")) == {"198.51.100.11"}
        assert addresses(ask(server.port, "multi.zoom.us", source=US_OFFICE, tcp=True)) == {
            "198.51.100.11", "203.0.113.11"}
        assert addresses(ask(server.port, "multi.zoom.us")) == {"198.51.100.11"}   # cache hit
        assert ask(server.port, "chain.zoom.us").rcode() == dns.rcode.NXDOMAIN
        assert zone.count("multi.zoom.us") == 2          # one per group, then from the cache
    finally:
        server.close()
        zone.close()


def test_two_names_rerouted_to_each_other_in_flight_at_once_both_answer(tmp_path):
    """A reroute's alternative is resolved without a second hop. When two names reroute to each
    other and both are asked at once, each alternative must be a lookup of its own, not a wait
    on the other name's rerouting miss (which waits on this one): both answer, promptly, and the
    names keep answering afterwards."""
    import concurrent.futures

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace(
        'reroute:\n  - {match: "*.zoom.us", to: de.zoom.us}\n',
        "reroute:\n  - {match: us.zoom.us, to: in.zoom.us}\n"
        "  - {match: in.zoom.us, to: us.zoom.us}\n"))
    zone = ZoneServer(delay=0.3)   # slow enough that both misses are in flight together
    # a long upstream timeout: a reroute waiting on the other one would stall for all of it
    server = DnsProcess(policy, [zone.address], "--timeout", "10")
    try:
        for rdtype in ("A", "AAAA"):   # AAAA: new misses, so nothing stayed stuck in flight
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                started = time.monotonic()
                replies = list(pool.map(lambda name, t=rdtype: ask(server.port, name, t,
                                                                   source=DETOUR, timeout=20),
                                        ["us.zoom.us", "in.zoom.us"]))
            assert time.monotonic() - started < 6, "a reroute waited on the other one"
            for reply in replies:   # the alternative is disallowed too: nothing is served
                assert addresses(reply) == set()
    finally:
        server.close()
        zone.close()
