"""Sources of location evidence, one small class each.

A source either holds a static `table` (a PrefixTable of Evidence, merged by the locator into
one lookup), or answers per address (`lookup`), or per hostname (`lookup_host`). Every answer is
an Evidence carrying its dataset, date and matched prefix or rule, so the product can say why.
Data files are read once per (path, mtime) and shared between locators, so a policy reload does
not re-read the cloud range files.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fnmatch
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from regionguard.core.errors import Problem
from regionguard.core.evidence import Evidence
from regionguard.core.hostnames import DomainSet, normalise_host
from regionguard.core.prefixes import PrefixTable
from regionguard.core.regions import Catalogue

log = logging.getLogger(__name__)

_file_cache: dict[tuple[str, float, str], Any] = {}


def _cached(path: Path, kind: str, build: Callable[[], Any]) -> Any:
    key = (str(path), os.stat(path).st_mtime, kind)
    if key not in _file_cache:
        _file_cache[key] = build()
    return _file_cache[key]


def _file_date(path: Path) -> str:
    return _dt.datetime.fromtimestamp(os.stat(path).st_mtime, _dt.UTC).date().isoformat()


class StaticSource:
    """A source whose answers are fixed per prefix."""

    name = "static"
    table: PrefixTable[Evidence]

    def describe(self) -> str:
        return f"{self.name}: {len(self.table)} intervals"


# --- local overrides --------------------------------------------------------------------


class OverrideSource(StaticSource):
    """The policy's `overrides`: local knowledge, highest precedence by default."""

    name = "override"

    def __init__(self, overrides: Iterable[Any], dataset: str) -> None:
        items: list[tuple[str, Evidence]] = []
        self._host_rules: list[tuple[str, Evidence]] = []
        for ov in overrides:
            ev = Evidence(self.name, ov.region, ov.country, dataset, None, ov.match, 1.0,
                          ov.note, ov.zoom)
            if ov.is_network:
                items.append((ov.match, ev))
            else:
                self._host_rules.append((ov.match, ev))   # normalised by the policy
        self.table = PrefixTable.from_prefixes(items)

    def lookup_host(self, host: str) -> Evidence | None:
        for pattern, ev in self._host_rules:
            if host == pattern or fnmatch.fnmatchcase(host, pattern):
                return ev
        return None

    @property
    def has_host_rules(self) -> bool:
        return bool(self._host_rules)


# --- Zoom's own data-center table ------------------------------------------------------------


