"""The mitmproxy DNS addon's answer hook (regionguard.mitm.dns_filter.DnsFilter.dns_response),
in process (mitmproxy.test.taddons, tflow), beside the policy addon that gives it its policy and
audit log: a Zoom answer loses its disallowed addresses, a reroute is answered with the
alternative's allowed addresses (asked of the policy's resolver, the test upstream), a non-Zoom
answer goes on untouched, and each Zoom answer leaves one audit line.

Then the same answers through `regionguard dns` (in process, over a real socket) and through
the addon: the same answer, outcome and audit line, also when the reroute's alternative is
itself blocked, and when the server takes that alternative from its answer cache. The error
paths are test_dns_addon_failclosed.py's; end to end through mitmdump, test_dns_addon.py's."""

from __future__ import annotations

import asyncio
import json

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from dns_support import POLICY, ZoneServer, addresses, zone_answer
from mitmproxy import dns as mdns
from mitmproxy.test import taddons, tflow

from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.dns.server import Config, DnsServer
from regionguard.mitm.dns_filter import DnsFilter
from regionguard.mitm.policy_loader import PolicyLoader

DEFAULT, DETOUR = "127.0.0.1", "127.0.0.4"   # DE only; reroutes what it may not reach
# An answer's audit line as both front ends write it (not when, nor which front end's mode).
SAME = ("action", "rule", "host", "client", "region", "dns_qname", "dns_qtype", "dns_client",
        "dns_outcome", "dns_kept", "dns_dropped", "dns_reroute_to")
# The reroute's alternative is itself blocked for DETOUR (US), and the block answer is
# 0.0.0.0: those addresses are no alternative, so the answer is the block answer, outcome blocked.
ALTERNATIVE_BLOCKED = (POLICY.replace("to: de.zoom.us", "to: us.zoom.us")
                       + "dns: {block_answer: zero}\n")


@pytest.fixture(scope="module")
def zone():
    z = ZoneServer()
    yield z
    z.close()


def with_resolver(text: str, zone: ZoneServer) -> str:
    """The policy, with the test upstream as its resolver (the addon asks it for alternatives)."""
    return text + f'resolver: {{nameservers: ["127.0.0.1:{zone.port}"], timeout: 2}}\n'


def audit_lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def through_addon(tmp_path, policy_text: str, asks: list[tuple[str, str, str]]):
    """Each (name, type, client) asked through the addon: the upstream's answer (the test zone)
    given to `dns_response` as mitmproxy hands it over. (the flows, the audit lines)."""
    policy, audit = tmp_path / "addon-policy.yaml", tmp_path / "addon-audit.jsonl"
    policy.write_text(policy_text)
    flows = []

    async def go():
        loader = PolicyLoader()
        with taddons.context(loader) as tctx:
            addon = DnsFilter()
            tctx.master.addons.add(addon)
            tctx.configure(loader, regionguard_policy=str(policy), regionguard_audit=str(audit),
                           regionguard_audit_flush_ms=0, regionguard_state_dir=str(tmp_path))
            for name, rdtype, client in asks:
                query = dns.message.make_query(name, rdtype)
                f = tflow.tdnsflow(req=mdns.DNSMessage.unpack(query.to_wire()),
                                   resp=mdns.DNSMessage.unpack(zone_answer(query).to_wire()))
                f.client_conn.peername = (client, 40000)
                await addon.dns_response(f)
                flows.append(f)
            loader.done()   # writes what is queued

    asyncio.run(go())
    return flows, audit_lines(audit)


def through_server(tmp_path, zone: ZoneServer, policy_text: str,
                   asks: list[tuple[str, str, str]]):
    """Each (name, type, client) asked of `regionguard dns` over UDP, upstream the test zone:
    (the answers, the audit lines)."""
    policy, audit = tmp_path / "server-policy.yaml", tmp_path / "server-audit.jsonl"
    policy.write_text(policy_text)
    answers = []

    async def go():
        server = DnsServer(EngineHolder(policy), Config(
            ("127.0.0.1", 0), (("127.0.0.1", zone.port),), 2.0, 1 << 20, str(audit),
            tcp=False, audit_flush=0))
        host, port = await server.start()
        try:
            for name, rdtype, client in asks:
                answers.append(await dns.asyncquery.udp(dns.message.make_query(name, rdtype),
                                                        host, port=port, source=client,
                                                        timeout=5))
        finally:
            await server.close()

    asyncio.run(go())
    return answers, audit_lines(audit)


def answer_of(f) -> dns.message.Message:
    return dns.message.from_wire(f.response.packed)


def same(line: dict) -> dict:
    return {k: line.get(k) for k in SAME}


# --- dns_response, hook by hook --------------------------------------------------------------


def test_a_zoom_answer_loses_its_disallowed_addresses_and_leaves_one_audit_line(tmp_path, zone):
    (f,), lines = through_addon(tmp_path, with_resolver(POLICY, zone),
                                [("multi.zoom.us", "A", DEFAULT)])
    assert addresses(answer_of(f)) == {"198.51.100.11"}
    assert answer_of(f).id == f.request.id
    (line,) = lines
    assert line["dns_outcome"] == "filtered" and line["action"] == "block"
    assert line["dns_qname"] == "multi.zoom.us" and line["dns_client"] == DEFAULT
    assert "198.51.100.11" in line["dns_kept"] and "203.0.113.11" in line["dns_dropped"]


