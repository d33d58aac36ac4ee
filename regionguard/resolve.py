"""Name resolution for front ends: the policy's static hosts, then DNS through dnspython.

The policy's `resolver:` section picks the name servers (`host:port`; the system's by default)
and static `hosts` for labs and tests. Sync for the CLI, async for the mitmproxy addon.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from .hostnames import normalise_host
from .policy import ResolverSettings
from .prefixes import is_address


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
    def __init__(self, settings: ResolverSettings) -> None:
        self.settings = settings
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
        addresses: list[str] = []
        errors = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = self._sync.resolve(name, rdtype, search=False)
                addresses.extend(r.to_text() for r in answer)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as e:
                errors.append(e)
            except dns.exception.DNSException as e:
                raise ResolveError(f"{name}: {e}") from None
        if not addresses:
            raise ResolveError(f"{name}: no A or AAAA records ({errors[0] if errors else 'no answer'})")
        return Answer(normalise_host(name), tuple(addresses), "dns")

    async def aresolve(self, name: str) -> Answer:
        found = self._static(name)
        if found:
            return found
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._async.resolve(name, rdtype, search=False)
                addresses.extend(r.to_text() for r in answer)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                pass
            except dns.exception.DNSException as e:
                raise ResolveError(f"{name}: {e}") from None
        if not addresses:
            raise ResolveError(f"{name}: no A or AAAA records")
        return Answer(normalise_host(name), tuple(addresses), "dns")
