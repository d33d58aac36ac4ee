"""One miss of a DNS answer, as logic with no I/O: the one implementation of what happens to an
upstream's answer, for `regionguard dns` and the mitmproxy DNS addon alike.

Like dnspython's resolver `_Resolution`, a `Miss` says what to do and leaves the doing to its
drivers: regionguard.dns.server (the one miss path for UDP and TCP) and
regionguard.mitm.dns_filter (an answer mitmproxy's upstream gave):

    miss = Miss(answer_filter, key, client, learned_source)
    send miss.query upstream (the ID is the driver's)
    step = miss.received(answer bytes)        # Answered, or Reroute (the addon: received_message)
    if Reroute: resolve step.key as a miss of its own (reroutes=False), then
        step = miss.rerouted(its answer bytes, or None)
    server: cache step.wire for step.ttl seconds (not when `cut_short`); both: audit step.result
    when it is Zoom's, unless the miss is a reroute's alternative (reroutes=False): the client
    got no answer for that name, and the rerouted answer's record names it (dns_reroute_to)

`received` filters at the byte level when it can (non-Zoom: untouched; Zoom: disallowed records
cut out) and with dnspython when it cannot (records the wire scan does not read, an answer to
replace, or records to cut that compression pointers still need). Raises UpstreamError for an
answer nobody can read; the driver answers SERVFAIL. Observing the upstream's answer in the
learned store (regionguard/core/learned.py), the alternative's too, is the one side effect: the
engine's own state.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import dns.message
import dns.name

from regionguard.dns.filter import AnswerFilter, FilterResult, Outcome, cache_ttl
from regionguard.dns.wire import (
    CacheKey,
    Scan,
    UpstreamError,
    remove_records,
    scan_response,
    scan_ttls,
    upstream_query,
    wire_name,
)

_tuple_new = tuple.__new__   # builds a NamedTuple in C (see wire._tuple_new)


class Answered(NamedTuple):
    """The miss's answer: what to cache under its key, for how long, and what to audit."""

    wire: bytes            # the filtered answer (ID and question spelling: the upstream's)
    ttl: int
    fields: tuple[tuple[int, ...], tuple[int, ...]] | None   # wire.ttl_fields(wire), when known
    result: FilterResult
    qname: str             # the question's name, lower-case dotted (for the audit record)


class Reroute(NamedTuple):
    """The answer is to be the policy's alternative: resolve this key, then `Miss.rerouted`."""

    key: CacheKey


class Miss:
    """A miss for `key`, asked by `client`: the server's cache miss, or the answer mitmproxy's
    upstream gave the addon. `waiters` and `exchange` are the server's: whoever waits for the
    answer, and the upstream exchange under way."""

    __slots__ = ("filter", "key", "client", "source", "reroutes", "query", "asked", "cut_short",
                 "waiters", "exchange", "_rerouting")

    def __init__(self, answer_filter: AnswerFilter, key: CacheKey, client: str | None,
                 source: str, reroutes: bool = True,
                 asked: dns.message.Message | None = None) -> None:
        self.filter = answer_filter
        self.key = key
        self.client = client
        self.source = source          # how the learned store names where the answer came from
        self.reroutes = reroutes      # False for a reroute's alternative: no second hop
        self.query = upstream_query(key)
        # The question the answer is filtered and built for: the client's own query (the addon),
        # else our upstream query, parsed only when an answer takes the dnspython way.
        self.asked = asked
        self.cut_short = False        # an alternative's own reroute, answered with the block answer
        self.waiters: list[Any] = []
        self.exchange: Any = None
        self._rerouting: FilterResult | None = None

    def received(self, data: bytes) -> Answered | Reroute:
        """The upstream answered `data` (checked to answer our question)."""
        key = self.key
        flt = self.filter
        if key.qclass == 1:   # the wire scan reads IN's records only
            scan = scan_response(data)
            if scan is not None:
                self._observe(scan, None)   # before the filter: the answer may place itself
                # scan.qname: the upstream's echo of our question, checked equal (case aside)
                result = flt.filter_scan(self.client, scan.qname, key.qtype, scan)
                if result is not None:   # None: an answer to replace (block or reroute)
                    canonical = remove_records(data, scan, result.drop) if result.drop else data
                    if canonical is not None:   # None: records to cut that pointers still need
                        ttl, fields = scan_ttls(scan, flt.settings.max_ttl, result.drop)
                        return _tuple_new(Answered, (canonical, ttl, fields, result, scan.qname))
                return self._filtered(dns_message(data), observed=True)
        return self._filtered(dns_message(data), observed=False)

    def received_message(self, response: dns.message.Message) -> Answered | Reroute:
        """`received` for an answer already parsed (the mitmproxy addon reads it to fail closed
        on what dnspython cannot read)."""
        return self._filtered(response, observed=False)

    def _filtered(self, response: dns.message.Message, observed: bool) -> Answered | Reroute:
        """The dnspython way: filter `response` (in place) for what was asked."""
        flt = self.filter
        asked = self.asked
        if asked is None:
            asked = self.asked = dns.message.from_wire(self.query)
        if not observed:
            self._observe(None, response)
        result = flt.filter(self.client, asked, response)
        message = result.message if result.message is not None else response   # filtered in place
        if result.outcome is Outcome.REROUTE:
            if self.reroutes:
                self._rerouting = result
                # to_wire() without a file always gives bytes; typed Optional for the file case
                target = cast(bytes, dns.name.from_text(result.reroute_to or "").canonicalize().to_wire())
                return Reroute(self.key._replace(qname=target))
            # no second hop: blocked, and no answer for the alternative's own askers
            self.cut_short = True
            message = flt.reroute_answer(asked, result, None)
        return self._answered(asked, result, message)

    def _observe(self, scan: Scan | None, response: dns.message.Message | None) -> None:
        """The upstream's answer, before it is filtered, into the learned store (if any)."""
        learned = self.filter.engine.learned
        if learned is None:
            return
        if scan is not None:
            learned.observe_scan(scan.records, self.source)
        else:
            learned.observe_message(response, self.source)

    def rerouted(self, alternative: bytes | None) -> Answered:
        """The alternative's (filtered) answer came, or None: there is none. An alternative that
        was itself blocked or rerouted gives no address (AnswerFilter.reroute_response), so
        the answer is then the block answer, with outcome BLOCKED."""
        result = self._rerouting
        if result is None or self.asked is None:
            raise RuntimeError("Miss.rerouted without a Reroute step")
        found = dns.message.from_wire(alternative) if alternative is not None else None
        return self._answered(self.asked, result,
                              self.filter.reroute_answer(self.asked, result, found))

    def _answered(self, asked: dns.message.Message, result: FilterResult,
                  message: dns.message.Message) -> Answered:
        message.id = asked.id
        return Answered(message.to_wire(), cache_ttl(message, self.filter.settings.max_ttl),
                        None, result, wire_name(self.key.qname))


def dns_message(data: bytes) -> dns.message.Message:
    """`data` read by dnspython; UpstreamError when it cannot be."""
    try:
        return dns.message.from_wire(data)
    except Exception as e:  # noqa: BLE001 - garbage from upstream, whatever dnspython raises
        raise UpstreamError(f"garbage answer ({type(e).__name__})") from None
