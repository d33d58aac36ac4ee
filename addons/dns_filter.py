"""regionguard's DNS filter as a mitmproxy 12 addon: the clients' own DNS, seen by mitmproxy in
WireGuard, local and DNS modes, gets the same filtering as `regionguard dns`.

    mitmdump --mode dns@5353 -s addons/dns_filter.py --set regionguard_policy=config/policy.yaml

(addons/regionguard.py includes this addon; with it, the `regionguard_policy` and audit options
are the proxy addon's.) The filtering itself is regionguard.dnsfilter, shared with the server.
- `dns_request`: with no usable policy, a query for a Zoom name is refused (fail closed);
- `dns_response`: the answer is filtered for the asking client (its group by source address);
  a `reroute` is resolved with the policy's resolver and answered with the allowed addresses.
Every hook is wrapped: an internal error turns a Zoom answer into SERVFAIL, never lets it through.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from mitmproxy import ctx
from mitmproxy import dns as mdns


def _import_package() -> None:
    """Import the regionguard package, not addons/regionguard.py: mitmproxy puts this script's
    directory on sys.path, where `regionguard` would name the proxy addon script."""
    if "regionguard.dnsfilter" in sys.modules:
        return
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        if "regionguard" in sys.modules and not hasattr(sys.modules["regionguard"], "__path__"):
            del sys.modules["regionguard"]
        importlib.import_module("regionguard.dnsfilter")
    finally:
        sys.path[:] = saved


_import_package()

from regionguard._paths import default_policy_path  # noqa: E402
from regionguard.audit import AuditLog  # noqa: E402
from regionguard.dnsfilter import AnswerFilter, FilterResult, decide_address  # noqa: E402
from regionguard.errors import ConfigError  # noqa: E402
from regionguard.reload import EngineHolder  # noqa: E402
from regionguard.resolve import NameResolver, ResolveError  # noqa: E402

log = logging.getLogger("regionguard.dns")


class DnsFilter:
    """Filters mitmproxy DNS flows. No options of its own: the policy path is the
    `regionguard_policy` option when the proxy addon declares it, else the default policy."""

    def __init__(self) -> None:
        self._holder: EngineHolder | None = None
        self._filter: AnswerFilter | None = None
        self._own_audit = AuditLog(None)
        self._failed_path: str | None = None

    # --- policy and audit, read defensively --------------------------------------------------

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

    def _current(self) -> AnswerFilter | None:
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
            self._filter = None
        self._holder.check()
        if self._filter is None or self._filter.engine is not self._holder.engine:
            self._filter = AnswerFilter(self._holder.engine)
        return self._filter

    def _audit(self) -> AuditLog:
        try:
            proxy = ctx.master.addons.get("regionguard")
        except (AttributeError, KeyError):
            proxy = None
        audit = getattr(proxy, "audit", None)
        return audit if isinstance(audit, AuditLog) else self._own_audit

    # --- hooks ----------------------------------------------------------------------------------

    def dns_request(self, flow: Any) -> None:
        try:
            if self._current() is not None or flow.response is not None:
                return
            from regionguard.zoom import ZoomCatalogue
            q = flow.request.questions[0] if flow.request.questions else None
            if q is not None and ZoomCatalogue.load().is_zoom_host(q.name):
                flow.response = flow.request.fail(dns.rcode.REFUSED)
        except Exception:  # noqa: BLE001 - mitmproxy would swallow it and let the query through
            log.exception("regionguard dns: dns_request failed")

    async def dns_response(self, flow: Any) -> None:
        if flow.response is None:
            return
        try:
            await self._filter_flow(flow)
        except Exception:  # noqa: BLE001 - fail closed for Zoom, untouched for the rest
            log.exception("regionguard dns: filtering failed")
            flt = self._filter
            q = flow.request.questions[0] if flow.request.questions else None
            if q is None or flt is None or flt.engine.zoom.is_zoom_host(q.name):
                flow.response = flow.request.fail(dns.rcode.SERVFAIL)

    async def _filter_flow(self, flow: Any) -> None:
        flt = self._current()
        if flt is None:
            return   # dns_request already refused the Zoom names
        query = dns.message.from_wire(flow.request.packed)
        response = dns.message.from_wire(flow.response.packed)
        peer = getattr(flow.client_conn, "peername", None)
        client = peer[0] if peer else None
        result = flt.filter(client, query, response)
        message = result.message
        if result.outcome == "reroute":
            message = await self._reroute(flt, client, query, result)
        if result.zoom:
            decision = result.audit_decision()
            if decision is not None:
                q = query.question[0]
                self._audit().record(decision, mode="mitmproxy", front_end="dns",
                                     dns_qname=q.name.to_text(omit_final_dot=True).lower(),
                                     dns_qtype=dns.rdatatype.to_text(q.rdtype), dns_client=client,
                                     **result.audit_extra())
        if result.changed:
            message.id = query.id
            flow.response = mdns.DNSMessage.unpack(message.to_wire())

    async def _reroute(self, flt: AnswerFilter, client: str | None, query: dns.message.Message,
                       result: FilterResult) -> dns.message.Message:
        """Resolve the policy's alternative and answer with its allowed addresses of the type
        asked; the block answer when there are none."""
        q = query.question[0]
        target = result.reroute_to or ""
        try:
            answer = await NameResolver(flt.engine.policy.resolver).aresolve(target)
            found = answer.addresses
        except ResolveError:
            found = ()
        wanted = "A" if q.rdtype == dns.rdatatype.A else "AAAA"
        allowed = [a for a in found if (":" in a) == (wanted == "AAAA")
                   and not decide_address(flt.engine, client, target, a).blocks]
        if allowed:
            alt = dns.message.make_response(query)
            alt.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", wanted, allowed))
            made = flt.reroute_response(query, alt)
            if made is not None:
                return made
        result.outcome = "blocked"
        return flt.block_response(query, result.name)


addons = [DnsFilter()]
