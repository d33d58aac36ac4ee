"""The DNS addon's (regionguard.mitm.dns_filter) error handlers, in-process (mitmproxy.test.taddons and tflow): when
the filter itself fails, a Zoom answer becomes SERVFAIL and never goes out unfiltered; a non-Zoom
answer is left as it is. mitmproxy logs an exception a hook raises and sends the flow on as it
is, so these handlers are all that stands between a bug and an unfiltered Zoom answer.

Failures are made where they could really happen: the learned-evidence store failing as the
answer is observed (sqlite: disk I/O error), the policy watcher failing as the policy is looked
up, and an answer whose records cannot be read."""

from __future__ import annotations

import asyncio
import sqlite3

import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from dns_support import POLICY, zone_answer
from mitmproxy import dns as mdns
from mitmproxy.test import taddons, tflow

from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.core.learned import LearnedStore
from regionguard.mitm import dns_filter as dns_filter_addon

ADDON = dns_filter_addon


class FailingStore(LearnedStore):
    """A learned-evidence store whose database fails as an answer is recorded."""

    def __init__(self) -> None:
        super().__init__(None)
        self.calls = 0

    def observe_message(self, response, source: str) -> int:
        self.calls += 1
        raise sqlite3.OperationalError("disk I/O error")


class FailingWatcher(EngineHolder):
    """A policy holder whose look for changes fails (a bug in the watcher)."""

    def check_soon(self) -> None:
        raise RuntimeError("policy watcher broke")


def flow(name: str, rdtype: str = "A"):
    """A DNS flow from 127.0.0.1 (the default group: DE only) with the test zone's answer."""
    query = dns.message.make_query(name, rdtype)
    return tflow.tdnsflow(req=mdns.DNSMessage.unpack(query.to_wire()),
                          resp=mdns.DNSMessage.unpack(zone_answer(query).to_wire()))


def addresses(f) -> set[str]:
    return {str(rr.ipv4_address if rr.type == 1 else rr.ipv6_address)
            for rr in f.response.answers if rr.type in (1, 28)}


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _run(addon, policy, f, hook: str = "dns_response", *more):
    """Hooks on flows, in one mitmproxy test context (its master and log handler on this one
    event loop): `addon.hook(f)`, then each further (addon, flow, hook) of `more`."""
    async def go():
        with taddons.context() as tctx:
            tctx.options.set(f"regionguard_policy={policy}", defer=True)
            for a, fl, h in [(addon, f, hook), *more]:
                if h == "dns_request":
                    a.dns_request(fl)
                else:
                    await a.dns_response(fl)
    asyncio.run(go())
    return f


# Zoom's by its name; by a CNAME into Zoom's domains; by addresses in Zoom's ranges only.
ZOOM_ANSWERS = ["multi.zoom.us", "meet.customer.example", "rangeonly.example.net"]


def test_the_working_filter_drops_what_these_answers_must_lose(policy):
    """The baseline the failures are measured against: each Zoom answer holds a disallowed
    address that the filter, working, takes out."""
    addon = ADDON.DnsFilter()
    assert addresses(_run(addon, policy, flow("multi.zoom.us"))) == {"198.51.100.11"}
    assert addresses(_run(addon, policy, flow("rangeonly.example.net"))) == {"198.51.100.30"}
    assert addresses(_run(addon, policy, flow("www.example.org"))) == {"192.0.2.80"}


@pytest.mark.parametrize("name", ZOOM_ANSWERS)
def test_a_failing_learned_store_turns_zoom_answers_into_servfail(policy, caplog, name):
    store = FailingStore()
    addon = ADDON.DnsFilter()
    addon._holder = EngineHolder(policy, learned=store)   # the addon's own policy, this store
    f = _run(addon, policy, flow(name))
    assert store.calls == 1, "the failure was not reached"
    assert f.response.response_code == dns.rcode.SERVFAIL and not f.response.answers
    assert "regionguard dns: filtering failed" in caplog.text and "disk I/O error" in caplog.text


