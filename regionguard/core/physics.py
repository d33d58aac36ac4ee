"""Physics as evidence: how far away a server can be, given a round-trip time to it.

Light in optical fibre travels at about 2/3 of c, ~200 km per millisecond. A round trip of r ms
from a measuring site to a server therefore bounds the server within (r − margin) × 100 km of
that site, the server's distance being at most the one-way time × speed. This is
constraint-based geolocation (Gueye et al., 2006), as in RIPE IPmap's single-radius engine.

Design rules:
- Only a *minimum* RTT is ever used: queueing, retransmission and detours only add time, so the
  smallest sample is the tightest true bound. A maximum (or a mean) bounds nothing.
- The bound is one-sided. A small RTT proves the server is near; a large one never proves it is
  far (a server next door behind a slow path looks far), so a large radius only ever says less.
- SPEED_KM_PER_MS is the speed of light in fibre (refractive index ~1.5): nothing a Zoom
  connection rides is faster, except free-space microwave links (~c), which carry trading
  traffic, not conferencing. MARGIN_MS, the time subtracted for processing, is 0: the proof
  holds only if the margin never exceeds the real processing time, which is unknowable and can
  be ~0 (a SYN is answered by the kernel), so none is assumed. Both are parameters for tests.
- Zoom's sites are points with an uncertainty (a metro area, or a city of a region's country
  where an unpublished data centre might stand: config/data/zoom-sites.csv). A site is *inside*
  the radius when it could be: distance − uncertainty ≤ radius. The same test serves both
  outcomes, so either errs only towards saying less.
- Three outcomes, never a guess: `placed` (every site that could be inside belongs to one
  region), `several` (sites of more than one region could be inside), `none` (no Zoom site
  could be inside: the server is no Zoom data centre we know of). A claim of a region with no
  site inside is *contradicted*: the caller shows a conflict.
- Pure: no I/O besides reading the two CSV tables, no clocks, no network. The measuring is done
  by the front ends (the proxy's own connects, `regionguard probe`).
"""

from __future__ import annotations

import csv
import functools
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from regionguard.core.paths import bundled_data_dir

SPEED_KM_PER_MS = 299_792.458 / 1.5 / 1000   # 199.86 km per ms one way: light in fibre
MARGIN_MS = 0.0                               # processing time assumed in every RTT (see above)
EARTH_RADIUS_KM = 6371.0088                   # mean radius (IUGG)
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM   # no two points are further apart
SITES_FILE = "zoom-sites.csv"
CITIES_FILE = "cities.csv"


class Point(NamedTuple):
    latitude: float
    longitude: float


class ClientSite(NamedTuple):
    """Where a measurement was taken from: the policy's `client.site`."""

    name: str          # "Frankfurt am Main (DE)" or "50.11,8.68"
    latitude: float
    longitude: float


class ZoomSite(NamedTuple):
    region: str
    name: str
    kind: str          # labelled | cloud | country
    city: str
    latitude: float
    longitude: float
    uncertainty_km: float
    source: str


class SiteDistance(NamedTuple):
    site: ZoomSite
    km: float          # from the measuring site to the Zoom site's point


class Outcome(NamedTuple):
    """What one minimum RTT from one site says about one server."""

    radius_km: float
    inside: tuple[SiteDistance, ...]   # the Zoom sites that could be inside, nearest first
    regions: frozenset[str]            # their regions

    @property
    def placed(self) -> str | None:
        """The region, when every site that could be inside belongs to one."""
        return next(iter(self.regions)) if len(self.regions) == 1 else None

    @property
    def kind(self) -> str:
        """placed | several | none"""
        if not self.regions:
            return "none"
        return "placed" if len(self.regions) == 1 else "several"

    def contradicts(self, region: str) -> bool:
        """A claim that the server is in `region`, which no site inside the radius supports."""
        return region not in self.regions


