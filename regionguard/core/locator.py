"""The locator: address (IPv4/IPv6) and optional hostname → Location, from layered evidence.

Design rules:
- Every source answers independently; the locator never invents an answer. An address that no
  trusted source places is *unknown* (region None, chosen None), never a guess.
- Precedence is the policy's `evidence.precedence` order; a source left out of it is off.
  Answers below `evidence.min_confidence` are reported but never decide and never conflict.
- A conflict is two trusted answers that disagree on the Zoom region. The Location says so;
  what to do about it is the decision engine's business.
- All static sources are merged once into one PrefixTable whose values are tuples of Evidence
  already in precedence order, so an uncached lookup is one bisect plus the per-address sources.
- Lookups are memoised (bounded); a Locator is immutable and safe to share between threads.
"""

from __future__ import annotations

import logging
import socket
from bisect import bisect_right as _bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from regionguard.core.errors import Problem
from regionguard.core.evidence import Evidence, Location
from regionguard.core.hostnames import normalise_host
from regionguard.core.learned import SPREAD_V4, SPREAD_V6, LearnedStore, block_end, block_of
from regionguard.core.paths import data_dir
from regionguard.core.policy import SOURCES, EvidenceSettings, Policy
from regionguard.core.prefixes import address_key, merge
from regionguard.core.regions import Catalogue
from regionguard.core.rtt import RttSource, RttStore
from regionguard.core.sources import (
    AwsSource,
    CloudLocations,
    CountryFallbackSource,
    GeofeedSource,
    GeoIPSource,
    HostnameSource,
    OracleSource,
    OverrideSource,
    StaticSource,
    ZoomDataCenterSource,
)
from regionguard.core.zoom import ZoomCatalogue

log = logging.getLogger(__name__)

_V4_BASE = 0xFFFF_0000_0000  # as in prefixes.address_key, inlined on the hot path
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes
_S4, _S6 = 32 - SPREAD_V4, 128 - SPREAD_V6   # learned.block_of's shifts, inlined below


class AddressSource(Protocol):
    name: str

    def lookup(self, address: str) -> Evidence | None: ...


class HostSource(Protocol):
    name: str

    def lookup_host(self, host: str) -> Evidence | None:
        """Evidence from a name, normalised by the caller (normalise_host)."""


class _Static(NamedTuple):
    """The merged static answers for one interval, already concluded."""

    evidence: tuple[Evidence, ...]
    chosen: Evidence | None
    regions: frozenset[str | None]
    zoom: bool | None
    location: Location


def _location(evidence: tuple[Evidence, ...], chosen: Evidence | None, regions, zoom,
              minimum: float) -> Location:
    if chosen is None:
        return Location(None, None, None, evidence, False, zoom)
    contradiction = _physics_rival(evidence, minimum)
    if len(regions) <= 1 and contradiction is None:
        return Location(chosen.region, chosen.country, chosen, evidence, False, zoom)
    # Only accepted answers (at or above min_confidence) conflict, so only they are named.
    rivals = {e.place for e in evidence
              if e.confidence >= minimum and e.places and e.region != chosen.region}
    if contradiction is not None:
        rivals.add(contradiction)
    return Location(chosen.region, chosen.country, chosen, evidence, True, zoom,
                    tuple(sorted(rivals)))


def _physics_rival(evidence: tuple[Evidence, ...], minimum: float) -> str | None:
    """When a measured round trip rules out a region a trusted source claims: how a conflict
    names it (`rtt: only DE within reach`). None when physics contradicts no claim."""
    bound = None
    for e in evidence:
        if e.within is not None:
            bound = e.within if bound is None else bound & e.within
    if bound is None:
        return None
    if not any(e.region is not None and e.region not in bound and e.confidence >= minimum
               for e in evidence):
        return None
    return "rtt: " + (f"only {'/'.join(sorted(bound))} within reach" if bound
                      else "no Zoom site within reach")


_NOTHING = _Static((), None, frozenset(), None, Location(None, None, None, (), False, None))


