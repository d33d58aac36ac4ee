"""regionguard's DNS filter as a mitmproxy 12 addon: the clients' own DNS, seen by mitmproxy in
WireGuard, local and DNS modes, gets the same filtering as `regionguard dns`.

    mitmdump --mode dns@5353 -s addons/dns_filter.py --set regionguard_policy=config/policy.yaml

(addons/regionguard_addon.py includes this addon; with it, the `regionguard_policy` and audit options
are the proxy addon's.) What happens to an answer is regionguard.dns.miss's `Miss`, the server's
own: the learned store, the filter (regionguard.dns.filter) and the reroute.
- `dns_request`: with no usable policy, a query for a Zoom name is refused (fail closed);
- `dns_response`: the answer is filtered for the asking client (its group by source address):
  every address in every section, whatever the rcode; a `reroute` is resolved with the policy's
  resolver and answered with the allowed addresses. What is filtered is the message mitmproxy
  will send (`flow.response.packed`), as dnspython reads it; a message dnspython cannot read
  gets SERVFAIL unless its bytes are proven to carry no Zoom name or address (ZoomBytes).
Every hook is wrapped: an internal error turns a Zoom answer into SERVFAIL, never lets it through.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype
from mitmproxy import ctx
from mitmproxy import dns as mdns

from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.audit.log import AuditLog
from regionguard.core.errors import ConfigError
from regionguard.core.paths import default_policy_path
from regionguard.dns.filter import AnswerFilter, ZoomBytes, addresses_of, audit_answer
from regionguard.dns.miss import Miss, Reroute
from regionguard.dns.parsed import query_key
from regionguard.dns.resolve import NameResolver
from regionguard.dns.wire import CacheKey, wire_name

log = logging.getLogger("regionguard.dns")
CHECK_EVERY = 1.0   # seconds between looks at the policy option and file (standalone addon)
UPSTREAM_SOURCE = "dns-filter upstream (mitmproxy dns mode)"   # learned store: who answered
RESOLVER_SOURCE = "dns-filter resolver (reroute alternative)"


class DnsFilter:
    """Filters mitmproxy DNS flows. No options of its own: beside the proxy addon it uses that
    addon's policy (and its reloads) and audit log; alone, the policy given with
    `--set regionguard_policy=...` (else the default policy), checked for changes every second."""

    def __init__(self) -> None:
        self._holder: EngineHolder | None = None
        self._filter: AnswerFilter | None = None
        self._resolver: tuple[Any, NameResolver] | None = None   # (engine, its resolver)
        self._own_audit = AuditLog(None)
        self._failed_path: str | None = None
        self._own: EngineHolder | None = None
        self._next_check = 0.0

    # --- policy and audit, read defensively --------------------------------------------------

    @staticmethod
    def _proxy() -> Any:
        try:
            return ctx.master.addons.get("regionguard")
        except (AttributeError, KeyError):
            return None

    @staticmethod
    def _option(name: str) -> Any:
        """The option's value; when no addon declares it (this addon alone), the value given
        with --set, which mitmproxy keeps aside as a deferred option."""
        try:
            return getattr(ctx.options, name)
        except (AttributeError, KeyError):
            pass
        value = getattr(ctx.options, "deferred", {}).get(name)
        value = getattr(value, "val", value)     # mitmproxy keeps the --set strings unparsed
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else None
        return value

    def _own_holder(self) -> EngineHolder | None:
        """This addon's own policy (when the proxy addon is absent), looked at again at most
        every CHECK_EVERY seconds: reading the option and stat-ing the file per query would put
        file-system calls on every DNS answer's path."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY
            self._own = self._load_own()
        return self._own

    def _load_own(self) -> EngineHolder | None:
        path = str(self._option("regionguard_policy") or default_policy_path())
        if self._holder is None or str(self._holder.path) != path:
            if self._failed_path == path:
                return None
            try:
                self._holder = EngineHolder(path)
            except (ConfigError, OSError) as e:
                self._failed_path = path
                log.error("regionguard dns: policy %s unusable, Zoom names are refused: %s", path, e)
                return None
            self._failed_path = None
        self._holder.check_soon()   # parsed off the event loop; swapped in when done
        return self._holder

    def _current(self) -> AnswerFilter | None:
        """The filter for the policy in force; None when there is none (fail closed)."""
        proxy = self._proxy()
        if proxy is not None and hasattr(proxy, "holder"):
            holder = proxy.holder        # the proxy addon loads and reloads it
        else:
            holder = self._own_holder()
        if holder is None:
            return None
        engine = holder.engine
        if self._filter is None or self._filter.engine is not engine:
            self._filter = AnswerFilter(engine)
        return self._filter

    def _resolver_for(self, engine: Any) -> NameResolver:
        if self._resolver is None or self._resolver[0] is not engine:
            self._resolver = (engine, NameResolver(engine.policy.resolver))
        return self._resolver[1]

    def _audit(self) -> AuditLog:
        audit = getattr(self._proxy(), "audit", None)
        return audit if isinstance(audit, AuditLog) else self._own_audit

    def _points_at_zoom(self, flow: Any) -> bool:
        """For the fail-closed paths: might this flow carry a Zoom name or address (by domain,
        published range, or the policy's `zoom: true`)? Read record by record as mitmproxy
        frames it: the question; every record's owner, CNAME/DNAME target, A/AAAA address
        (IPv4 inside IPv6 included), HTTPS/SVCB target and hints. A record dnspython cannot
        read counts unless its bytes are proven to hold nothing of Zoom's (ZoomBytes);
        anything else that cannot be read counts as Zoom's."""
        flt = self._filter
        is_zoom = flt.engine.is_zoom if flt is not None else _catalogue_is_zoom
        proof = flt.zoom_bytes if flt is not None else _catalogue_bytes()
        try:
            if any(is_zoom(host=str(q.name)) for q in flow.request.questions):
                return True
            if flow.response is None:
                return False
            response = flow.response
            for rr in [*response.answers, *response.authorities, *response.additionals]:
                if is_zoom(host=rr.name) or _record_might_be_zoom(rr, is_zoom, proof):
                    return True
        except Exception:  # noqa: BLE001 - unreadable: assume the worst
            return True
        return False

    # --- hooks ----------------------------------------------------------------------------------

    def dns_request(self, flow: Any) -> None:
        try:
            if flow.response is None and self._current() is None and self._points_at_zoom(flow):
                flow.response = flow.request.fail(dns.rcode.REFUSED)
        except Exception:  # noqa: BLE001 - mitmproxy would swallow it and let the query through
            log.exception("regionguard dns: dns_request failed")
            flow.response = flow.request.fail(dns.rcode.SERVFAIL)

    async def dns_response(self, flow: Any) -> None:
        if flow.response is None:
            return
        try:
            await self._filter_flow(flow)
        except Exception:  # noqa: BLE001 - fail closed for Zoom, untouched for the rest
            log.exception("regionguard dns: filtering failed")
            if self._points_at_zoom(flow):
                flow.response = flow.request.fail(dns.rcode.SERVFAIL)

    async def _filter_flow(self, flow: Any) -> None:
        flt = self._current()
        if flt is None:
            # no policy in force: a non-Zoom name whose answer leads to Zoom fails closed too
            if self._points_at_zoom(flow):
                flow.response = flow.request.fail(dns.rcode.REFUSED)
            return
        try:
            # Exactly what mitmproxy will send the client. mitmproxy reads names it cannot pack
            # again (a label holding a dot): such an answer cannot be read either.
            response = dns.message.from_wire(flow.response.packed)
        except Exception:  # noqa: BLE001 - dnspython raises many kinds for what it cannot read
            if self._points_at_zoom(flow):
                log.warning("regionguard dns: an answer that cannot be read and might be Zoom's: "
                            "SERVFAIL")
                flow.response = flow.request.fail(dns.rcode.SERVFAIL)
            return
        try:
            query = dns.message.from_wire(flow.request.packed)
            readable_query = True
        except Exception:  # noqa: BLE001 - filter against the answer's question instead
            query = dns.message.Message(id=response.id)
            query.question = list(response.question)
            readable_query = False
        peer = getattr(flow.client_conn, "peername", None)
        client = peer[0] if peer else None
        # The server's Miss decides here too: the learned store, the filter and the reroute.
        miss = Miss(flt, _key_of(query), client, UPSTREAM_SOURCE, asked=query)
        step = miss.received_message(response)
        if not readable_query and (isinstance(step, Reroute) or step.result.changed):
            flow.response = flow.request.fail(dns.rcode.SERVFAIL)   # nothing to rebuild it for
            return
        if isinstance(step, Reroute):
            step = miss.rerouted(await self._alternative(flt, client, step.key))
        result = step.result
        if result.zoom and query.question:
            audit_answer(self._audit(), result, "mitmproxy", client, step.qname,
                         query.question[0].rdtype)
        if result.changed:
            flow.response = mdns.DNSMessage.unpack(step.wire)

    async def _alternative(self, flt: AnswerFilter, client: str | None,
                           key: CacheKey) -> bytes | None:
        """The policy's alternative (`key`: its name, the type asked) asked of the policy's
        resolver and filtered for the same client, as the server's alternative miss does (no
        second hop, no audit record of its own); None when the resolver has no answer."""
        name, rdtype = wire_name(key.qname), key.qtype
        answer = await self._resolver_for(flt.engine).aquery(name, rdtype)
        if answer is None:
            return None
        miss = Miss(flt, key, client, RESOLVER_SOURCE, reroutes=False,
                    asked=dns.message.make_query(name, rdtype))
        return miss.received_message(answer).wire   # Answered: no second hop