class ZoomDataCenterSource(StaticSource):
    """config/data/zoom-datacenters.csv: Zoom-labelled addresses, inferred site blocks and
    Zoom ranges hosted in public clouds, each row with its provenance."""

    name = "zoom-dc"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = _cached(path, self.name, self._load)

    def _load(self) -> PrefixTable[Evidence]:
        items = []
        with open(self.path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                note = f"{row['kind']}: {row['site']}" + (f"; {row['note']}" if row["note"] else "")
                ev = Evidence(self.name, row["region"] or None, row["country"] or None,
                              f"{self.path.name} ({row['source']})", row["date"] or None,
                              row["prefix"], float(row["confidence"]), note)
                items.append((row["prefix"], ev))
        return PrefixTable.from_prefixes(items)


# --- public cloud range files -------------------------------------------------------------------


class CloudLocations:
    """config/data/cloud-regions.csv: cloud location name (AWS network border group or region,
    Oracle region) → country."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[tuple[str, str], dict[str, str]] = _cached(path, "cloud-regions", self._load)

    def _load(self) -> dict[tuple[str, str], dict[str, str]]:
        with open(self.path, newline="", encoding="utf-8") as f:
            return {(r["cloud"].lower(), r["location"]): r for r in csv.DictReader(f)}

    def country(self, cloud: str, location: str) -> tuple[str | None, str]:
        row = self._rows.get((cloud.lower(), location))
        if row is None:
            return None, f"{location} (not in {self.path.name})"
        city = row.get("city") or ""
        return (row["country"] or None), f"{location}{' ' + city if city else ''}"


class AwsSource(StaticSource):
    """AWS ip-ranges.json. The place is the prefix's `network_border_group`, not its `region`:
    Local Zones (e.g. Taipei, ap-northeast-1-tpe-1) sit under a parent region elsewhere."""

    name = "cloud"

    def __init__(self, path: Path, locations: CloudLocations, catalogue: Catalogue) -> None:
        self.path = path
        self._locations = locations
        self._catalogue = catalogue
        self.table = _cached(path, "aws", self._load)

    def _load(self) -> PrefixTable[Evidence]:
        with open(self.path, encoding="utf-8") as f:
            doc = json.load(f)
        date = _aws_date(doc.get("createDate", ""))
        dataset = self.path.name
        per_prefix: dict[str, tuple[str, str, list[str]]] = {}
        for entry in doc.get("prefixes", []) + doc.get("ipv6_prefixes", []):
            prefix = entry.get("ip_prefix") or entry.get("ipv6_prefix")
            nbg = entry.get("network_border_group") or entry.get("region", "")
            known = per_prefix.setdefault(prefix, (nbg, entry.get("region", ""), []))
            known[2].append(entry.get("service", ""))
        items = []
        for prefix, (nbg, region, services) in per_prefix.items():
            if nbg == "GLOBAL":
                country, place = None, "GLOBAL"
                note = "anycast prefix (network_border_group GLOBAL): no region"
            else:
                country, place = self._locations.country("aws", nbg)
                note = f"network_border_group {place}" + (f", region {region}" if region != nbg else "")
            svc = ",".join(sorted(set(services)))
            ev = Evidence(self.name, self._catalogue.region_for_country(country), country,
                          f"aws {dataset}", date, prefix, 0.9, f"{note}; service {svc}")
            items.append((prefix, ev))
        return PrefixTable.from_prefixes(items)


def _aws_date(create_date: str) -> str | None:
    # "2026-08-22-03-13-06" → "2026-08-22"
    return create_date[:10] if len(create_date) >= 10 else None


class OracleSource(StaticSource):
    """Oracle Cloud public_ip_ranges.json."""

    name = "cloud"

    def __init__(self, path: Path, locations: CloudLocations, catalogue: Catalogue) -> None:
        self.path = path
        self._locations = locations
        self._catalogue = catalogue
        self.table = _cached(path, "oracle", self._load)

    def _load(self) -> PrefixTable[Evidence]:
        with open(self.path, encoding="utf-8") as f:
            doc = json.load(f)
        stamp = doc.get("last_updated_timestamp", "")
        date = stamp[:10] if stamp else _file_date(self.path)
        items = []
        for region in doc.get("regions", []):
            name = region.get("region", "")
            country, place = self._locations.country("oci", name)
            for cidr in region.get("cidrs", []):
                prefix = cidr["cidr"]
                ev = Evidence(self.name, self._catalogue.region_for_country(country), country,
                              f"oracle {self.path.name}", date, prefix, 0.9, f"OCI region {place}")
                items.append((prefix, ev))
        return PrefixTable.from_prefixes(items)


# --- RFC 8805 geofeeds ---------------------------------------------------------------------------


class GeofeedSource(StaticSource):
    """An RFC 8805 self-published geofeed: `prefix,country,subdivision,city,postal`."""

    name = "geofeed"

    def __init__(self, path: Path, catalogue: Catalogue) -> None:
        self.path = path
        self._catalogue = catalogue
        self.table, self.problems = _cached(path, "geofeed", self._load)

    def _load(self) -> tuple[PrefixTable[Evidence], list[Problem]]:
        items = []
        problems: list[Problem] = []
        date = _file_date(self.path)
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = [x.strip() for x in next(csv.reader([line]))]
                prefix = fields[0]
                country = fields[1].upper() if len(fields) > 1 and fields[1] else None
                try:
                    ipaddress.ip_network(prefix, strict=True)
                except ValueError as e:
                    problems.append(Problem(str(self.path), f"line {lineno}", f"{prefix!r}: {e}",
                                            "write a CIDR prefix with no host bits set",
                                            lineno))
                    continue
                if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
                    problems.append(Problem(str(self.path), f"line {lineno}",
                                            f"country {country!r} is not ISO 3166-1 alpha-2",
                                            "use a two-letter country code", lineno))
                    continue
                place = ", ".join(x for x in fields[2:4] if x)
                ev = Evidence(self.name, self._catalogue.region_for_country(country), country,
                              f"geofeed {self.path.name}", date, prefix, 0.8, place)
                items.append((prefix, ev))
        return PrefixTable.from_prefixes(items), problems


# --- GeoIP2 / GeoLite2 / DB-IP .mmdb -------------------------------------------------------------


class GeoIPSource:
    """A MaxMind-format database read through `geoip2` (country or city databases)."""

    name = "geoip"

    def __init__(self, path: Path, catalogue: Catalogue, confidence: float = 0.6) -> None:
        import geoip2.database  # imported here: only needed when a database is configured

        self.path = path
        self._catalogue = catalogue
        self._confidence = confidence
        self._reader = geoip2.database.Reader(str(path))
        meta = self._reader.metadata()
        self.database_type = meta.database_type
        self.date = _dt.datetime.fromtimestamp(meta.build_epoch, _dt.UTC).date().isoformat()
        self._city = "City" in meta.database_type
        self._cache: dict[tuple[str | None, str], Evidence] = {}

    def lookup(self, address: str) -> Evidence | None:
        import geoip2.errors

        try:
            model = self._reader.city(address) if self._city else self._reader.country(address)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None
        country = model.country.iso_code or model.registered_country.iso_code
        network = str(model.traits.network) if model.traits.network else address
        return Evidence(self.name, self._catalogue.region_for_country(country), country,
                        f"geoip {self.path.name} ({self.database_type})", self.date, network,
                        self._confidence,
                        "" if model.country.iso_code else "registered country only")

    def span(self, address: str) -> str:
        """The database's network (CIDR) that holds `address`, whether it has an answer there or
        not: every address in it gets the same answer from this source (the nft compiler cuts
        Zoom's ranges along these). geoip2 gives no such call; its maxminddb reader does."""
        _, length = self._reader._db_reader.get_with_prefix_len(address)
        return str(ipaddress.ip_network(f"{address}/{length}", strict=False))

    def close(self) -> None:
        self._reader.close()


# --- embedded offline fallback ----------------------------------------------------------------


class CountryFallbackSource:
    """`iptocc`: the RIR delegation files embedded in a wheel, no download needed. It gives the
    country an address block is *registered* in, which for cloud and anycast space is often not
    where it is: low confidence, below the default acceptance threshold."""

    name = "fallback"
    interned = True  # equal answers are one object, kept for the source's lifetime

    def __init__(self, catalogue: Catalogue, confidence: float = 0.3) -> None:
        from importlib.metadata import version

        import iptocc

        self._lookup = iptocc.country_code
        self._catalogue = catalogue
        self._confidence = confidence
        self.dataset = f"iptocc {version('iptocc')} (RIR delegation files)"
        self._interned: dict[str, Evidence] = {}

    def lookup(self, address: str) -> Evidence | None:
        try:
            country = self._lookup(address)
        except (ValueError, TypeError):
            return None
        if not country:
            return None
        ev = self._interned.get(country)
        if ev is None:
            ev = Evidence(self.name, self._catalogue.region_for_country(country), country,
                          self.dataset, None, "RIR delegation", self._confidence,
                          "registration country, not location")
            self._interned[country] = ev
        return ev


# --- hostname hints ---------------------------------------------------------------------------


_ZC_NAME = re.compile(r"^zoom([a-z]{2})\d+zc\.")   # the site code in zoom<site>NNNzc. names


class HostnameSource:
    """Zoom site codes in names (`*.sjc.zoom.us`, `zoomam104zc.zoom.us`) and domains whose
    region is fixed (`zoom.com.cn`, `zoomgov.com`). Weak: a name can be fronted."""

    name = "hostname"

    def __init__(self, site_codes: Path, domain_regions: dict[str, dict], zoom_domains: Iterable[str],
                 catalogue: Catalogue) -> None:
        self._zoom_domains = zoom_domains if isinstance(zoom_domains, DomainSet) else DomainSet(zoom_domains)
        self._domains = {
            d: Evidence(self.name, spec.get("region"), spec.get("country"), "zoom.yaml", None,
                        f"*.{d}", float(spec.get("confidence", 0.5)), spec.get("note", ""))
            for d, spec in domain_regions.items()
        }
        self._region_domains = DomainSet(self._domains)
        self._subdomain: dict[str, Evidence] = {}
        self._zc_codes: dict[str, Evidence] = {}
        with open(site_codes, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                region = row["region"] or catalogue.region_for_country(row["country"])
                # `source` and `date` say where each code was seen (older tables lack them).
                cited = row.get("source") or ""
                ev = Evidence(self.name, region or None, row["country"] or None,
                              f"{site_codes.name} ({cited})" if cited else site_codes.name,
                              row.get("date") or None, "", float(row["confidence"]),
                              f"site code {row['code']}" + (f" ({row['city']})" if row["city"] else "")
                              + f"; {row['note']}")
                target = self._subdomain if row["kind"] == "subdomain" else self._zc_codes
                target[row["code"].lower()] = ev

    def lookup_host(self, host: str) -> Evidence | None:
        """`host` normalised (normalise_host), as the locator and the DNS filter pass it."""
        fixed = self._region_domains.match(host)
        if fixed is not None:
            return self._domains[fixed]
        if host not in self._zoom_domains:  # label-wise: "evilzoom.us" is not Zoom's
            return None
        # <anything>.<site>.zoom.us: the site label sits just above the Zoom domain, so a name of
        # three labels or fewer has none (most names: not split).
        if host.count(".") >= 3:
            labels = host.split(".")
            for i, label in enumerate(labels[1:-2], 1):
                ev = self._subdomain.get(label)
                if ev is not None:
                    return ev._replace(matched=f"*.{'.'.join(labels[i:])}")
        m = _ZC_NAME.match(host) if host.startswith("zoom") else None   # the pattern's own start
        if m:
            ev = self._zc_codes.get(m.group(1))
            if ev is not None:
                return ev._replace(matched=f"zoom{m.group(1)}…zc")
        return None

    def site_labels(self) -> frozenset[str]:
        """The site codes that are whole labels (`HOST.SITE.zoom.us`)."""
        return frozenset(self._subdomain)

    def site_of(self, host: str) -> Evidence | None:
        """The answer of the site code in a Zoom name alone (not a domain-wide region): what a
        resolution of this name teaches about its addresses (regionguard.core.learned)."""
        host = normalise_host(host)
        if self._region_domains.match(host) is not None:
            return None
        return self.lookup_host(host)


__all__ = [
    "AwsSource", "CloudLocations", "CountryFallbackSource", "GeofeedSource", "GeoIPSource",
    "HostnameSource", "OracleSource", "OverrideSource", "StaticSource", "ZoomDataCenterSource",
]