class Locator:
    def __init__(self, static: Sequence[StaticSource], per_address: Sequence[AddressSource],
                 per_host: Sequence[HostSource], settings: EvidenceSettings | None = None,
                 memo_size: int = 200_000, problems: Sequence[Problem] = (),
                 learned: LearnedStore | None = None) -> None:
        # (the `rtt` source is a per-address source; for_policy adds it when evidence.rtt is on)
        settings = settings or EvidenceSettings()
        rank = {name: i for i, name in enumerate(settings.precedence)}
        self._rank = rank
        self.settings = settings
        self.problems = tuple(problems)
        self.static = sorted((s for s in static if s.name in rank), key=lambda s: rank[s.name])
        self.per_address = [s for s in per_address if s.name in rank]
        self.per_host = [s for s in per_host if s.name in rank]
        self._min_confidence = settings.min_confidence
        merged = merge([s.table for s in self.static])
        resolved: dict[int, _Static] = {}
        self._starts, self._ends, values = merged.arrays()
        self._values = [resolved.get(id(v)) or resolved.setdefault(id(v), self._resolve_static(v))
                        for v in values]
        # Per-address sources that rank after every static one can be appended without a sort.
        last_static = max((rank[s.name] for s in self.static), default=-1)
        self._needs_sort = any(rank[s.name] < last_static for s in self.per_address)
        self._memo: dict[object, Location] = {}
        # interval index → id(answer) → Location. Only used when the one per-address source
        # interns its answers (they live as long as the source, so id() is a sound key); the
        # size is bounded by intervals × distinct answers.
        self._shared: dict[int, dict[int, Location]] = {}
        single = self.per_address[0] if len(self.per_address) == 1 else None
        self._single = single.lookup if single is not None and getattr(single, "interned", False) else None
        self._memo_size = memo_size
        # Learned evidence (regionguard/core/learned.py): read from the store's in-memory snapshot;
        # the store says when it changed, and the memos are dropped. Without a store the plain
        # `_locate` runs, untouched.
        self.learned = learned if learned is not None and "learned" in rank else None
        self._spread_ok: dict[int, bool] = {}
        # id(learned answers) → id(other answers' Location) → (that Location, the answers, merged)
        self._learned_memo: dict[int, dict[int, tuple[Location, tuple, Location]]] = {}
        self._also_forget: list[Callable[[], None]] = []
        if self.learned is not None:
            self.learned.subscribe(self._learned_changed)
            self._locate = self._locate_learned  # type: ignore[method-assign]
        self.rtt: RttSource | None = next((s for s in self.per_address
                                           if isinstance(s, RttSource)), None)
        if self.rtt is not None:
            self.rtt.store.subscribe(self._rtt_changed)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def for_policy(cls, policy: Policy, zoom: ZoomCatalogue | None = None,
                   data: Path | None = None, log_problems: bool = True,
                   learned: LearnedStore | None = None, rtt: RttStore | None = None) -> Locator:
        """Every source the policy asks for, over the bundled data in `data` (config/data), and
        what `learned` remembers of names regionguard resolved (when the policy wants `learned`).
        Problems found are logged as warnings unless the caller shows them itself."""
        data = data or data_dir()
        catalogue: Catalogue = policy.catalogue
        zoom = zoom or ZoomCatalogue.load()
        wanted = set(policy.evidence.precedence)
        static: list[StaticSource] = []
        per_address: list[AddressSource] = []
        per_host: list[HostSource] = []
        problems: list[Problem] = list(policy.warnings)

        overrides = OverrideSource(policy.overrides, f"overrides in {Path(policy.path).name}")
        static.append(overrides)
        if overrides.has_host_rules:
            per_host.append(overrides)
        if policy.data.datacenters and "zoom-dc" in wanted:
            static.append(ZoomDataCenterSource(data / "zoom-datacenters.csv"))
        if policy.data.cloud and "cloud" in wanted:
            locations = CloudLocations(data / "cloud-regions.csv")
            static.append(AwsSource(data / "aws-ip-ranges.json", locations, catalogue))
            static.append(OracleSource(data / "oracle-public_ip_ranges.json", locations, catalogue))
        if "geofeed" in wanted:
            for path in policy.data.geofeeds:
                feed = GeofeedSource(path, catalogue)
                problems.extend(feed.problems)
                static.append(feed)
        if "geoip" in wanted:
            for path in policy.data.geoip:
                try:
                    per_address.append(GeoIPSource(path, catalogue))
                except Exception as e:  # a damaged database must not stop the service
                    problems.append(Problem(str(path), "data.geoip", f"cannot open: {e}",
                                            "point data.geoip at a MaxMind-format .mmdb file"))
        if "hostname" in wanted:
            per_host.append(HostnameSource(data / "site-codes.csv", zoom.domain_regions,
                                           zoom.domains, catalogue))
        if "fallback" in wanted:
            try:
                per_address.append(CountryFallbackSource(catalogue))
            except ImportError as e:
                problems.append(Problem("iptocc", "evidence.precedence",
                                        f"offline country fallback unavailable: {e}",
                                        "pip install iptocc"))
        if rtt is not None and policy.evidence.rtt != "off" and "rtt" in wanted:
            measuring = {r.site for r in (policy.rules, *policy.groups) if r.site is not None}
            per_address.append(RttSource(rtt, countries=_sole_country(catalogue),
                                         measuring=measuring))
        for p in problems if log_problems else ():
            log.warning("%s", p)
        return cls(static, per_address, per_host, policy.evidence, problems=problems,
                   learned=learned)

    # --- lookups ----------------------------------------------------------------------------

    def locate(self, address: str | None, host: str | None = None) -> Location:
        """Where is this endpoint? Memoised. A malformed address is simply unknown."""
        key = address if host is None else (address, host)
        try:
            return self._memo[key]
        except KeyError:
            pass
        loc = self._locate(address, host)
        if len(self._memo) >= self._memo_size:
            self._memo.clear()  # crude bound; lookups are cheap to redo
        self._memo[key] = loc
        return loc

    def _resolve_static(self, evidence: tuple[Evidence, ...]) -> _Static:
        chosen, regions, zoom = self._conclude(evidence)
        location = _location(evidence, chosen, regions, zoom, self._min_confidence)
        return _Static(evidence, chosen, frozenset(regions), zoom, location)

    def _conclude(self, evidence) -> tuple[Evidence | None, set, bool | None]:
        chosen = None
        regions: set[str | None] = set()
        zoom = None
        minimum = self._min_confidence
        for ev in evidence:
            if zoom is None and ev.zoom is not None:
                zoom = ev.zoom
            if ev.confidence >= minimum and (ev.region is not None or ev.country is not None):
                if chosen is None:
                    chosen = ev
                regions.add(ev.region)
        return chosen, regions, zoom

    def _locate(self, address: str | None, host: str | None) -> Location:
        static = _NOTHING
        extra: list[Evidence] = []
        if address is not None:
            try:
                if ":" in address:
                    key = _from_bytes(_inet_pton(_AF_INET6, address.partition("%")[0]), "big")
                else:
                    key = _V4_BASE | _from_bytes(_inet_pton(_AF_INET, address), "big")
            except (OSError, TypeError):
                key = None
            if key is not None:
                i = _bisect_right(self._starts, key) - 1
                if i >= 0 and key <= self._ends[i]:
                    static = self._values[i]
                else:
                    i = -1
                if self._single is not None and not host:
                    # The usual configuration: one per-address source whose answers are
                    # interned objects. Addresses in the same interval with the same answer
                    # share one Location, so this path allocates nothing once warm.
                    answer = self._single(address)
                    by_answer = self._shared.get(i)
                    if by_answer is None:
                        by_answer = self._shared[i] = {}
                    loc = by_answer.get(id(answer))
                    if loc is None:
                        loc = self._combine(static, [] if answer is None else [answer],
                                            self._needs_sort)
                        by_answer[id(answer)] = loc
                    return loc
                for source in self.per_address:
                    ev = source.lookup(address)
                    if ev is not None:
                        extra.append(ev)
        by_name: list[Evidence] = []
        if host:
            host = normalise_host(host)
            for source in self.per_host:
                ev = source.lookup_host(host)
                if ev is not None:
                    by_name.append(ev)
        if address is None:  # a name alone: its evidence is all there is
            return self._combine(static, by_name, True)
        loc = self._combine(static, extra, self._needs_sort)
        if not by_name:
            return loc
        return self._with_names(loc, by_name)

    def _with_names(self, loc: Location, by_name: list[Evidence]) -> Location:
        # The address decides (decision rule 5): answers about the name are shown and can make a
        # conflict, but never place an address that no address source places, so a fronted SNI
        # cannot carry a connection to an unplaced or disallowed address.
        rivals = set(loc.rivals)
        minimum = self._min_confidence
        for ev in by_name:
            if (loc.chosen is not None and ev.confidence >= minimum and ev.places
                    and ev.region != loc.region):
                rivals.add(ev.place)
        zoom = loc.zoom if loc.zoom is not None else next(
            (ev.zoom for ev in by_name if ev.zoom is not None), None)
        return loc._replace(evidence=loc.evidence + tuple(by_name), zoom=zoom,
                            conflict=loc.conflict or bool(rivals), rivals=tuple(sorted(rivals)))

    def _combine(self, static: _Static, extra: list[Evidence], sort: bool) -> Location:
        if not extra:
            return static.location
        evidence = static.evidence + tuple(extra)
        if sort:
            rank = self._rank
            evidence = tuple(sorted(evidence, key=lambda e: rank[e.source]))  # stable
        chosen, regions, zoom = self._conclude(evidence)
        return _location(evidence, chosen, regions, zoom, self._min_confidence)

    # --- learned evidence ---------------------------------------------------------------------

    def _locate_learned(self, address: str | None, host: str | None) -> Location:
        """`_locate` plus what the learned store says about the address. Names a client gives
        (`host`) only add hostname evidence, as always: they never teach the store."""
        if address is None:
            return Locator._locate(self, None, host)
        loc = Locator._locate(self, address, None)
        store = self.learned
        key = None
        if store is not None and (store.exact or store.spread):   # nothing learned: no cost
            try:
                key = address_key(address)
            except ValueError:
                pass
        found: tuple[Evidence, ...] | None = None
        if key is not None and store is not None:
            found = store.exact.get(key)
            if found is None and store.spread:
                # block_of(key)[0], inlined: no tuple per lookup (allocations wake the collector)
                spread = store.spread.get(key >> _S4 << _S4 if key >> 32 == 0xFFFF
                                          else key >> _S6 << _S6)
                if spread is not None and self._may_spread(key, spread[0], loc):
                    found = spread
        if found:
            # Addresses with the same other answers (often one interned Location) and the same
            # learned answers (objects the store keeps until they change) share one result.
            # Both are kept in the entry, so their ids cannot be reused while it lives.
            by_loc = self._learned_memo.get(id(found))
            hit = by_loc.get(id(loc)) if by_loc is not None else None
            if hit is not None and hit[0] is loc and hit[1] is found:
                loc = hit[2]
            else:
                rank = self._rank
                evidence = tuple(sorted(loc.evidence + found, key=lambda e: rank[e.source]))
                chosen, regions, zoom = self._conclude(evidence)
                merged = _location(evidence, chosen, regions, zoom, self._min_confidence)
                if by_loc is None:
                    if len(self._learned_memo) >= self._memo_size:
                        self._learned_memo.clear()
                    by_loc = self._learned_memo[id(found)] = {}
                elif len(by_loc) >= 256:   # Locations made afresh per lookup (no interning)
                    by_loc.clear()
                by_loc[id(loc)] = (loc, found, merged)
                loc = merged
        if not host:
            return loc
        host = normalise_host(host)
        by_name = [ev for ev in (s.lookup_host(host) for s in self.per_host) if ev is not None]
        return self._with_names(loc, by_name) if by_name else loc

    def _may_spread(self, key: int, spread: Evidence, loc: Location) -> bool:
        """A block's learned placement reaches this address only when no other trusted source
        disagrees, about the address or anywhere in the block."""
        minimum = self._min_confidence
        for ev in loc.evidence:
            if ev.confidence >= minimum and ev.places and ev.region != spread.region:
                return False
        start, length = block_of(key)
        ok = self._spread_ok.get(start)
        if ok is None:
            ok = True
            end = block_end(start, length)
            i = max(_bisect_right(self._starts, start) - 1, 0)
            while i < len(self._starts) and self._starts[i] <= end:
                if self._ends[i] >= start and self._values[i].regions - {spread.region}:
                    ok = False
                    break
                i += 1
            self._spread_ok[start] = ok
        return ok

    def also_forget(self, clear: Callable[[], None]) -> None:
        """Call `clear` whenever learned evidence or a measured bound changes (an engine's
        decision memo)."""
        if self.learned is not None or self.rtt is not None:
            self._also_forget.append(clear)

    def _rtt_changed(self, address: str) -> None:
        # A new or lower minimum RTT for one address: memos go only when its evidence changes.
        rtt = self.rtt
        if rtt is None:
            return
        before = rtt.evidence_of(address)
        after = rtt.lookup(address)
        if after is None:
            return
        if before is None:
            # first measured: it changes a decision only if it places the address or rules
            # out some region (most far servers do neither: every region is within reach)
            if after.region is None and after.within is not None \
                    and after.within >= rtt.all_regions:
                return
        elif before.region == after.region and before.within == after.within:
            return   # a tighter radius that says the same: decisions stand (texts may lag)
        self._learned_changed()

    def _learned_changed(self) -> None:
        self.clear_memo()
        for clear in self._also_forget:
            clear()

    def clear_memo(self) -> None:
        self._memo.clear()
        self._shared.clear()
        self._spread_ok.clear()
        self._learned_memo.clear()

    def describe(self) -> list[str]:
        """One line per active source, in precedence order, for `explain` and logs."""
        lines = [s.describe() for s in self.static]
        lines += [f"{s.name}: per address ({getattr(s, 'dataset', '') or getattr(s, 'path', '')})"
                  for s in self.per_address]
        lines += [f"{s.name}: per hostname" for s in self.per_host]
        if self.learned is not None:
            lines.append(self.learned.describe())
        if self.rtt is not None:
            lines.append(self.rtt.store.describe())
        return lines


def _sole_country(catalogue: Catalogue) -> Callable[[str], str | None]:
    """A region's country, when it has one only (a placement by physics names no country
    otherwise)."""
    def country(region: str) -> str | None:
        spec = catalogue.regions.get(region)
        return spec.countries[0] if spec is not None and len(spec.countries) == 1 else None
    return country


__all__ = ["Locator", "SOURCES"]