def _key_of(query: dns.message.Message) -> CacheKey:
    """The Miss key of the flow's query (the group is the server's cache's: unused here). A
    message without a question gets a key naming the root: without a question nothing is
    rerouted nor audited."""
    if query.question:
        return query_key("", query)
    return CacheKey("", b"\x00", 0, 0, False, False, False)


def _record_might_be_zoom(rr: Any, is_zoom: Any, proof: ZoomBytes) -> bool:
    """One mitmproxy record (its names already decompressed): does it name or hold Zoom's?"""
    data = rr.data
    try:
        rd = dns.rdata.from_wire(rr.class_, rr.type, data, 0, len(data))
    except Exception:  # noqa: BLE001 - a record dnspython cannot read: only a proof clears it
        return proof.might_carry(data)
    if rr.type in (dns.rdatatype.CNAME, dns.rdatatype.DNAME, dns.rdatatype.HTTPS,
                   dns.rdatatype.SVCB) and is_zoom(host=rd.target.to_text(omit_final_dot=True)):
        return True
    if rr.type in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
        found = addresses_of(rd)
        if found is None:
            return proof.might_carry(data)
        return any(is_zoom(address=a) for a in found)
    return False


def _catalogue_is_zoom(host: str | None = None, address: str | None = None) -> bool:
    """Zoom's by domain or published range (embedded IPv4 included), when no policy (and its
    overrides) is in force."""
    from regionguard.core.zoom import ZoomCatalogue
    zoom = ZoomCatalogue.load()
    return zoom.is_zoom_host(host) or zoom.range_of(address) is not None


_CATALOGUE_BYTES: list[ZoomBytes] = []


def _catalogue_bytes() -> ZoomBytes:
    """The proof of no-Zoom by Zoom's domains and published ranges alone, for when no policy
    (and its overrides) is in force."""
    if not _CATALOGUE_BYTES:
        from regionguard.core.zoom import ZoomCatalogue
        _CATALOGUE_BYTES.append(ZoomBytes(ZoomCatalogue.load()))
    return _CATALOGUE_BYTES[0]


def make_addons() -> list:
    """The DNS filter alone, as `mitmdump -s addons/dns_filter.py` loads it."""
    return [DnsFilter()]
