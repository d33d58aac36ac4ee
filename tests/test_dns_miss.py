"""One cache miss as logic with no I/O (regionguard.dns.miss): what it asks upstream, and what
it makes of the bytes that come back. No sockets, no event loop: the test is the driver."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import pytest
from dns_support import POLICY, zone_answer

from regionguard.core.decision import Engine
from regionguard.core.policy import load_policy
from regionguard.dns.filter import AnswerFilter, Outcome
from regionguard.dns.miss import Answered, Miss, Reroute
from regionguard.dns.wire import CacheKey, UpstreamError, cache_key, parse_query


@pytest.fixture(scope="module")
def flt(tmp_path_factory):
    path = tmp_path_factory.mktemp("miss") / "policy.yaml"
    path.write_text(POLICY)
    return AnswerFilter(Engine(load_policy(path)))


def key_for(name: str, rdtype: str = "A", group: str = "default") -> CacheKey:
    pq = parse_query(dns.message.make_query(name, rdtype).to_wire())
    assert pq is not None
    return cache_key(group, pq)


def upstream_answer(miss: Miss) -> bytes:
    """What the zone's resolver answers to the miss's own query (the ID as sent: 0)."""
    return zone_answer(dns.message.from_wire(miss.query)).to_wire()


def addresses(wire: bytes) -> set[str]:
    return {rd.address for s in dns.message.from_wire(wire).answer if s.rdtype in (1, 28)
            for rd in s}


def test_the_upstream_query_asks_the_keys_question_with_rd_and_no_edns(flt):
    miss = Miss(flt, key_for("De.Zoom.US"), "127.0.0.1", "test")
    q = dns.message.from_wire(miss.query)
    assert q.question[0].name.to_text() == "de.zoom.us." and q.id == 0
    assert q.flags & dns.flags.RD and q.edns < 0


def test_a_zoom_answer_is_filtered_at_the_byte_level(flt):
    miss = Miss(flt, key_for("multi.zoom.us"), "127.0.0.1", "test")
    step = miss.received(upstream_answer(miss))
    assert isinstance(step, Answered)
    assert addresses(step.wire) == {"198.51.100.11"}            # the US one cut out
    assert step.result.zoom and step.result.outcome is Outcome.FILTERED
    assert step.fields is not None and step.ttl > 0 and step.qname == "multi.zoom.us"


def test_a_non_zoom_answer_is_passed_untouched(flt):
    miss = Miss(flt, key_for("www.example.org"), "127.0.0.1", "test")
    data = upstream_answer(miss)
    step = miss.received(data)
    assert isinstance(step, Answered) and step.wire is data
    assert not step.result.zoom and step.result.outcome is Outcome.PASS


def test_an_answer_with_nothing_allowed_is_replaced_by_the_block_answer(flt):
    miss = Miss(flt, key_for("us.zoom.us"), "127.0.0.1", "test")
    step = miss.received(upstream_answer(miss))
    assert isinstance(step, Answered) and step.result.outcome is Outcome.BLOCKED
    assert dns.message.from_wire(step.wire).rcode() == dns.rcode.NXDOMAIN


def test_a_reroute_says_which_key_to_resolve_then_answers_with_its_addresses(flt):
    miss = Miss(flt, key_for("us.zoom.us", group="detour"), "127.0.0.4", "test")
    step = miss.received(upstream_answer(miss))
    assert step == Reroute(key_for("de.zoom.us", group="detour"))
    alternative = Miss(flt, step.key, "127.0.0.4", "test", reroutes=False)
    found = alternative.received(upstream_answer(alternative))
    assert isinstance(found, Answered)
    done = miss.rerouted(found.wire)
    assert addresses(done.wire) == {"198.51.100.10"} and done.result.outcome is Outcome.REROUTE
    assert dns.message.from_wire(done.wire).question[0].name.to_text() == "us.zoom.us."


def test_a_reroute_without_an_alternative_answer_is_blocked(flt):
    miss = Miss(flt, key_for("us.zoom.us", group="detour"), "127.0.0.4", "test")
    assert isinstance(miss.received(upstream_answer(miss)), Reroute)
    done = miss.rerouted(None)
    assert done.result.outcome is Outcome.BLOCKED
    assert dns.message.from_wire(done.wire).rcode() == dns.rcode.NXDOMAIN


def test_an_alternative_is_not_rerouted_again(flt):
    miss = Miss(flt, key_for("us.zoom.us", group="detour"), "127.0.0.4", "test", reroutes=False)
    step = miss.received(upstream_answer(miss))
    assert isinstance(step, Answered) and step.result.outcome is Outcome.BLOCKED


def test_an_alternatives_own_reroute_is_blocked_and_marked_not_to_be_cached(flt):
    """us.zoom.us, asked as another name's alternative, would reroute again: cut short, it is
    the block answer, and no answer for us.zoom.us's own askers (their miss reroutes)."""
    alternative = Miss(flt, key_for("us.zoom.us", group="detour"), "127.0.0.4", "test",
                       reroutes=False)
    alternative.received(upstream_answer(alternative))
    assert alternative.cut_short
    own = Miss(flt, key_for("us.zoom.us", group="detour"), "127.0.0.4", "test")
    assert isinstance(own.received(upstream_answer(own)), Reroute) and not own.cut_short


def test_an_alternative_that_is_itself_blocked_counts_as_none(tmp_path):
    """With the block answer 0.0.0.0, an alternative blocked for the client answers 0.0.0.0:
    that is no alternative, fresh or cached (bytes alone), so the answer is blocked."""
    path = tmp_path / "zero.yaml"
    path.write_text(POLICY.replace("to: de.zoom.us", "to: us.zoom.us")
                    + "dns: {block_answer: zero}\n")
    zero = AnswerFilter(Engine(load_policy(path)))
    miss = Miss(zero, key_for("in.zoom.us", group="detour"), "127.0.0.4", "test")
    step = miss.received(upstream_answer(miss))
    assert step == Reroute(key_for("us.zoom.us", group="detour"))
    alternative = Miss(zero, step.key, "127.0.0.4", "test", reroutes=False)
    found = alternative.received(upstream_answer(alternative))
    assert isinstance(found, Answered) and addresses(found.wire) == {"0.0.0.0"}
    done = miss.rerouted(found.wire)
    assert done.result.outcome is Outcome.BLOCKED and addresses(done.wire) == {"0.0.0.0"}
    assert dns.message.from_wire(done.wire).question[0].name.to_text() == "in.zoom.us."


def test_an_answer_nobody_can_read_is_an_upstream_error(flt):
    miss = Miss(flt, key_for("de.zoom.us"), "127.0.0.1", "test")
    garbage = upstream_answer(miss)[:12] + b"\x02de\x04zoom\x02us\x00\x00\x01\x00\x01\xff\xff"
    with pytest.raises(UpstreamError, match="garbage answer"):
        miss.received(garbage)
