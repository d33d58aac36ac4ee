"""What a source says about where an address is, and what the locator concludes from it all."""

from __future__ import annotations

from typing import NamedTuple

# Named tuples, not dataclasses: the locator builds these on the hot path and tuple
# construction is several times cheaper than a frozen dataclass's __init__.


class Evidence(NamedTuple):
    """One source's answer for one address (or hostname)."""

    source: str            # precedence name: override, zoom-dc, cloud, geofeed, rtt, learned, geoip,
                           # hostname, fallback
    region: str | None     # Zoom region code, or None when the place has no Zoom region
    country: str | None    # ISO 3166-1 alpha-2, or None when the source knows no country
    dataset: str           # file or database the answer came from
    date: str | None       # the dataset's date (ISO), when known
    matched: str           # the prefix, rule or pattern that matched
    confidence: float      # 0..1: how far this source is trusted for this kind of answer
    note: str = ""
    zoom: bool | None = None  # a source may also know the endpoint is (not) Zoom's
    # physics (source `rtt`, regionguard/core/physics.py): the only regions whose Zoom sites the
    # measured round trip can reach; a trusted claim of any other region is contradicted
    within: frozenset[str] | None = None

    @property
    def places(self) -> bool:
        """Whether this answer puts the address somewhere (a region, or a country)."""
        return self.region is not None or self.country is not None

    @property
    def place(self) -> str:
        """Where this answer puts the address, as a conflict names it."""
        return self.region or f"no-region({self.country})"

    def describe(self) -> str:
        if self.region:
            where = self.region + (f" ({self.country})" if self.country else "")
        elif self.country:
            where = f"country {self.country}, no Zoom region"
        else:
            where = "no region" + (f" ({self.note})" if self.note else "")
        return f"{where} [{self.source}: {self.dataset} {self.date or ''} {self.matched}]".replace(
            "  ", " "
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "region": self.region,
            "country": self.country,
            "dataset": self.dataset,
            "date": self.date,
            "matched": self.matched,
            "confidence": self.confidence,
            "note": self.note,
            **({"within": sorted(self.within)} if self.within is not None else {}),
        }


class Location(NamedTuple):
    """The locator's conclusion for one address (and hostname, if any).

    It does not repeat the address: addresses with the same answers share one Location."""

    region: str | None        # the accepted region, or None (unknown, or a country with none)
    country: str | None
    chosen: Evidence | None   # the answer that decided; None = region unknown
    evidence: tuple[Evidence, ...]  # every source's answer, in precedence order
    conflict: bool            # accepted answers disagree on the region
    zoom: bool | None         # an override's word on whether this is Zoom's
    rivals: tuple[str, ...] = ()   # the places accepted answers give other than the chosen one

    @property
    def known(self) -> bool:
        """True when some trusted source placed the address (in a region, or in a country
        that has no Zoom region)."""
        return self.chosen is not None

    @property
    def regions_claimed(self) -> frozenset[str | None]:
        return frozenset(e.region for e in self.evidence if e.places)

    def summary(self) -> str:
        if self.chosen is None:
            return "unknown: no trusted source places this address"
        text = self.chosen.describe()
        if self.conflict:
            # only answers at or above min_confidence conflict (the locator lists them); a
            # fallback below it is shown in the evidence but never named here
            text += f"; CONFLICT with {', '.join(self.rivals)}"
        return text

    def to_dict(self) -> dict:
        return {
            "region": self.region,
            "country": self.country,
            "source": self.chosen.source if self.chosen else None,
            "conflict": self.conflict,
            "evidence": [e.to_dict() for e in self.evidence],
        }
