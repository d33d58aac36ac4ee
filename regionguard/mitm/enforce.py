"""From a connection to what a front end must do: resolve, decide, pick an address to pin, reroute.

A front end (the mitmproxy addon) knows a hostname, an address, or both; this module turns that
into a Verdict: the one Decision to audit, and the checked address to connect to (None = block).
It never imports mitmproxy, so it is tested and benchmarked like the rest of the core.

Why pin: mitmproxy resolves names itself after the `server_connect` hook, so a connection could
land on an address nobody checked. The verdict names the checked address and the front end
connects there, nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from dataclasses import dataclass

from regionguard.core.decision import OTHER, Action, Decision, Engine
from regionguard.core.prefixes import is_address
from regionguard.dns.resolve import NameResolver, ResolveError
from regionguard.probe.tcp import Prober


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision                 # the decision to audit and show (action = what happens)
    address: str | None                # the checked address to connect to; None: block
    rerouted_to: str | None = None     # "name address" when a reroute picked another address

    @property
    def blocked(self) -> bool:
        return self.address is None


def plain_address(address: str | None) -> str | None:
    """'::ffff:127.0.0.1' → '127.0.0.1' (dual-stack sockets report IPv4 peers this way)."""
    if not address or (":" not in address):   # IPv4 or a name: nothing to unwrap (the fast path)
        return address
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def reaches_proxy_host(address: str | None) -> bool:
    """Does a connection to this address land on the proxy host itself: loopback (127/8, ::1),
    link-local (169.254/16, fe80::/10) or unspecified (0.0.0.0, ::, which connect locally), in
    IPv4-mapped form too?"""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(plain_address(address) or "")
    except ValueError:
        return False
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def is_remote_client(client: str | None) -> bool:
    """A client on another host (not loopback); unknown counts as remote (the stricter case)."""
    try:
        return not ipaddress.ip_address(plain_address(client) or "").is_loopback
    except ValueError:
        return True


def _blocked(decision: Decision, why: str) -> Decision:
    return dataclasses.replace(decision, action=Action.BLOCK, reason=f"{decision.reason}; {why}")


def _resolve_failure(engine: Engine, client: str | None, host: str, port: int, transport: str,
                     error: Exception) -> Decision:
    zoom = engine.is_zoom(host)
    action = Action.BLOCK if zoom else Action.PASS
    return Decision(action, "resolve-failed" if zoom else "not-zoom",
                    f"cannot resolve {host}: {error}" + ("; a Zoom name fails closed" if zoom else ""),
                    zoom, host=host, port=port, transport=transport, client=client,
                    policy_version=engine.policy.version_id)


class Enforcer:
    """Decides connections for one engine and its policy's resolver."""

    def __init__(self, engine: Engine, resolver: NameResolver | None = None,
                 prober: Prober | None = None) -> None:
        self.engine = engine
        self.resolver = resolver or NameResolver(engine.policy.resolver, engine.learned)
        # evidence.rtt: probe: measure an address no trusted source places before deciding it
        self.prober = prober if engine.policy.evidence.rtt == "probe" else None

    async def _probe_first(self, client: str | None, host: str | None, addresses, port: int) -> None:
        """One round trip to each address that wants one (first contact, placed by no trusted
        source), all at once; the answers are kept with the learned evidence, so the decision
        that follows (and every later one) has them."""
        prober, engine = self.prober, self.engine
        wanted = [a for a in addresses if engine.wants_probe(client, host, a, port)]
        if prober is None or not wanted:
            return
        samples = await asyncio.gather(*(prober.measure(a, port) for a in wanted))
        for sample in samples:
            if sample is not None and sample.rtt_ms is not None:
                engine.observe_rtt(client, sample.address, sample.rtt_ms, "probe")

    async def verdict(self, client: str | None, host: str | None, address: str | None, port: int,
                      transport: str = "tcp") -> Verdict:
        """Decide a connection to `address` (if known) for `host` (name or SNI, if known).

        With an address, the address decides (a name or SNI only adds weak evidence). With only a
        name, every address it resolves to is decided and the first usable one is pinned.
        Whatever it is, a remote client never reaches the proxy host's own loopback or
        link-local services unless the policy's `gateway.allow_proxy_host` says so."""
        verdict = await self._verdict(client, host, address, port, transport)
        if (verdict.address is not None and reaches_proxy_host(verdict.address)
                and not self.engine.policy.gateway.allow_proxy_host and is_remote_client(client)):
            d = verdict.decision
            return Verdict(dataclasses.replace(
                d, action=Action.BLOCK, rule="proxy-host", would=None,
                reason=f"{verdict.address} is the proxy host itself, which remote clients may not "
                       "reach (the policy's gateway.allow_proxy_host is off)"), None)
        return verdict

    async def _verdict(self, client: str | None, host: str | None, address: str | None, port: int,
                       transport: str) -> Verdict:
        engine = self.engine
        client = plain_address(client)
        address = plain_address(address)
        if host and is_address(host):
            address, host = address or plain_address(host), None
        if address:
            if self.prober is not None and transport == "tcp":
                await self._probe_first(client, host, (address,), port)
            decisions = [await self._decide_claimed(client, host, address, port, transport)]
            usable = None if decisions[0].blocks else address
        else:
            if not host:
                d = Decision(Action.BLOCK, "no-destination", "neither address nor name known",
                             False, port=port, transport=transport, client=client,
                             policy_version=engine.policy.version_id)
                return Verdict(d, None)
            try:
                answer = await self.resolver.aresolve(host)
            except (ResolveError, OSError) as e:
                d = _resolve_failure(engine, client, host, port, transport, e)
                return Verdict(d, None)
            if self.prober is not None and transport == "tcp":
                await self._probe_first(client, host, answer.addresses, port)
            usable, decisions = engine.choose(client, host, answer.addresses, port, transport)
        first = decisions[0]
        if usable is not None:
            chosen = next(d for d in decisions if d.address == usable)
            if first.action is Action.REROUTE:   # the name's first answer was disallowed
                return Verdict(first, usable, f"{host} {usable}")
            return Verdict(chosen, usable)
        if not any(d.action is Action.REROUTE for d in decisions):
            return Verdict(first, None)
        # Reroute: an allowed address of the same name, else the alternative the policy names.
        candidates = []
        if address and host:
            candidates.append(host)
        target = engine.reroute_target(host)
        if target and target not in candidates:
            candidates.append(target)
        for name in candidates:
            try:
                answer = await self.resolver.aresolve(name)
            except (ResolveError, OSError):
                continue
            alt, _ = engine.choose(client, name, answer.addresses, port, transport)
            if alt is not None:
                return Verdict(first, alt, f"{name} {alt}")
        return Verdict(_blocked(first, "reroute found no address in an allowed region"), None)

    async def _decide_claimed(self, client: str | None, host: str | None, address: str, port: int,
                              transport: str) -> Decision:
        """Decide a connection to a known address that arrives with a name (an SNI or Host the
        client sent). The name is the client's claim: it may add weak evidence, but it may only
        move the connection out of the governed scope (a web name for a meeting server's
        address) when regionguard's own resolution of the name reaches that address. Otherwise
        the connection is decided as the address alone would be."""
        engine = self.engine
        named = engine.decide_safely(client, host, address, port, transport)
        if not host or not named.zoom or named.scope != OTHER:
            return named
        unnamed = engine.decide_safely(client, None, address, port, transport)
        if unnamed.scope == named.scope:
            return named
        try:
            answer = await self.resolver.aresolve(host)
            confirmed = address in {plain_address(a) for a in answer.addresses}
        except (ResolveError, OSError):
            confirmed = False
        if confirmed:
            return named
        return dataclasses.replace(
            unnamed, host=host,
            reason=f"{unnamed.reason}; the name {host} is the client's claim, and regionguard's "
                   f"own resolution of it does not reach {address}, so it does not decide the "
                   "service")