def test_a_failing_learned_store_leaves_non_zoom_answers_alone(policy):
    store = FailingStore()
    addon = ADDON.DnsFilter()
    addon._holder = EngineHolder(policy, learned=store)
    f = flow("www.example.org")
    before = f.response.packed
    _run(addon, policy, f)
    assert store.calls == 1 and f.response.packed == before


@pytest.mark.parametrize("name", ["multi.zoom.us", "meet.customer.example",
                                  "real.customer.example", "www.example.org"])
def test_a_failing_policy_lookup_servfails_queries_and_zoom_answers(policy, caplog, name):
    """The policy cannot even be looked up (its watcher raises): a query is answered SERVFAIL
    before it goes upstream (without a policy nothing tells a Zoom query from another); an answer
    that arrives anyway is SERVFAIL when it is Zoom's by domain or published range (no policy:
    its overrides are not known), untouched when not."""
    asking, answering = ADDON.DnsFilter(), ADDON.DnsFilter()
    asking._holder = FailingWatcher(policy)
    answering._holder = FailingWatcher(policy)
    request_flow = flow(name)
    request_flow.response = None
    f = flow(name)
    before = f.response.packed
    _run(asking, policy, request_flow, "dns_request", (answering, f, "dns_response"))
    assert request_flow.response is not None
    assert request_flow.response.response_code == dns.rcode.SERVFAIL
    assert "dns_request failed" in caplog.text and "policy watcher broke" in caplog.text
    assert "filtering failed" in caplog.text
    if name == "www.example.org":
        assert f.response.packed == before
    else:
        assert f.response.response_code == dns.rcode.SERVFAIL and not f.response.answers


class _Unreadable:
    """A record mitmproxy holds that cannot be read or packed (as a bug would leave it)."""

    @property
    def name(self):
        raise ValueError("unreadable record")

    def __getattr__(self, attr):
        raise ValueError("unreadable record")


def test_an_answer_that_cannot_be_read_is_taken_for_zooms(policy):
    """www.example.org asked, but its answer holds a record that cannot be read: filtering fails,
    and since nothing proves the record is not Zoom's, SERVFAIL."""
    addon = ADDON.DnsFilter()
    f = flow("www.example.org")
    f.response.answers.append(_Unreadable())
    _run(addon, policy, f)
    assert f.response.response_code == dns.rcode.SERVFAIL and not f.response.answers


def _with_dotted_label(f, address: str):
    """The flow's answer, with a record mitmproxy reads but cannot pack again: its owner name
    holds a label with a dot in it (as a mutated upstream answer can), so `packed` raises."""
    query = dns.message.from_wire(f.request.packed)
    answer = zone_answer(query)
    name = dns.name.Name((b"p77", b"plain", b"example.", b"net", b""))
    answer.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
    f.response = mdns.DNSMessage.unpack(answer.to_wire())
    with pytest.raises(ValueError):
        _ = f.response.packed
    return f


def test_an_answer_mitmproxy_cannot_pack_with_a_zoom_address_is_servfail(policy, caplog):
    """An address of Zoom's (US, not allowed) under a name mitmproxy cannot pack again: the answer
    cannot be read, it might be Zoom's, so SERVFAIL, said in a warning, not a traceback."""
    f = _with_dotted_label(flow("p77.plain.example.net"), "203.0.113.77")
    _run(ADDON.DnsFilter(), policy, f)
    assert f.response.response_code == dns.rcode.SERVFAIL and not f.response.answers
    assert "cannot be read" in caplog.text and "Traceback" not in caplog.text


def test_an_answer_mitmproxy_cannot_pack_with_nothing_of_zooms_is_left_alone(policy, caplog):
    """The same broken name with a documentation address: nothing of Zoom's, so the addon leaves
    it to mitmproxy as it came, and logs no failure of its own."""
    f = _with_dotted_label(flow("p77.plain.example.net"), "192.0.2.77")
    before = list(f.response.answers)
    _run(ADDON.DnsFilter(), policy, f)
    assert f.response.answers == before
    assert "filtering failed" not in caplog.text and "Traceback" not in caplog.text
