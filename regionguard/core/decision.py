"""The decision engine: one pure function from a connection to a Decision.

Design rules (the invariants every front end — proxy addon, DNS filter, replay — relies on):

1. `Engine.decide()` is pure: the same policy, data and arguments give the same Decision. It does
   no I/O (no DNS, no sockets); names are resolved by the caller, which passes the address.
   Memoised locator lookups are its only state, so it is safe to call from many threads.
2. Non-Zoom destinations are not regionguard's business: action PASS, nothing else consulted.
3. Fail closed: a Zoom endpoint whose region no trusted source proves gets the policy's
   `actions.unknown` (block by default). An exception inside a front end must also block Zoom
   traffic (front ends wrap `decide`; see `Engine.decide_safely`).
4. Zoom's hard rules come first and cannot be relaxed by scope: a China tunnel server is always
   blocked; clients outside China never reach CN, whatever the service.
5. The address decides the region, not the name: a hostname only adds weak evidence, so an SNI
   naming an allowed host cannot carry a connection to an address in a disallowed region.
   The service class (port first, then name) decides the scope: a class in the policy's
   `scope.governed` (by default those Zoom's region setting governs) is held to the allowed
   regions; the rest of Zoom's traffic gets `scope.other` (allow and audit, by default). Only
   names a rule in config/zoom.yaml recognises leave the governed scope; an unrecognised one is
   `unknown-service`, governed.
6. Every Decision names the rule that decided and carries the evidence, so it can be explained
   and audited without recomputation.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from regionguard.core.evidence import Location
from regionguard.core.hostnames import normalise_host
from regionguard.core.learned import LearnedStore
from regionguard.core.locator import Locator
from regionguard.core.policy import CHINA, Policy, Rules, load_policy
from regionguard.core.rtt import RttStore
from regionguard.core.zoom import Classification, ZoomCatalogue, embedded_ipv4

log = logging.getLogger(__name__)

GOVERNED = "governed"      # a class the policy's allowed regions hold (scope.governed)
OTHER = "other"            # the rest of Zoom's traffic: scope.other decides
# TCP 443 to a meeting server: Zoom removed these HTTPS tunnel servers in mainland China.
CN_TUNNEL_SERVICES = frozenset({"tunnel", "zone-controller"})


class Action(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    REROUTE = "reroute"
    MONITOR = "monitor"   # let through, record what would have happened
    PASS = "pass"         # not Zoom: untouched


# The actions that keep a connection from its address (Decision.blocks): for front ends that
# test many decisions at once, e.g. the DNS filter, one per answer address.
BLOCKING = (Action.BLOCK, Action.REROUTE)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    rule: str
    reason: str
    zoom: bool
    service: str | None = None
    region: str | None = None
    country: str | None = None
    group: str | None = None
    would: Action | None = None          # for MONITOR: what enforcement would have done
    host: str | None = None
    address: str | None = None
    port: int | None = None
    transport: str = "tcp"
    client: str | None = None
    policy_version: str = ""
    location: Location | None = field(default=None, compare=False)
    zoom_why: str = ""
    scope: str | None = None             # GOVERNED | OTHER for Zoom traffic, None when not Zoom

    @property
    def blocks(self) -> bool:
        return self.action in BLOCKING

    def with_host(self, host: str | None) -> Decision:
        """This decision for another name: dataclasses.replace(self, host=host) at half the
        cost, which the DNS filter pays for every address of every new Zoom name. Lists every
        field; tests/test_core_decision.py checks that it stays equal to dataclasses.replace."""
        return Decision(self.action, self.rule, self.reason, self.zoom, self.service, self.region,
                        self.country, self.group, self.would, host, self.address, self.port,
                        self.transport, self.client, self.policy_version, self.location,
                        self.zoom_why, self.scope)

    @property
    def evidence_source(self) -> str | None:
        loc = self.location
        return loc.chosen.source if loc is not None and loc.chosen is not None else None

    def to_dict(self) -> dict:
        loc = self.location
        chosen = loc.chosen if loc is not None else None
        return {
            "action": str(self.action),
            "rule": self.rule,
            "reason": self.reason,
            "would": str(self.would) if self.would else None,
            "zoom": self.zoom,
            "zoom_why": self.zoom_why,
            "service": self.service,
            "scope": self.scope,
            "region": self.region,
            "country": self.country,
            "group": self.group,
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "transport": self.transport,
            "client": self.client,
            "policy_version": self.policy_version,
            "evidence_source": chosen.source if chosen else None,
            "evidence_dataset": chosen.dataset if chosen else None,
            "evidence_date": chosen.date if chosen else None,
            "evidence_matched": chosen.matched if chosen else None,
            "conflict": loc.conflict if loc is not None else False,
        }


class Engine:
    """A policy, the locator over its evidence, and Zoom's catalogue: everything `decide` needs."""

    def __init__(self, policy: Policy, locator: Locator | None = None,
                 zoom: ZoomCatalogue | None = None, *, learned: LearnedStore | None = None,
                 rtt: RttStore | None = None) -> None:
        self.policy = policy
        self.zoom = zoom or ZoomCatalogue.load()
        # `learned`: what regionguard's own resolutions taught (regionguard/core/learned.py). The
        # front ends observe into it; the locator reads it. None: the source is off.
        self.learned = learned
        if learned is not None and policy.evidence.learned_ttl_days is not None:
            learned.set_ttl(policy.evidence.learned_ttl_days)
        # Round-trip times (regionguard/core/rtt.py): kept with the learned evidence, or in
        # memory when the front end keeps no state; None when the policy measures nothing.
        if rtt is None and policy.evidence.rtt != "off":
            rtt = learned.rtt if learned is not None else RttStore.in_memory()
        self.rtt = rtt if policy.evidence.rtt != "off" else None
        self.locator = locator or Locator.for_policy(policy, self.zoom, learned=learned,
                                                     rtt=self.rtt)
        self._memo: dict[tuple, Decision] = {}
        self._memo_get = self._memo.get
        self._memo_size = 50_000
        if learned is not None or getattr(self.locator, "rtt", None) is not None:
            # A new sighting can change any decision about its address (or block): forget
            # them when the locator forgets its own.
            self.locator.also_forget(self._memo.clear)

    @classmethod
    def from_policy_file(cls, path: str | Path, *, learned: LearnedStore | None = None) -> Engine:
        return cls(load_policy(path), learned=learned)

    # --- the decision ----------------------------------------------------------------------

    def decide(self, client: str | None, host: str | None, address: str | None, port: int,
               transport: str = "tcp") -> Decision:
        """Decide one connection (or request). `host` is the hostname or SNI, if any.

        Memoised on all five arguments (bounded): the answer depends on nothing else."""
        key = (client, host, address, port, transport)
        decision = self._memo_get(key)
        if decision is None:
            decision = self._decide(client, host, address, port, transport)
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[key] = decision
        return decision

    def _decide(self, client: str | None, host: str | None, address: str | None, port: int,
                transport: str) -> Decision:
        host = normalise_host(host) if host else None
        if host and host == address:
            host = None
        # An IPv6 address that embeds an IPv4 one (mapped, compatible, NAT64 64:ff9b::) reaches
        # that IPv4 host, so it is placed and classed as the IPv4 address: on a DNS64 network
        # Zoom's synthesized AAAA answers are decided like the A records they come from.
        located = embedded_ipv4(address) if address and ":" in address else None
        located = located or address
        location = self.locator.locate(located, host)
        cls = self.zoom.classify(host, located, port, transport, location.zoom)
        base = dict(host=host, address=address, port=port, transport=transport, client=client,
                    policy_version=self.policy.version_id, zoom_why=cls.why)
        if not cls.zoom:
            return Decision(Action.PASS, "not-zoom", cls.why, False, **base)
        rules = self.policy.rules_for(client)
        return self._decide_zoom(rules, cls, location, base)

    def _decide_zoom(self, rules: Rules, cls: Classification, loc: Location, base: dict) -> Decision:
        scope = GOVERNED if cls.service in rules.governed else OTHER

        def make(action: Action, rule: str, reason: str, would: Action | None = None) -> Decision:
            return Decision(action, rule, reason, True, cls.service, loc.region, loc.country,
                            rules.name, would, location=loc, scope=scope, **base)

        region = loc.region
        where = loc.summary()
        if scope == OTHER and rules.other_action == "block":
            return make(Action.BLOCK, "out-of-scope",
                        f"service {cls.service} is outside the policy's governed scope and "
                        f"scope.other is block; {where}")
        if region == CHINA and cls.service in CN_TUNNEL_SERVICES:
            return make(Action.BLOCK, "cn-tunnel-removed",
                        f"Zoom removed its HTTPS tunnel servers in mainland China; {where}")
        if region == CHINA and rules.location == "outside-china":
            return self._disallowed(rules, make, "outside-china-never-cn",
                                    f"clients outside China are never routed to China; {where}")
        if scope == GOVERNED:
            return self._held(rules, make, loc, where)
        if rules.other_action == "allow":
            return make(Action.ALLOW, "out-of-scope",
                        f"service {cls.service} is outside the policy's governed scope "
                        f"(scope.other: allow); {where}")
        # monitor: the region rules decide, and what they would stop is let through and marked
        held = self._held(rules, make, loc, where)
        if not held.blocks:
            return held
        return make(Action.MONITOR, held.rule, f"{held.reason}; not enforced: service "
                    f"{cls.service} is outside the governed scope (scope.other: monitor)",
                    would=held.action)

    def _held(self, rules: Rules, make, loc: Location, where: str) -> Decision:
        """The region rules: unknown, conflicts, allowed or not."""
        region = loc.region
        if not loc.known:
            reason = f"region of this Zoom endpoint is unknown ({where})"
            if rules.unknown_action == "allow":
                return make(Action.ALLOW, "unknown-region", reason)
            if rules.unknown_action == "monitor":
                return make(Action.MONITOR, "unknown-region", reason, would=Action.BLOCK)
            return make(Action.BLOCK, "unknown-region", reason)
        if loc.conflict and self.policy.evidence.conflicts == "strict":
            bad = sorted(r or "no-region" for r in {e.region for e in loc.evidence
                                                   if e.places and e.confidence
                                                   >= self.policy.evidence.min_confidence}
                         if r not in rules.allowed)
            physics = next((r for r in loc.rivals if r.startswith("rtt: ")), None)
            if physics is not None:
                # a claim that physics rules out: some source is wrong about this address, and
                # strict does not pick a side
                claims = sorted({e.region for e in loc.evidence if e.region is not None
                                 and e.within is None and e.confidence
                                 >= self.policy.evidence.min_confidence})
                return make(Action.BLOCK, "conflict-strict",
                            f"a source places it in {', '.join(claims)}, which the measured "
                            f"round trip rules out ({physics}; evidence.conflicts: strict); "
                            f"{where}")
            if bad:
                return make(Action.BLOCK, "conflict-strict",
                            f"sources disagree and some place it in {', '.join(bad)}, "
                            f"which is not allowed (evidence.conflicts: strict); {where}")
        if region is not None and region in rules.allowed:
            return make(Action.ALLOW, "region-allowed", f"{region} is allowed; {where}")
        if region is None:
            return self._disallowed(rules, make, "no-zoom-region",
                                    f"located in {loc.country}, where Zoom has no data-center "
                                    f"region; {where}")
        return self._disallowed(rules, make, "region-disallowed",
                                f"{region} is not in the allowed set "
                                f"({', '.join(sorted(rules.allowed))}); {where}")

    # --- round-trip times (regionguard/core/rtt.py) --------------------------------------------

    def observe_rtt(self, client: str | None, address: str, rtt_ms: float, how: str) -> bool:
        """One RTT sample to `address`, measured for `client` (from its group's site). True
        when it tightened what is known. Nothing is kept when the policy measures nothing or
        the client's site is unknown."""
        if self.rtt is None:
            return False
        site = self.policy.site_for(client)
        if site is None:
            return False
        return self.rtt.observe(site, address, rtt_ms, how)

    def wants_probe(self, client: str | None, host: str | None, address: str | None, port: int,
                    transport: str = "tcp") -> bool:
        """`evidence.rtt: probe`: whether to measure `address` before deciding this connection:
        a governed Zoom connection to an address no trusted source places, never measured from
        the client's site. (The decision asked here is memoised; a measurement drops it.)"""
        if self.rtt is None or address is None or self.policy.evidence.rtt != "probe":
            return False
        site = self.policy.site_for(client)
        if site is None or self.rtt.measured(site, embedded_ipv4(address) or address) is not None:
            return False
        d = self.decide_safely(client, host, address, port, transport)
        return d.zoom and d.scope == GOVERNED and d.location is not None and not d.location.known

    @staticmethod
    def _disallowed(rules: Rules, make, rule: str, reason: str) -> Decision:
        if rules.disallowed_action == "monitor":
            return make(Action.MONITOR, rule, reason, would=Action.BLOCK)
        if rules.disallowed_action == "reroute":
            return make(Action.REROUTE, rule, reason)
        return make(Action.BLOCK, rule, reason)

    def decide_safely(self, client: str | None, host: str | None, address: str | None, port: int,
                      transport: str = "tcp") -> Decision:
        """`decide`, but an internal error blocks Zoom endpoints instead of propagating."""
        try:
            return self.decide(client, host, address, port, transport)
        except Exception as e:  # noqa: BLE001 - fail closed, and say why
            log.exception("regionguard: decision failed for %s %s", host, address)
            if not self.is_zoom(host, address):
                return Decision(Action.PASS, "not-zoom", "not a Zoom domain or range", False,
                                host=host, address=address, port=port, transport=transport,
                                client=client, policy_version=self.policy.version_id)
            return Decision(Action.BLOCK, "internal-error", f"decision failed ({e!r}): fail closed",
                            True, host=host, address=address, port=port, transport=transport,
                            client=client, policy_version=self.policy.version_id)

    # --- helpers for front ends -------------------------------------------------------------

    def choose(self, client: str | None, host: str | None, addresses: Sequence[str], port: int,
               transport: str = "tcp") -> tuple[str | None, list[Decision]]:
        """Decide every candidate address of a name; return the first one that may be used
        (allowed, monitored or pass) and all decisions, in order. None when none may."""
        decisions = [self.decide_safely(client, host, a, port, transport) for a in addresses]
        for a, d in zip(addresses, decisions, strict=True):
            if not d.blocks:
                return a, decisions
        return None, decisions

    def reroute_target(self, host: str | None) -> str | None:
        """The alternative the policy names for this host (`reroute:` entries), if any."""
        if not host:
            return None
        host = normalise_host(host)
        for r in self.policy.reroute:
            if host == r.match or fnmatch.fnmatchcase(host, r.match):
                return r.to
        return None

    def is_zoom(self, host: str | None = None, address: str | None = None) -> bool:
        """Zoom's by domain, published range, or a policy override saying `zoom: true` (so a
        front end's fail-closed path also covers the endpoints a policy declares Zoom's). An
        IPv6 address that embeds an IPv4 one (::ffff:a.b.c.d, ::a.b.c.d, 64:ff9b::a.b.c.d) is
        also tested as that IPv4 address, as `decide` places it."""
        if self.zoom.is_zoom_host(host) or self.zoom.range_of(address) is not None:
            return True
        v4 = embedded_ipv4(address) if address else None
        return any(o.zoom and (_override_matches(o, host, address)
                               or (v4 is not None and _override_matches(o, None, v4)))
                   for o in self.policy.overrides)


def _override_matches(override, host: str | None, address: str | None) -> bool:
    if override.is_network:
        try:
            return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(
                override.match)
        except ValueError:
            return False
    if not host:
        return False
    host = normalise_host(host)
    return host == override.match or fnmatch.fnmatchcase(host, override.match)

