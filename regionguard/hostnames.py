"""Hostname normalisation and domain-suffix matching."""

from __future__ import annotations

from collections.abc import Iterable


def normalise_host(host: str) -> str:
    """Lower case, no trailing dot, no surrounding brackets or spaces."""
    return host.strip().strip("[]").rstrip(".").lower()


def in_domains(host: str, domains: Iterable[str]) -> bool:
    """True when `host` is one of `domains` or a subdomain of one (already normalised)."""
    for d in domains:
        if host == d or host.endswith("." + d):
            return True
    return False


class DomainSet:
    """A set of domains; membership is "the name or any parent is in the set"."""

    def __init__(self, domains: Iterable[str]) -> None:
        self._domains = frozenset(normalise_host(d) for d in domains)
        self._max_labels = max((d.count(".") + 1 for d in self._domains), default=0)

    def __contains__(self, host: str) -> bool:
        labels = normalise_host(host).split(".")
        n = len(labels)
        for i in range(max(0, n - self._max_labels), n):
            if ".".join(labels[i:]) in self._domains:
                return True
        return False

    def match(self, host: str) -> str | None:
        """The listed domain that `host` falls under, if any."""
        labels = normalise_host(host).split(".")
        n = len(labels)
        for i in range(max(0, n - self._max_labels), n):
            d = ".".join(labels[i:])
            if d in self._domains:
                return d
        return None

    def __iter__(self):
        return iter(sorted(self._domains))
