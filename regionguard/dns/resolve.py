"""Name resolution for front ends: the policy's static hosts, then DNS through dnspython.

The policy's `resolver:` section picks the name servers (`host:port`; the system's by default)
and static `hosts` for labs and tests. Sync for the CLI, async for the mitmproxy addon.

With a LearnedStore, every answer a name server gave is observed (regionguard/core/learned.py): this
is regionguard's own resolution, so a site-coded Zoom name in it places the addresses it maps
to. The policy's static `hosts` and literal addresses teach nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from regionguard.core.hostnames import normalise_host
from regionguard.core.learned import LearnedStore
from regionguard.core.policy import ResolverSettings
from regionguard.core.prefixes import is_address

ADDRESS_TYPES = ("A", "AAAA")
STATIC_TTL = 60          # the TTL of an answer made from the policy's static hosts


class ResolveError(Exception):
    """The name could not be resolved (no such name, no answer, or no server answered)."""


@dataclass(frozen=True, slots=True)
class Answer:
    name: str
    addresses: tuple[str, ...]
    source: str          # "hosts" | "dns" | "literal"


def _configure(resolver: dns.resolver.Resolver, settings: ResolverSettings) -> None:
    if settings.nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in settings.nameservers]
    resolver.lifetime = settings.timeout
    resolver.timeout = min(settings.timeout, 2.0)


class NameResolver:
    def __init__(self, settings: ResolverSettings, learned: LearnedStore | None = None,
                 source: str = "proxy resolver") -> None:
        self.settings = settings
        self.learned = learned
        servers = ", ".join(f"{h}:{p}" for h, p in settings.nameservers) or "system resolver"
        self.source = f"{source} ({servers})"
        configure = not settings.nameservers
        try:
            self._sync = dns.resolver.Resolver(configure=configure)
            self._async = dns.asyncresolver.Resolver(configure=configure)
        except dns.resolver.NoResolverConfiguration:  # no /etc/resolv.conf: fall back to loopback
            self._sync = dns.resolver.Resolver(configure=False)
            self._async = dns.asyncresolver.Resolver(configure=False)
            self._sync.nameservers = self._async.nameservers = ["127.0.0.1"]
        _configure(self._sync, settings)
        _configure(self._async, settings)

    def _static(self, name: str) -> Answer | None:
        if is_address(name):
            return Answer(name, (name,), "literal")
        key = normalise_host(name)
        if key in self.settings.hosts:
            return Answer(key, self.settings.hosts[key], "hosts")
        return None

    def resolve(self, name: str) -> Answer:
        found = self._static(name)
        if found:
            return found
        # One deadline for both look-ups: the timeout is the command's, not each type's (A then
        # AAAA with the full lifetime each took twice the time the error message reported).
        deadline = time.monotonic() + self.settings.timeout
        outcomes: list[dns.resolver.Answer | dns.exception.DNSException] = []
        for rdtype in ADDRESS_TYPES:
            try:
                outcomes.append(self._sync.resolve(name, rdtype, search=False,
                                                   lifetime=max(deadline - time.monotonic(), 0.05)))
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as e:
                outcomes.append(e)
            except dns.exception.DNSException as e:
                outcomes.append(e)
                break   # a server failure fails the name (_answer): the other type cannot help
        self._observe(outcomes)
        return _answer(name, outcomes)

    async def aresolve(self, name: str) -> Answer:
        found = self._static(name)
        if found:
            return found
        # A and AAAA at once: a proxy waits for this before it may connect
        outcomes = await asyncio.gather(
            *(self._async.resolve(name, rdtype, search=False) for rdtype in ADDRESS_TYPES),
            return_exceptions=True)
        self._observe(outcomes)
        return _answer(name, outcomes)

    def _observe(self, outcomes: Iterable[object]) -> None:
        """Teach the learned store what the name servers answered (names with a site code)."""
        learned = self.learned
        if learned is None:
            return
        records = [(rrset.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(rrset.rdtype),
                    rd.to_text())
                   for outcome in outcomes if isinstance(outcome, dns.resolver.Answer)
                   for rrset in outcome.response.answer for rd in rrset]
        if records:
            learned.observe_records(records, self.source)

    async def aquery(self, name: str, rdtype: int) -> dns.message.Message | None:
        """The answer message for (name, rdtype), as a DNS front end relays it: from the static
        hosts when they know the name (A and AAAA only), else from the name servers. None when
        no server answered."""
        found = self._static(name)
        if found is not None:
            response = dns.message.make_response(dns.message.make_query(name, rdtype))
            wanted = [a for a in found.addresses
                      if (rdtype == dns.rdatatype.AAAA) == (":" in a)]
            if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and wanted:
                response.answer.append(dns.rrset.from_text_list(
                    response.question[0].name, STATIC_TTL, "IN", rdtype, wanted))
            return response
        try:
            answer = await self._async.resolve(name, rdtype, search=False,
                                               raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            return e.response(e.qnames()[0])
        except dns.exception.DNSException:
            return None
        return answer.response


def _answer(name: str, outcomes: Iterable[object]) -> Answer:
    """The addresses of the A and AAAA lookups' outcomes (an answer or the exception raised).
    A missing type is fine; a server failure is a ResolveError, as is finding nothing."""
    addresses: list[str] = []
    missing: list[BaseException] = []
    for outcome in outcomes:
        if isinstance(outcome, (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN)):
            missing.append(outcome)
        elif isinstance(outcome, BaseException):
            raise ResolveError(f"{name}: {outcome}") from None
        else:
            addresses.extend(r.to_text() for r in outcome)
    if not addresses:
        raise ResolveError(f"{name}: no A or AAAA records ({missing[0] if missing else 'no answer'})")
    return Answer(normalise_host(name), tuple(addresses), "dns")
