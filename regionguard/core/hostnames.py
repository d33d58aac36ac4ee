"""Hostname normalisation and domain-suffix matching."""

from __future__ import annotations

from collections.abc import Iterable

# The last name normalised and the result, as one tuple (read and replaced atomically): a DNS
# miss normalises each new name several times over (is it Zoom's, its CRC and region domains,
# its decision).
_last: tuple[str, str] = ("", "")


def normalise_host(host: str) -> str:
    """Lower case, no trailing dot, no surrounding brackets or spaces."""
    global _last
    last = _last
    if last[0] == host:
        return last[1]
    normalised = host.strip().strip("[]").rstrip(".").lower()
    _last = (host, normalised)
    return normalised


def in_domains(host: str, domains: Iterable[str]) -> bool:
    """True when `host` is one of `domains` or a subdomain of one (already normalised)."""
    for d in domains:
        if host == d or host.endswith("." + d):
            return True
    return False


class DomainSet:
    """A set of domains; membership is "the name or any parent is in the set"."""

    _ENDSWITH = 32     # up to this many domains, test str.endswith over them all first

    def __init__(self, domains: Iterable[str]) -> None:
        self._domains = frozenset(normalise_host(d) for d in domains)
        self._max_labels = max((d.count(".") + 1 for d in self._domains), default=0)
        # A label-wise match implies a plain suffix match: a name that does not end like one of
        # a few domains (most names the DNS filter sees) is turned away without a walk.
        self._ends = tuple(self._domains) if len(self._domains) <= self._ENDSWITH else ""
        # The last name asked and its answer, as one tuple (read and replaced atomically): the
        # DNS filter asks about each new name several times in a row (is it Zoom's, which Zoom
        # domain, is its region fixed by its domain).
        self._last: tuple[str, str | None] = ("", None)

    def __contains__(self, host: str) -> bool:
        return self.match(host) is not None

    def match(self, host: str) -> str | None:
        """The listed domain that `host` falls under, if any (the longest one)."""
        last = self._last
        if last[0] == host and host:
            return last[1]
        found = self._match(host)
        self._last = (host, found)
        return found

    def _match(self, host: str) -> str | None:
        domains = self._domains
        if not domains:
            return None
        host = normalise_host(host)
        if self._ends and not host.endswith(self._ends):
            return None
        # The suffixes of `host` from the one of at most _max_labels labels down to its last
        # label, longest first. Found by walking the dots rather than split and join: this runs
        # for every new name the DNS filter sees, and a join per suffix was most of its cost.
        start = 0
        for _ in range(host.count(".") + 1 - self._max_labels):
            start = host.find(".", start) + 1
        while True:
            d = host[start:] if start else host
            if d in domains:
                return d
            start = host.find(".", start) + 1
            if not start:
                return None

    def __iter__(self):
        return iter(sorted(self._domains))