def haversine_km(a: Point | tuple[float, float], b: Point | tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points in degrees, in km."""
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (math.sin((la2 - la1) / 2) ** 2
         + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def radius_km(min_rtt_ms: float, margin_ms: float = MARGIN_MS,
              speed_km_per_ms: float = SPEED_KM_PER_MS) -> float:
    """How far from the measuring site a server answering in `min_rtt_ms` can be: half the
    round trip, less the margin, at the speed of light in fibre. Never negative, never more
    than half the Earth's circumference (beyond that an RTT says nothing)."""
    if not math.isfinite(min_rtt_ms) or min_rtt_ms < 0:
        raise ValueError(f"a round-trip time is a finite number of ms ≥ 0, not {min_rtt_ms!r}")
    one_way = max(0.0, min_rtt_ms - margin_ms) / 2
    return min(one_way * speed_km_per_ms, HALF_CIRCUMFERENCE_KM)


class Reach:
    """The Zoom sites as seen from one measuring site: each with its distance, sorted by how
    close it could be (distance − uncertainty). Built once per measuring site; an outcome for
    any RTT is then a bisection and a slice, not a pass over the table."""

    def __init__(self, here: ClientSite | Point | tuple[float, float],
                 sites: Sequence[ZoomSite]) -> None:
        point = (here[-2], here[-1]) if isinstance(here, ClientSite) else (here[0], here[1])
        entries = sorted(((max(0.0, km - s.uncertainty_km), km, s.region, s.name), SiteDistance(s, km))
                         for s in sites
                         for km in (haversine_km(point, (s.latitude, s.longitude)),))
        self._closest = [key[0] for key, _ in entries]
        self._inside = tuple(d for _, d in entries)
        regions: list[frozenset[str]] = [frozenset()]
        for d in self._inside:   # the regions of the first k sites, for every k
            last = regions[-1]
            regions.append(last if d.site.region in last else last | {d.site.region})
        self._regions = regions

    def outcome(self, radius: float) -> Outcome:
        k = bisect_right(self._closest, radius)
        return Outcome(radius, self._inside[:k], self._regions[k])


def constrain(site: ClientSite | Point | tuple[float, float], min_rtt_ms: float,
              sites: Sequence[ZoomSite] | Reach, margin_ms: float = MARGIN_MS,
              speed_km_per_ms: float = SPEED_KM_PER_MS) -> Outcome:
    """The Zoom sites that could be inside the radius a minimum RTT from `site` allows, those
    that could be closest first. `sites` may be a Reach already built for `site`."""
    radius = radius_km(min_rtt_ms, margin_ms, speed_km_per_ms)
    reach = sites if isinstance(sites, Reach) else Reach(site, sites)
    return reach.outcome(radius)


def intersect(outcomes: Iterable[Outcome]) -> Outcome | None:
    """Several measurements (from several sites) of one server: only sites every one of them
    allows remain. The radius shown is the smallest. None for no outcomes."""
    outcomes = list(outcomes)
    if not outcomes:
        return None
    if len(outcomes) == 1:
        return outcomes[0]
    keep = set.intersection(*({d.site for d in o.inside} for o in outcomes))
    tightest = min(outcomes, key=lambda o: o.radius_km)
    inside = tuple(d for d in tightest.inside if d.site in keep)
    return Outcome(tightest.radius_km, inside, frozenset(d.site.region for d in inside))


# --- the tables -------------------------------------------------------------------------------


@functools.cache
def zoom_sites(path: Path | None = None) -> tuple[ZoomSite, ...]:
    """config/data/zoom-sites.csv (built by tools/build_sites.py; provenance per row)."""
    path = path or bundled_data_dir() / SITES_FILE
    with open(path, encoding="utf-8", newline="") as f:
        return tuple(ZoomSite(r["region"], r["site"], r["kind"], r["city"], float(r["latitude"]),
                              float(r["longitude"]), float(r["uncertainty_km"]), r["source"])
                     for r in csv.DictReader(f))


class City(NamedTuple):
    name: str
    country: str
    latitude: float
    longitude: float
    population: int


@functools.cache
def cities(path: Path | None = None) -> tuple[City, ...]:
    """config/data/cities.csv: GeoNames cities a policy may name as a client site."""
    path = path or bundled_data_dir() / CITIES_FILE
    with open(path, encoding="utf-8", newline="") as f:
        return tuple(City(r["name"], r["country"], float(r["latitude"]), float(r["longitude"]),
                          int(r["population"])) for r in csv.DictReader(f))


def find_city(text: str) -> tuple[City | None, list[City]]:
    """A city named in a policy: `Frankfurt`, `Frankfurt am Main`, `Vancouver, CA`. Returns
    (the city, []) or (None, the candidates: several when ambiguous, none when unknown)."""
    name, _, country = (x.strip() for x in text.partition(","))
    name, country = name.casefold(), country.upper()
    table = [c for c in cities() if not country or c.country == country]
    exact = [c for c in table if c.name.casefold() == name]
    found = exact or [c for c in table if c.name.casefold().startswith(name + " ")]
    if len(found) == 1:
        return found[0], []
    return None, found


__all__ = ["ClientSite", "City", "MARGIN_MS", "Outcome", "Point", "Reach", "SPEED_KM_PER_MS",
           "SiteDistance",
           "ZoomSite", "cities", "constrain", "find_city", "haversine_km", "intersect",
           "radius_km", "zoom_sites"]
