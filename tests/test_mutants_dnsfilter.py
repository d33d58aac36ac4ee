"""Mutants of regionguard/dns/filter.py that no in-process test noticed (tools/mutation.py), caught
here. The DNS front ends' own tests (tests/test_dns_failclosed.py) check these paths through
processes, which a mutant in this process never reaches; these check the filter itself.

- An IPv6 answer that embeds an IPv4 address (::ffff:a.b.c.d, 64:ff9b::a.b.c.d) is decided as
  that IPv4 address too, for the client that asked: a filter that skipped it would hand a client
  a disallowed data center by its IPv6 spelling.
- An answer the filter cannot read is blocked and audited as what it is, a Zoom block for the
  name asked, so the audit log and the front end's fail-closed handling see a block.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest
from dns_support import POLICY

from regionguard.core.decision import Action, Engine
from regionguard.core.policy import load_policy
from regionguard.dns.filter import AnswerFilter

DEFAULT_CLIENT, US_OFFICE = "127.0.0.1", "127.0.0.2"   # dns_support.POLICY: us-office opts in US
# as dnspython writes them: ::ffff:203.0.113.9 (US), 64:ff9b::100.70.0.9 (IN), DE
US_MAPPED, IN_NAT64, DE_V6 = "::ffff:203.0.113.9", "64:ff9b::6446:9", "2001:db8:de::9"


@pytest.fixture(scope="module")
def flt(tmp_path_factory) -> AnswerFilter:
    path = tmp_path_factory.mktemp("mutants-dns") / "policy.yaml"
    path.write_text(POLICY)
    return AnswerFilter(Engine(load_policy(path)))


def aaaa_answer(name: str, *addresses: str) -> tuple[dns.message.Message, dns.message.Message]:
    query = dns.message.make_query(name, "AAAA")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "AAAA", *addresses))
    return query, response


def kept(response: dns.message.Message) -> set[str]:
    return {rd.address for rrset in response.answer if rrset.rdtype == 28 for rd in rrset}


def test_an_embedded_ipv4_address_is_decided_for_the_client_that_asked(flt):
    query, response = aaaa_answer("embed.zoom.us.", US_MAPPED, IN_NAT64, DE_V6)
    r = flt.filter(DEFAULT_CLIENT, query, response)
    assert r.outcome == "filtered" and kept(r.message) == {DE_V6}
    assert sorted(r.dropped) == sorted([US_MAPPED, IN_NAT64]) and r.kept == [DE_V6]
    by_address = {d.address: d for d in r.decisions}
    assert by_address[US_MAPPED].action is Action.BLOCK and by_address[US_MAPPED].region == "US"
    assert by_address[IN_NAT64].action is Action.BLOCK
    assert r.hosts == ["embed.zoom.us"] * 3
    # the US office may use the US data center, in its IPv4-mapped spelling too
    query, response = aaaa_answer("embed2.zoom.us.", US_MAPPED, IN_NAT64, DE_V6)
    r = flt.filter(US_OFFICE, query, response)
    assert kept(r.message) == {US_MAPPED, DE_V6} and r.dropped == [IN_NAT64]
    assert {d.group for d in r.decisions} == {"us-office"}


def test_an_embedded_ipv4_address_under_another_name_is_still_decided(flt):
    # a name that is not Zoom's, answering with a Zoom data center's address in IPv6 forms
    us_nat64 = "64:ff9b::cb00:7109"                       # 64:ff9b::203.0.113.9
    query, response = aaaa_answer("innocent.example.net.", US_MAPPED, us_nat64)
    r = flt.filter(DEFAULT_CLIENT, query, response)
    assert r.zoom and kept(r.message) == set() and sorted(r.dropped) == sorted([US_MAPPED, us_nat64])


def test_an_unreadable_answer_is_a_zoom_block_for_the_name_asked(flt):
    query = dns.message.make_query("x.cn.zoom.us", "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("x.cn.zoom.us.", 300, "IN", "A", "198.51.100.9"))
    # a record of class CH: dnspython reads a name and a 16-bit address, not the 4 bytes a client would
    response.additional.append(dns.rrset.from_text("o.example.net.", 300, "CH", "A", "ch.example. 1234"))
    r = flt.filter(DEFAULT_CLIENT, query, response)
    assert (r.outcome, r.zoom, r.name) == ("blocked", True, "x.cn.zoom.us")
    assert r.message.rcode() == dns.rcode.NXDOMAIN and not r.message.answer
    assert r.hosts == ["x.cn.zoom.us"]
    d = r.audit_decision()
    assert (d.action, d.rule, d.zoom, d.host, d.port, d.transport, d.client) == \
        (Action.BLOCK, "unreadable-answer", True, "x.cn.zoom.us", 443, "tcp", DEFAULT_CLIENT)
    assert d.reason == "the answer holds address records the filter cannot read: fail closed"
    assert d.policy_version == flt.engine.policy.version_id and d.policy_version
    assert r.audit_extra()["dns_outcome"] == "blocked"


# --- the stricter of the two decisions stands, on the message path and the wire path ---------------

# An IPv6 network the policy places in DE whose embedded IPv4 addresses are US data centers:
# the IPv6 address alone would be allowed, the IPv4 one it carries is not.
NAT64_OF_US = "64:ff9b::cb00:7109"                        # 64:ff9b::203.0.113.9


@pytest.fixture(scope="module")
def nat64_flt(tmp_path_factory) -> AnswerFilter:
    path = tmp_path_factory.mktemp("mutants-dns-nat64") / "policy.yaml"
    path.write_text(POLICY.replace(
        "overrides:\n", 'overrides:\n  - {match: "64:ff9b::cb00:7100/120", region: DE, zoom: true}\n'))
    return AnswerFilter(Engine(load_policy(path)))


def both_paths(flt: AnswerFilter, client: str, name: str, *addresses: str):
    """(message-path result, wire-path result) for an AAAA answer."""
    from regionguard.dns.wire import scan_response
    query, response = aaaa_answer(name + ".", *addresses)
    scan = scan_response(response.to_wire())
    assert scan is not None
    fast = flt.filter_scan(client, name, 28, scan)
    slow = flt.filter(client, query, response)
    return slow, fast


@pytest.mark.parametrize("name", ["nat64.zoom.us", "innocent.example.net"])
def test_an_allowed_ipv6_address_carrying_a_disallowed_ipv4_one_is_dropped(nat64_flt, name):
    slow, fast = both_paths(nat64_flt, DEFAULT_CLIENT, name, NAT64_OF_US, DE_V6)
    for r in (slow, fast):
        assert r.dropped == [NAT64_OF_US] and r.kept == [DE_V6], r
        assert sorted((d.action.value, d.region, d.client) for d in r.decisions) == \
            [("allow", "DE", DEFAULT_CLIENT), ("block", "US", DEFAULT_CLIENT)], r.decisions
        assert r.audit_decision().action is Action.BLOCK
    assert kept(slow.message) == {DE_V6}
    # for the US office both are allowed, and the wire path decides for that client too
    for r in both_paths(nat64_flt, US_OFFICE, name, NAT64_OF_US, DE_V6):
        assert sorted(r.kept) == sorted([NAT64_OF_US, DE_V6]) and r.dropped == [], r
        assert {d.group for d in r.decisions} == {"us-office"}


def test_a_monitored_embedded_address_is_recorded_as_monitored(nat64_flt):
    # dns_support.POLICY's group `watch` (127.0.0.3) monitors what it would block: the address
    # stays, and the decision that stands says it would be blocked
    for r in both_paths(nat64_flt, "127.0.0.3", "watched.zoom.us", NAT64_OF_US):
        assert r.kept == [NAT64_OF_US] and len(r.decisions) == 1
        d = r.decisions[0]
        assert (d.action, d.would, d.region) == (Action.MONITOR, Action.BLOCK, "US"), d
