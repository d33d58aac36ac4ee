"""One cache miss of `regionguard dns`, as logic with no I/O.

Like dnspython's resolver `_Resolution`, a `Miss` says what to do and leaves the doing to its
driver (regionguard.dns.server, the one miss path for UDP and TCP):

    miss = Miss(answer_filter, key, client, learned_source)
    send miss.query upstream (the ID is the driver's)
    step = miss.received(answer bytes)        # Answered, or Reroute
    if Reroute: resolve step.key as a miss of its own (reroutes=False), then
        step = miss.rerouted(its answer bytes, or None)
    cache step.wire for step.ttl seconds; audit step.result when it is Zoom's

`received` filters at the byte level when it can (non-Zoom: untouched; Zoom: disallowed records
cut out) and with dnspython when it cannot (records the wire scan does not read, an answer to
replace, or records to cut that compression pointers still need). Raises UpstreamError for an
answer nobody can read; the driver answers SERVFAIL. Observing the upstream's answer in the
learned store (regionguard/core/learned.py) is the one side effect: the engine's own state.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import dns.message
import dns.name

from regionguard.dns.filter import AnswerFilter, FilterResult, Outcome, cache_ttl
from regionguard.dns.wire import (
    CacheKey,
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
    """A cache miss for `key`, asked by `client`. `waiters` and `exchange` are the driver's:
    whoever waits for the answer, and the upstream exchange under way."""

    __slots__ = ("filter", "key", "client", "source", "reroutes", "query", "waiters", "exchange",
                 "_rerouting")

    def __init__(self, answer_filter: AnswerFilter, key: CacheKey, client: str, source: str,
                 reroutes: bool = True) -> None:
        self.filter = answer_filter
        self.key = key
        self.client = client
        self.source = source          # how the learned store names this server's upstreams
        self.reroutes = reroutes      # False for a reroute's alternative: no second hop
        self.query = upstream_query(key)
        self.waiters: list[Any] = []
        self.exchange: Any = None
        self._rerouting: tuple[dns.message.Message, FilterResult] | None = None

    def received(self, data: bytes) -> Answered | Reroute:
        """The upstream answered `data` (checked to answer our question)."""
        key = self.key
        flt = self.filter
        if key[3] == 1:   # class IN: the wire scan reads IN's records only
            scan = scan_response(data)
            if scan is not None:
                learned = flt.engine.learned
                if learned is not None:   # before the filter: the answer may place itself
                    learned.observe_scan(scan.records, self.source)
                # scan.qname: the upstream's echo of our question, checked equal (case aside)
                result = flt.filter_scan(self.client, scan.qname, key[2], scan)
                if result is not None:   # None: an answer to replace (block or reroute)
                    canonical = remove_records(data, scan, result.drop) if result.drop else data
                    if canonical is not None:   # None: records to cut that pointers still need
                        ttl, fields = scan_ttls(scan, flt.settings.max_ttl, result.drop)
                        return _tuple_new(Answered, (canonical, ttl, fields, result, scan.qname))
        try:
            response = dns.message.from_wire(data)
            asked = dns.message.from_wire(self.query)
        except Exception as e:  # noqa: BLE001 - garbage from upstream, whatever dnspython raises
            raise UpstreamError(f"garbage answer ({type(e).__name__})") from None
        learned = flt.engine.learned
        if learned is not None:
            learned.observe_message(response, self.source)
        result = flt.filter(self.client, asked, response)
        message = result.message if result.message is not None else response   # filtered in place
        if result.outcome is Outcome.REROUTE:
            if self.reroutes:
                self._rerouting = (asked, result)
                # to_wire() without a file always gives bytes; typed Optional for the file case
                target = cast(bytes, dns.name.from_text(result.reroute_to or "").canonicalize().to_wire())
                return Reroute(key._replace(qname=target))
            message = flt.reroute_answer(asked, result, None)   # no second hop: blocked
        return self._answered(asked, result, message)

    def rerouted(self, alternative: bytes | None) -> Answered:
        """The alternative's (filtered) answer came, or None: there is none."""
        if self._rerouting is None:
            raise RuntimeError("Miss.rerouted without a Reroute step")
        asked, result = self._rerouting
        found = dns.message.from_wire(alternative) if alternative is not None else None
        return self._answered(asked, result, self.filter.reroute_answer(asked, result, found))

    def _answered(self, asked: dns.message.Message, result: FilterResult,
                  message: dns.message.Message) -> Answered:
        message.id = asked.id
        return Answered(message.to_wire(), cache_ttl(message, self.filter.settings.max_ttl),
                        None, result, wire_name(self.key.qname))