def test_a_reroute_answers_with_the_alternatives_allowed_addresses(tmp_path, zone):
    (four, six), lines = through_addon(tmp_path, with_resolver(POLICY, zone),
                                       [("us.zoom.us", "A", DETOUR), ("us.zoom.us", "AAAA", DETOUR)])
    assert addresses(answer_of(four)) == {"198.51.100.10"}
    assert addresses(answer_of(six)) == {"2001:db8:de::10"}   # asked with the type asked
    assert answer_of(four).question[0].name.to_text() == "us.zoom.us."
    # one line per answer, none for the alternative (de.zoom.us) on its own
    assert [(x["dns_qname"], x["dns_qtype"], x["dns_outcome"], x["dns_reroute_to"])
            for x in lines] == [("us.zoom.us", "A", "reroute", "de.zoom.us"),
                                ("us.zoom.us", "AAAA", "reroute", "de.zoom.us")]


def test_an_answer_with_nothing_allowed_is_the_block_answer(tmp_path, zone):
    (f,), lines = through_addon(tmp_path, with_resolver(POLICY, zone),
                                [("us.zoom.us", "A", DEFAULT)])
    assert answer_of(f).rcode() == dns.rcode.NXDOMAIN and not answer_of(f).answer
    assert [(x["dns_outcome"], x["action"]) for x in lines] == [("blocked", "block")]


def test_allowed_and_non_zoom_answers_go_on_as_they_came(tmp_path, zone):
    asks = [("de.zoom.us", "A", DEFAULT), ("www.example.org", "A", DEFAULT)]
    flows, lines = through_addon(tmp_path, with_resolver(POLICY, zone), asks)
    for (name, rdtype, _), f in zip(asks, flows, strict=True):
        upstream = zone_answer(dns.message.make_query(name, rdtype))
        upstream.id = f.request.id
        assert f.response.packed == mdns.DNSMessage.unpack(upstream.to_wire()).packed, name
    assert [(x["dns_qname"], x["dns_outcome"]) for x in lines] == [("de.zoom.us", "allowed")]


# --- the server and the addon agree ----------------------------------------------------------


@pytest.mark.parametrize("asks, policy_text", [
    pytest.param([("us.zoom.us", "A", DETOUR)], POLICY, id="reroute"),
    pytest.param([("rangeonly.example.net", "A", DEFAULT)], POLICY, id="filtered"),   # one dropped
    pytest.param([("in.zoom.us", "A", DETOUR)], ALTERNATIVE_BLOCKED, id="alternative-blocked"),
    # the alternative's own name asked first: the server takes the alternative from its cache
    pytest.param([("us.zoom.us", "A", DETOUR), ("in.zoom.us", "A", DETOUR)], ALTERNATIVE_BLOCKED,
                 id="alternative-blocked-cached"),
])
def test_the_server_and_the_addon_give_the_same_answer_outcome_and_audit_line(
        tmp_path, zone, asks, policy_text):
    text = with_resolver(policy_text, zone)
    flows, addon_lines = through_addon(tmp_path, text, asks)
    asked_before = zone.count("us.zoom.us")
    answers, server_lines = through_server(tmp_path, zone, text, asks)
    if len(asks) == 2:   # the alternative came from the server's cache: asked upstream once
        assert zone.count("us.zoom.us") - asked_before == 1
    for f, answer in zip(flows, answers, strict=True):
        by_addon = answer_of(f)
        assert (by_addon.rcode(), by_addon.answer) == (answer.rcode(), answer.answer)
    assert [same(x) for x in addon_lines] == [same(x) for x in server_lines]
    assert len(server_lines) == len(asks)     # no line of its own for a reroute's alternative
    if policy_text is ALTERNATIVE_BLOCKED:
        assert addresses(answers[-1]) == {"0.0.0.0"}
        assert server_lines[-1]["dns_outcome"] == "blocked"


def test_an_alternatives_own_reroute_is_no_answer_for_that_names_own_askers(tmp_path, zone):
    """in.zoom.us reroutes to us.zoom.us, which would reroute again (no second hop): in.zoom.us
    is blocked. us.zoom.us asked next by the same group reroutes as its own answer, to de.zoom.us,
    rather than getting the alternative's cut-short block answer from the cache."""
    text = with_resolver(POLICY.replace('reroute:\n', 'reroute:\n  - {match: in.zoom.us, to: us.zoom.us}\n'),
                         zone)
    asks = [("in.zoom.us", "A", DETOUR), ("us.zoom.us", "A", DETOUR)]
    (first, second), lines = through_server(tmp_path, zone, text, asks)
    assert first.rcode() == dns.rcode.NXDOMAIN and not first.answer
    assert addresses(second) == {"198.51.100.10"}
    assert [(x["dns_qname"], x["dns_outcome"]) for x in lines] == [("in.zoom.us", "blocked"),
                                                                   ("us.zoom.us", "reroute")]
    flows, addon_lines = through_addon(tmp_path, text, asks)
    assert [addresses(answer_of(f)) for f in flows] == [set(), {"198.51.100.10"}]
    assert [same(x) for x in addon_lines] == [same(x) for x in lines]
