"""Filter DNS answers by Zoom region: the one implementation behind `regionguard dns` and the
mitmproxy addon's DNS hooks. Pure: dnspython messages in, dnspython messages out, no I/O.

A response is Zoom's when the query name, any owner name or CNAME/DNAME target in any section
(or an HTTPS/SVCB target) is a Zoom domain, or any address in it (A, AAAA, or an SVCB hint, in
any section) lies in Zoom's ranges or is placed as Zoom's by a policy override. Every address of
a Zoom response, in every section and under every rcode (NXDOMAIN, SERVFAIL, an EDNS extended
rcode...), is decided by the Engine for the asking client; disallowed ones are dropped, so a
hint, an authority or additional record, or an error answer cannot smuggle an address past the
filter. An IPv6 address that embeds an IPv4 one (zoom.embedded_ipv4) is decided as both.
Anything else is relayed untouched after that one cheap scan.

Fail closed: an address record the filter cannot read (an A of another class, a generic HTTPS
rdata...) turns the whole answer into the block answer when the answer is Zoom's, or might be:
`ZoomBytes.might_carry` proves bytes harmless only when no Zoom name label and no Zoom address
appears anywhere in them. Front ends give SERVFAIL for a message nobody can parse.

What the caller does with a `FilterResult`:
- `outcome is Outcome.REROUTE`: resolve `reroute_to` (with the same qtype, through this
  filter) and answer with `reroute_answer()`, which falls back to the block answer;
- otherwise send `message` (the response, modified in place, or a synthesized block answer);
- when `zoom`, write the answer's audit record with `audit_answer()`.
Both front ends (regionguard.dns.server, regionguard.mitm.dns_filter) do just this: the reroute
and the audit record are written here once.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.svcbbase as svcb
import dns.rrset
from dns.rdata import GenericRdata

from regionguard.core.decision import BLOCKING, Action, Decision, Engine
from regionguard.core.hostnames import DomainSet, normalise_host
from regionguard.core.prefixes import PrefixTable, network_range
from regionguard.core.zoom import ZoomCatalogue, embedded_ipv4
from regionguard.dns.wire import A_TYPE, AAAA_TYPE, CNAME_TYPE, Scan

if TYPE_CHECKING:
    from regionguard.audit.log import AuditLog

log = logging.getLogger(__name__)

A, AAAA = dns.rdatatype.A, dns.rdatatype.AAAA
CNAME, SOA, DNAME = dns.rdatatype.CNAME, dns.rdatatype.SOA, dns.rdatatype.DNAME
HTTPS, SVCB = dns.rdatatype.HTTPS, dns.rdatatype.SVCB
ADDRESS_TYPES = (A, AAAA)
_UNSPECIFIED = ("0.0.0.0", "::")   # the `zero` block answer's addresses
_V4_BASE = 0xFFFF_0000_0000   # IPv4's place among prefix keys (prefixes.address_key)
HINT_KEYS = (svcb.ParamKey.IPV4HINT, svcb.ParamKey.IPV6HINT)
BLOCK_TTL = 60              # how long clients may cache a block answer (and our synthesized SOA)
DNS_PORT, DNS_TRANSPORT = 443, "tcp"   # what a resolved Zoom address is for: HTTPS
_DECISION_CACHE = 50_000    # entries in AnswerFilter's decision and host-facts caches (each)


def decide_address(engine: Engine, client: str | None, name: str, address: str) -> Decision:
    """The decision for one answer address of `name`: as if the client connected to it over
    HTTPS, which is what a resolved Zoom name is for. Fails closed (decide_safely)."""
    return engine.decide_safely(client, name, address, DNS_PORT, DNS_TRANSPORT)


def _may_embed_ipv4(address: str) -> bool:
    """A cheap text test, true for every IPv6 address embedding an IPv4 one as canonical text
    (inet_ntop, dnspython) writes it: ::ffff:a.b.c.d, ::a.b.c.d and 64:ff9b::a.b.c.d."""
    return address.startswith("::") or address.startswith("64:ff9b:")


def _stricter(a: tuple[Decision, str | None], b: tuple[Decision, str | None]
              ) -> tuple[Decision, str | None]:
    """Of two decisions for one address, the one that stands: a block over the rest, then a
    monitor."""
    da, db = a[0], b[0]
    if db.blocks and not da.blocks:
        return b
    if db.action is Action.MONITOR and not da.blocks and da.action is not Action.MONITOR:
        return b
    return a


class ZoomBytes:
    """Proof that bytes the filter cannot read as records carry nothing of Zoom's: no label of a
    Zoom name (Zoom's domains, the policy's `zoom: true` host rules) appears in them, ignoring
    case, and no 4 of them are a Zoom IPv4 address nor 16 a Zoom IPv6 address (published ranges,
    the policy's `zoom: true` networks; an embedded IPv4 is itself 4 of the bytes). A lookup per
    byte: only for messages or records that cannot be read, never on the common path."""

    def __init__(self, zoom: ZoomCatalogue, host_globs: Iterable[str] = (),
                 networks: Iterable[str] = ()) -> None:
        markers: list[bytes] = []
        for domain in zoom.domains:
            markers.append(max(domain.split("."), key=len).encode())
        anything = False
        for glob in host_globs:
            literal = [label for label in glob.lower().split(".")
                       if label and not any(c in label for c in "*?[]")]
            if literal:
                markers.append(max(literal, key=len).encode())
            else:
                anything = True   # a rule like "*" makes every name Zoom's
        self.markers = tuple(markers)
        self.anything = anything
        self.ranges = zoom.ranges
        items = [(*network_range(n), True) for n in networks]
        self.networks: PrefixTable[bool] | None = PrefixTable(items) if items else None

    @classmethod
    def for_engine(cls, engine: Engine) -> ZoomBytes:
        overrides = [o for o in engine.policy.overrides if o.zoom]
        return cls(engine.zoom, [o.match for o in overrides if not o.is_network],
                   [o.match for o in overrides if o.is_network])

    def _zoom_key(self, key: int) -> bool:
        if self.ranges.get_key(key) is not None:
            return True
        return self.networks is not None and self.networks.get_key(key) is not None

    def might_carry(self, data: bytes) -> bool:
        """True unless `data` is proven to hold no Zoom name and no Zoom address."""
        if self.anything:
            return True
        lowered = data.lower()
        for marker in self.markers:
            if marker in lowered:
                return True
        n = len(data)
        for i in range(n - 3):
            if self._zoom_key(_V4_BASE | int.from_bytes(data[i:i + 4], "big")):
                return True
        for i in range(n - 15):
            if self._zoom_key(int.from_bytes(data[i:i + 16], "big")):
                return True
        return False


class Outcome(StrEnum):
    """What the filter did to one answer (the audit line's `dns_outcome`)."""

    PASS = "pass"             # not Zoom's: untouched
    ALLOWED = "allowed"       # Zoom's, every address allowed
    FILTERED = "filtered"     # Zoom's, some addresses dropped
    MONITOR = "monitor"       # Zoom's, let through with a monitored decision
    BLOCKED = "blocked"       # replaced by the block answer
    REROUTE = "reroute"       # to be answered with the policy's alternative (`reroute_to`)


CHANGED = frozenset({Outcome.FILTERED, Outcome.BLOCKED, Outcome.REROUTE})   # the answer was changed


class FilterResult:
    """What the filter did to one response (and the decisions behind it)."""

    # A plain class rather than a dataclass: one is made per Zoom answer on the miss path, and
    # six default factories cost more than the rest of the constructor.
    __slots__ = ("message", "zoom", "outcome", "name", "decisions", "hosts", "kept", "dropped",
                 "reroute_to", "drop")

    def __init__(self, message: dns.message.Message | None, zoom: bool = False,
                 outcome: Outcome = Outcome.PASS, name: str | None = None) -> None:
        self.message = message      # None from filter_scan (see `drop` there)
        self.zoom = zoom
        self.outcome = outcome
        self.name = name            # the Zoom name the addresses were decided for
        # One decision per address decided, and the name it was decided for. A decision may
        # come from the filter's cache with another name of the same facts in its `host` field:
        # the name is copied in only for the decision that is audited (`audit_decision`).
        self.decisions: list[Decision] = []
        self.hosts: list[str | None] = []
        self.kept: list[str] = []
        self.dropped: list[str] = []
        self.reroute_to: str | None = None
        self.drop: set[int] = set()     # filter_scan: indices of records to remove

    def __repr__(self) -> str:
        return (f"FilterResult(outcome={self.outcome.value!r}, zoom={self.zoom}, name={self.name!r}, "
                f"kept={self.kept}, dropped={self.dropped}, reroute_to={self.reroute_to!r})")

    @property
    def changed(self) -> bool:
        return self.outcome in CHANGED

    def audited(self) -> tuple[Decision, str | None] | None:
        """The decision that stands for this answer in the audit log — the first that dropped
        an address, else the first monitored one, else the first — and the name it was decided
        for (its `host` field may be another name's). None when nothing was decided."""
        decisions = self.decisions
        for i, d in enumerate(decisions):
            if d.action in BLOCKING:
                return d, self.hosts[i]
        for i, d in enumerate(decisions):
            if d.action is Action.MONITOR:
                return d, self.hosts[i]
        return (decisions[0], self.hosts[0]) if decisions else None

    def audit_decision(self) -> Decision | None:
        """`audited()`'s decision, with its name in it."""
        found = self.audited()
        if found is None:
            return None
        d, host = found
        return d if d.host == host else d.with_host(host)

    def audit_extra(self) -> dict:
        return {"dns_outcome": self.outcome.value, "dns_kept": self.kept, "dns_dropped": self.dropped,
                **({"dns_reroute_to": self.reroute_to} if self.reroute_to else {})}


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class AnswerFilter:
    """The filter for one Engine (one policy). Cheap to build; rebuild when the policy changes.

    Decisions are cached per (client, address, what the hostname tells the engine): every new
    name of a Zoom answer would otherwise miss the Engine's memo (keyed on the exact name) and
    pay for a full decision per address. What the hostname tells the engine — its `host_facts`:
    the Zoom domain it falls under, whether it is a CRC name, whether it looks like a meeting
    server's, and every per-host evidence source's answer (site codes, override host rules) —
    is everything of the name that `Engine.decide` reads besides copying it into the Decision;
    the cached Decision gets this name copied in. A sample of cache hits is re-decided by the
    Engine; a difference turns the cache off for good (and says so)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.policy.dns
        zoom = engine.zoom
        # What a miss asks of every new name, held here rather than looked up through the
        # engine each time (see host_facts).
        self._zoom_domains: DomainSet = zoom.domains
        self._crc_domains: DomainSet = zoom.crc_domains
        self._name_class: Callable[[str], str] = zoom.name_class_unremembered   # host_facts remembers
        self._host_lookups = tuple(src.lookup_host for src in engine.locator.per_host)
        # Overrides may declare names Zoom's (`zoom: true` on a host rule: labs, tests).
        self._overrides_zoom_names = any(o.zoom and not o.is_network
                                         for o in engine.policy.overrides)
        self._range_of = zoom.range_of
        # Overrides may declare addresses Zoom's (labs, tests); only then is the locator asked.
        self._overrides_zoom = any(o.zoom for o in engine.policy.overrides if o.is_network)
        self.zoom_bytes = ZoomBytes.for_engine(engine)
        self._decisions: dict[tuple, Decision] = {}
        self._facts: dict[str, int] = {}
        self._fact_ids: dict[tuple, int] = {}
        self._cache_on = True
        self._checked = 0
        # Learned evidence (regionguard/core/learned.py) can change any address's decision.
        if engine.learned is not None:
            engine.locator.also_forget(self._decisions.clear)

    # --- decisions ----------------------------------------------------------------------------

    def _zoom_host(self, host: str | None) -> bool:
        """Is a name Zoom's: one of Zoom's domains (ZoomCatalogue.is_zoom_host), or a name the
        policy's overrides declare Zoom's."""
        if not host:
            return False
        if self._zoom_domains.match(host) is not None:
            return True
        return self._overrides_zoom_names and self.engine.is_zoom(host=host)

    def host_facts(self, host: str) -> int:
        """Everything of `host` (normalised) that a decision depends on, but the name itself,
        as a small number: names with equal numbers get equal decisions (bar the name)."""
        fid = self._facts.get(host)
        if fid is None:
            facts = (self._zoom_domains.match(host), host in self._crc_domains,
                     self._name_class(host),   # the service class the name gives (zoom.yaml names)
                     tuple([lookup(host) for lookup in self._host_lookups]))
            fid = self._fact_ids.get(facts)
            if fid is None:
                if len(self._fact_ids) >= _DECISION_CACHE:   # numbers are keys of _decisions
                    self._fact_ids.clear()
                    self._decisions.clear()
                    self._facts.clear()
                fid = self._fact_ids[facts] = len(self._fact_ids)
            if len(self._facts) >= _DECISION_CACHE:
                self._facts.clear()
            self._facts[host] = fid
        return fid

    def decide(self, client: str | None, host: str, address: str) -> Decision:
        """decide_address(), through the per-(client, address, host facts) cache."""
        d, name = self.decide_unnamed(client, host, address)
        return d if d.host == name else d.with_host(name)

    def decide_unnamed(self, client: str | None, host: str, address: str
                       ) -> tuple[Decision, str | None]:
        """(decision, the name it is for): decide() without copying the name into a cached
        decision made for another name of the same facts, which costs more than the lookup."""
        if not self._cache_on:
            d = decide_address(self.engine, client, host, address)
            return d, d.host
        try:
            name = normalise_host(host)
            if not name or name == address:   # decide() drops such a name: nothing to share
                d = decide_address(self.engine, client, host, address)
                return d, d.host
            key = (client, address, self.host_facts(name))
        except Exception:  # noqa: BLE001 - the Engine itself fails closed
            d = decide_address(self.engine, client, host, address)
            return d, d.host
        cached = self._decisions.get(key)
        if cached is None:
            d = decide_address(self.engine, client, host, address)
            if d.rule != "internal-error":
                if len(self._decisions) >= _DECISION_CACHE:
                    self._decisions.clear()
                self._decisions[key] = d
            return d, name
        if cached.host != name:
            self._checked += 1
            if self._checked & 1023 == 1:   # the first hit and every 1024th: does the Engine agree?
                real = decide_address(self.engine, client, host, address)
                d = cached.with_host(name)
                if real != d or real.location != d.location:
                    log.error("regionguard dns: decision cache disagrees with the engine for %s %s "
                              "(%s vs %s); cache turned off", host, address, d.rule, real.rule)
                    self._cache_on = False
                    self._decisions.clear()
                    return real, real.host
        return cached, name

    def decide_embedded(self, client: str | None, host: str, address: str
                        ) -> tuple[Decision, str | None]:
        """decide_unnamed() for an address that may embed an IPv4 one (see _may_embed_ipv4):
        both are decided, and the stricter decision stands."""
        found = self.decide_unnamed(client, host, address)
        v4 = embedded_ipv4(address)
        if v4 is None:
            return found
        return _stricter(found, self.decide_unnamed(client, host, v4))

    # --- is it Zoom's? ----------------------------------------------------------------------

    def _zoom_address(self, address: str) -> bool:
        if self._range_of(address) is not None:   # embedded IPv4 included (ZoomCatalogue)
            return True
        if not self._overrides_zoom:
            return False
        locate = self.engine.locator.locate
        if locate(address).zoom is True:
            return True
        v4 = embedded_ipv4(address)
        return v4 is not None and locate(v4).zoom is True

    def zoom_name(self, qname: str, response: dns.message.Message) -> str | None:
        """The name to decide this response's addresses for, when the response is Zoom's: the
        query name if it is a Zoom domain, else the first Zoom domain among the CNAME, DNAME
        and HTTPS/SVCB targets of any section, else among the owner names, else (an address in
        Zoom's ranges, in any section) the query name. None when the response is not Zoom's."""
        return self._survey(qname, response)[0]

    def _survey(self, qname: str, response: dns.message.Message
                ) -> tuple[str | None, bool, list[bytes | None]]:
        """(zoom_name(), whether that name leads to the answer — the query name or an alias
        target, so that the addresses of other names are the Zoom name's too —, the rdata of
        every address-bearing record the filter cannot read: its wire bytes when dnspython kept
        them (generic rdata), else None — a Chaosnet A holds a name that may be compressed on
        the wire, so no bytes of ours prove what a client reads there)."""
        unreadable: list[bytes | None] = []
        zoom_host = self._zoom_host
        chained: str | None = qname if zoom_host(qname) else None
        owned: str | None = None
        by_address = False
        for section in (response.answer, response.authority, response.additional):
            for rrset in section:
                rdtype = rrset.rdtype
                if chained is None and rdtype in (CNAME, DNAME):
                    for rd in rrset:
                        target = _text(rd.target)
                        if zoom_host(target):
                            chained = target
                            break
                elif rdtype in ADDRESS_TYPES or rdtype in (HTTPS, SVCB):
                    for rd in rrset:
                        addresses = addresses_of(rd)
                        if addresses is None:
                            unreadable.append(rd.data if isinstance(rd, GenericRdata) else None)
                            continue
                        if rdtype in (HTTPS, SVCB) and chained is None:
                            target = _text(rd.target)
                            if target and zoom_host(target):
                                chained = target
                        if not by_address:
                            by_address = any(self._zoom_address(a) for a in addresses)
                if owned is None and chained is None:
                    owner = _text(rrset.name)
                    if zoom_host(owner):
                        owned = owner
        if chained is not None:
            return chained, True, unreadable
        return owned or (qname if by_address else None), False, unreadable

    # --- the filter -------------------------------------------------------------------------

    def filter(self, client: str | None, query: dns.message.Message,
               response: dns.message.Message) -> FilterResult:
        """Filter `response` (modified in place) for `client`, who asked `query`: every address
        in every section, whatever the rcode."""
        q = query.question[0] if query.question else None
        qname = _text(q.name) if q is not None else ""
        name, chained, unreadable = self._survey(qname, response)
        if unreadable and (name is not None or any(b is None or self.zoom_bytes.might_carry(b)
                                                    for b in unreadable)):
            return self._unreadable(client, query, name or qname)
        if name is None:
            return FilterResult(response)
        result = FilterResult(response, zoom=True, outcome=Outcome.ALLOWED, name=name)
        had_address = False
        for section in (response.answer, response.authority, response.additional):
            keep_sets = []
            for rrset in section:
                if rrset.rdtype in ADDRESS_TYPES:
                    if section is response.answer and q is not None and rrset.rdtype == q.rdtype:
                        had_address = True
                    kept = self._filter_addresses(client, name if chained else None, rrset,
                                                  result)
                elif rrset.rdtype in (HTTPS, SVCB):
                    kept = self._filter_svcb(client, name if chained else None, rrset, result)
                else:
                    kept = rrset
                if kept is not None:
                    keep_sets.append(kept)
            section[:] = keep_sets
        if result.dropped:
            result.outcome = Outcome.FILTERED
        elif any(d.action is Action.MONITOR for d in result.decisions):
            result.outcome = Outcome.MONITOR
        if q is not None and had_address and not any(r.rdtype == q.rdtype for r in response.answer):
            # Nothing allowed left for what was asked: reroute if the policy says so and names
            # an alternative, else the configured block answer.
            target = None
            if any(d.action is Action.REROUTE for d in result.decisions):
                target = self.engine.reroute_target(qname) or self.engine.reroute_target(name)
            if target and target != qname:
                result.outcome, result.reroute_to = Outcome.REROUTE, target
            else:
                result.outcome = Outcome.BLOCKED
                result.message = self.block_response(query, name)
        return result

    def filter_scan(self, client: str | None, qname: str, qtype: int,
                    scan: Scan) -> FilterResult | None:
        """`filter` on a scanned wire response (wire.scan_response), for the fast path: the
        records to drop are in `drop`, `message` is None. None when the answer must be replaced
        (block or reroute): the caller then runs `filter` on the parsed message.

        Every A and AAAA of every section is decided, whatever the rcode. Runs once per cache
        miss: the common case (the query name is Zoom's, its addresses are owned by it) asks
        `_zoom_host` once and reads each address's decision from the cache."""
        records = scan.records
        if self._zoom_host(qname):
            name: str | None = qname
            chained = True
        else:
            name, chained = self._zoom_name_scanned(qname, records)
        if name is None:
            return FilterResult(None)
        result = FilterResult(None, True, Outcome.ALLOWED, name)
        decisions, hosts, drop = result.decisions, result.hosts, result.drop
        had_address = kept_address = monitored = False
        for i, r in enumerate(records):
            rdtype = r.rdtype
            if rdtype != A_TYPE and rdtype != AAAA_TYPE:
                continue
            owner = r.owner
            value = r.value
            # Another name's address is the Zoom name's when that name leads to the answer (a
            # Zoom query name, or a CNAME into Zoom's domains); else it is decided as its own.
            host_for = owner if owner == name or self._zoom_host(owner) or not chained else name
            if rdtype == AAAA_TYPE and _may_embed_ipv4(value):
                d, host = self.decide_embedded(client, host_for, value)
            else:
                d, host = self.decide_unnamed(client, host_for, value)
            decisions.append(d)
            hosts.append(host)
            asked = rdtype == qtype and r.section == 0
            had_address = had_address or asked
            action = d.action
            if action in BLOCKING:
                result.dropped.append(value)
                drop.add(i)
            else:
                result.kept.append(value)
                kept_address = kept_address or asked
                monitored = monitored or action is Action.MONITOR
        if had_address and not kept_address:
            return None
        if drop:
            result.outcome = Outcome.FILTERED
        elif monitored:
            result.outcome = Outcome.MONITOR
        return result

    def _zoom_name_scanned(self, qname: str, records: tuple) -> tuple[str | None, bool]:
        """_survey()'s (name, chained) for a scanned response whose query name is not Zoom's."""
        by_address = False
        owned: str | None = None
        for r in records:
            if r.rdtype == CNAME_TYPE and self._zoom_host(r.value):
                return r.value, True
            if owned is None and r.owner != qname and self._zoom_host(r.owner):
                owned = r.owner
            if not by_address and r.rdtype in (A_TYPE, AAAA_TYPE):
                by_address = self._zoom_address(r.value)
        return owned or (qname if by_address else None), False

    def _filter_addresses(self, client: str | None, name: str | None, rrset: dns.rrset.RRset,
                          result: FilterResult) -> dns.rrset.RRset | None:
        """`rrset` without its disallowed addresses (None: none left). `name`: the Zoom name
        another name's addresses are decided for (None: each is decided as its own)."""
        owner = _text(rrset.name)
        host = owner if name is None or self._zoom_host(owner) else name
        kept = []
        for rd in rrset:
            addresses = addresses_of(rd)
            if addresses is not None and all(self._allows(result, client, host, a)
                                             for a in addresses):
                kept.append(rd)
        if len(kept) == len(rrset):
            return rrset
        return _rrset_like(rrset, kept)

    def _filter_svcb(self, client: str | None, name: str | None, rrset: dns.rrset.RRset,
                     result: FilterResult) -> dns.rrset.RRset | None:
        owner = _text(rrset.name)
        host = owner if name is None or self._zoom_host(owner) else name
        changed = False
        out = []
        for rd in rrset:
            params = dict(rd.params)
            for key in HINT_KEYS:
                param = params.get(key)
                if param is None:
                    continue
                allowed = [address for address in param.addresses
                           if self._allows(result, client, host, address)]
                if len(allowed) != len(param.addresses):
                    changed = True
                    if allowed:
                        params[key] = type(param)(allowed)
                    else:
                        del params[key]
            if self.settings.strip_ech and svcb.ParamKey.ECH in params:
                del params[svcb.ParamKey.ECH]
                changed = True
                result.dropped.append("ech")
            mandatory = params.get(svcb.ParamKey.MANDATORY)
            if mandatory is not None and any(k not in params for k in mandatory.keys):
                changed = True   # a key the record says is mandatory was removed: drop it all
                continue
            out.append(rd.replace(params=params) if len(params) != len(rd.params) or changed
                       else rd)
        return _rrset_like(rrset, out) if changed else rrset

    def _allows(self, result: FilterResult, client: str | None, host: str, address: str) -> bool:
        """Decide one answer address, recorded in `result`; True when it may stay."""
        d, name = (self.decide_embedded(client, host, address) if _may_embed_ipv4(address)
                   else self.decide_unnamed(client, host, address))
        result.decisions.append(d)
        result.hosts.append(name)
        (result.dropped if d.blocks else result.kept).append(address)
        return not d.blocks

    def _unreadable(self, client: str | None, query: dns.message.Message, name: str
                    ) -> FilterResult:
        """Fail closed on an answer with address records the filter cannot read: the block
        answer (SERVFAIL without a question to answer), audited as rule `unreadable-answer`."""
        log.warning("regionguard dns: answer for %s has address records that cannot be read; "
                    "blocked", name or "?")
        d = Decision(Action.BLOCK, "unreadable-answer",
                     "the answer holds address records the filter cannot read: fail closed",
                     True, host=name or None, port=DNS_PORT, transport=DNS_TRANSPORT,
                     client=client, policy_version=self.engine.policy.version_id)
        result = FilterResult(None, zoom=True, outcome=Outcome.BLOCKED, name=name or None)
        result.decisions.append(d)
        result.hosts.append(name or None)
        if query.question:
            result.message = self.block_response(query, name or None)
        else:
            r = dns.message.make_response(query)
            r.flags |= dns.flags.RA
            r.set_rcode(dns.rcode.SERVFAIL)
            result.message = r
        return result

    # --- synthesized answers ------------------------------------------------------------------

    def block_response(self, query: dns.message.Message, name: str | None = None
                       ) -> dns.message.Message:
        """The policy's block answer to `query`: NXDOMAIN with an SOA (default), NODATA,
        REFUSED, or 0.0.0.0 / :: for A / AAAA (NODATA for other types)."""
        how = self.settings.block_answer
        r = dns.message.make_response(query)
        r.flags |= dns.flags.RA
        q = query.question[0]
        if how == "refused":
            r.set_rcode(dns.rcode.REFUSED)
            return r
        if how == "zero" and q.rdtype in ADDRESS_TYPES:
            r.answer.append(dns.rrset.from_text(q.name, BLOCK_TTL, "IN", q.rdtype,
                                                "0.0.0.0" if q.rdtype == A else "::"))
            return r
        zone = self.engine.zoom.domains.match(name or _text(q.name)) or _text(q.name)
        soa = dns.rrset.from_text(dns.name.from_text(zone), BLOCK_TTL, "IN", "SOA",
                                  "blocked.regionguard.invalid. hostmaster.regionguard.invalid. "
                                  f"1 3600 600 86400 {BLOCK_TTL}")
        r.authority.append(soa)
        if how == "nxdomain":
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r

    def reroute_response(self, query: dns.message.Message,
                         target: dns.message.Message) -> dns.message.Message | None:
        """Answer `query` with the (already filtered) addresses that `target` — the response
        for the reroute alternative — holds for the type asked. None when it holds none.

        An alternative itself blocked or rerouted holds none: a reroute leaves no address of the
        type asked (see `filter`), and the only block answer with addresses, `zero`'s, holds the
        unspecified 0.0.0.0 / ::, which is nowhere to send a client whoever wrote it. So the bytes
        alone tell, fresh or from the server's answer cache."""
        q = query.question[0]
        found = [rrset for rrset in target.answer if rrset.rdtype == q.rdtype]
        rdatas = [rd for s in found for rd in s if getattr(rd, "address", None) not in _UNSPECIFIED]
        if not rdatas:
            return None
        r = dns.message.make_response(query)
        r.flags |= dns.flags.RA
        rrset = dns.rrset.RRset(q.name, q.rdclass, q.rdtype)
        rrset.update_ttl(min(s.ttl for s in found))
        for rd in rdatas:
            rrset.add(rd)
        r.answer.append(rrset)
        return r


    def reroute_answer(self, query: dns.message.Message, result: FilterResult,
                       target: dns.message.Message | None) -> dns.message.Message:
        """The answer to `query` for a REROUTE `result`: the addresses of `target` (the reroute
        alternative's answer, filtered for the same client; None when there is none) for the
        type asked, else the block answer, with `result.outcome` then BLOCKED (an alternative
        itself blocked or rerouted counts as none: see reroute_response)."""
        made = self.reroute_response(query, target) if target is not None else None
        if made is not None and made.rcode() == dns.rcode.NOERROR and made.answer:
            return made
        result.outcome = Outcome.BLOCKED
        return self.block_response(query, result.name)


def _rrset_like(rrset: dns.rrset.RRset, rdatas: list) -> dns.rrset.RRset | None:
    """`rrset`'s name, class, type and TTL with only `rdatas`; None when there are none."""
    if not rdatas:
        return None
    new = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
    new.update_ttl(rrset.ttl)
    for rd in rdatas:
        new.add(rd)
    return new


def addresses_of(rd: Any) -> list[str] | None:
    """The addresses an A, AAAA, HTTPS or SVCB rdata hands a client (for HTTPS/SVCB: its
    hints); None when the filter cannot read it: another class's A (Chaosnet), a generic
    rdata of a wrong length, an HTTPS/SVCB of an unknown class."""
    if isinstance(rd, (dns.rdtypes.IN.A.A, dns.rdtypes.IN.AAAA.AAAA)):
        return [rd.address]
    if isinstance(rd, svcb.SVCBBase):
        return list(_hints(rd))
    if isinstance(rd, GenericRdata):
        data = rd.data
        if rd.rdtype == A and len(data) == 4:
            return [socket.inet_ntop(socket.AF_INET, data)]
        if rd.rdtype == AAAA and len(data) == 16:
            return [socket.inet_ntop(socket.AF_INET6, data)]
    return None


def _hints(rd: Any) -> Iterable[str]:   # an HTTPS or SVCB rdata
    for key in HINT_KEYS:
        param = rd.params.get(key)
        if param is not None:
            yield from param.addresses


def cache_ttl(response: dns.message.Message, max_ttl: int) -> int:
    """How long a response may be cached: its smallest TTL; for NXDOMAIN and NODATA the SOA's
    negative TTL (RFC 2308: min of the SOA's TTL and MINIMUM); 0 (do not cache) for errors and
    for negative answers without an SOA. Capped at `max_ttl`."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return 0
    if rcode == dns.rcode.NXDOMAIN or not response.answer:
        for rrset in response.authority:
            if rrset.rdtype == SOA:
                return max(0, min(rrset.ttl, rrset[0].minimum, max_ttl))
        return 0
    ttls = [s.ttl for s in response.answer]
    ttls += [s.ttl for s in response.authority]
    ttls += [s.ttl for s in response.additional if s.rdtype != dns.rdatatype.OPT]
    return max(0, min(min(ttls), max_ttl))


_QTYPE_TEXT: dict[int, str] = {}   # at most 65536: types are 16 bits


def qtype_text(rdtype: int) -> str:
    """dns.rdatatype.to_text(rdtype), remembered: every audited answer names its type."""
    text = _QTYPE_TEXT.get(rdtype)
    if text is None:
        text = _QTYPE_TEXT[rdtype] = dns.rdatatype.to_text(rdtype)  # type: ignore[arg-type]
    return text


def audit_answer(audit: AuditLog, result: FilterResult, mode: str, client: str | None,
                 qname: str, qtype: int) -> None:
    """The audit record of one filtered Zoom answer: the decision that stands for it (see
    FilterResult.audited) with this answer's name as its host, the question, the client and
    what the filter did. Nothing when nothing was decided (a non-Zoom answer)."""
    found = result.audited()
    if found is None:
        return
    decision, host = found
    if audit.path is None:   # no file: only counted, the line's fields are not needed
        audit.record(decision)
        return
    audit.record(decision, mode=mode, front_end="dns", host=host,
                 dns_qname=qname.rstrip(".").lower(), dns_qtype=qtype_text(qtype),
                 dns_client=client, **result.audit_extra())
