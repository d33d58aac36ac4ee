"""Is a destination Zoom's, and which Zoom service is it?

By name: Zoom's domains and their subdomains (case and trailing dot normalised). By address:
Zoom's published IPv4/IPv6 ranges; an IPv6 address that embeds an IPv4 one (IPv4-mapped
::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d) is tested as that IPv4
address too, since a connection to it can reach the IPv4 host. The service follows from port,
transport and name: web/API, meeting media, tunnel (TCP 443 to a meeting server), CRC, CDN,
phone. Domains, ports and name patterns are data (config/zoom.yaml, config/data/zoom-ranges.csv).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

import yaml

from ._paths import config_dir
from .hostnames import DomainSet, normalise_host
from .prefixes import PrefixTable, address_key

_V4_BASE = 0xFFFF_0000_0000          # where IPv4 sits among the keys (prefixes.address_key)
_IPV4_COMPATIBLE_HIGH = 0            # ::a.b.c.d: the top 96 bits of the key
_NAT64_HIGH = 0x0064_FF9B_0000_0000_0000_0000   # 64:ff9b::/96 (RFC 6052 well-known)


def embedded_ipv4_key(key: int) -> int:
    """The key of the IPv4 address an IPv6 key embeds (IPv4-mapped, IPv4-compatible, NAT64
    well-known prefix); -1 when it embeds none. An IPv4 key is its own (it is the mapped form)."""
    high = key >> 32
    if high == 0xFFFF:
        return key
    if high == _IPV4_COMPATIBLE_HIGH or high == _NAT64_HIGH:
        return _V4_BASE | (key & 0xFFFF_FFFF)
    return -1


def embedded_ipv4(address: str) -> str | None:
    """The IPv4 address (dotted) an IPv6 address embeds, as embedded_ipv4_key; None when it is
    not an IPv6 address or embeds none."""
    if ":" not in address:
        return None
    try:
        key = embedded_ipv4_key(address_key(address))
    except ValueError:
        return None
    if key < 0:
        return None
    return f"{(key >> 24) & 255}.{(key >> 16) & 255}.{(key >> 8) & 255}.{key & 255}"


class ZoomRange(NamedTuple):
    prefix: str
    service: str   # zoom | phone | cdn
    source: str
    date: str


class Classification(NamedTuple):
    zoom: bool
    service: str | None
    why: str                 # how we know it is (or is not) Zoom's
    range: ZoomRange | None


def _port_ranges(specs: list) -> tuple[tuple[int, int], ...]:
    out = []
    for spec in specs:
        lo, _, hi = str(spec).partition("-")
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


@dataclass(frozen=True)
class ZoomCatalogue:
    domains: DomainSet
    domain_regions: dict[str, dict]
    ports: dict[tuple[str, str], tuple[tuple[int, int], ...]]   # (service, transport) → ranges
    meeting_server_names: tuple[re.Pattern, ...]
    crc_domains: DomainSet
    site_codes: frozenset[str]       # subdomain site codes: HOST.SITE.zoom.us is a meeting server
    ranges: PrefixTable[ZoomRange]
    ranges_source: str
    # derived in __post_init__: (transport, port) → service, and all name patterns as one search
    _port_services: dict[tuple[str, int], str] = field(init=False, repr=False, compare=False)
    _meeting_server_name: Callable[[str], object] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (transport, port) → service, expanded once: port lists are short ranges.
        table = {}
        for (service, proto), ranges in reversed(list(self.ports.items())):
            for lo, hi in ranges:
                for port in range(lo, hi + 1):
                    table[(proto, port)] = service
        object.__setattr__(self, "_port_services", table)
        # One expression for all meeting-server name patterns: one scan of the name, not one
        # per pattern (the DNS filter asks this of every new Zoom name).
        joined = "|".join(f"(?:{p.pattern})" for p in self.meeting_server_names)
        object.__setattr__(self, "_meeting_server_name", re.compile(joined).search if joined
                           else lambda host: None)

    @classmethod
    def load(cls, directory: Path | None = None) -> ZoomCatalogue:
        return _load(str(directory or config_dir()))

    def is_zoom_host(self, host: str | None) -> bool:
        return bool(host) and host in self.domains

    def range_of(self, address: str | None) -> ZoomRange | None:
        if not address:
            return None
        try:
            key = address_key(address)
        except ValueError:
            return None
        found = self.ranges.get_key(key)
        if found is None and key >> 32 != 0xFFFF:   # not IPv4 (mapped is IPv4's own key)
            v4 = embedded_ipv4_key(key)
            if v4 >= 0:
                found = self.ranges.get_key(v4)
        return found

    def classify(self, host: str | None, address: str | None, port: int, transport: str = "tcp",
                 zoom_override: bool | None = None) -> Classification:
        host = normalise_host(host) if host else None
        rng = self.range_of(address)
        domain = self.domains.match(host) if host else None
        if zoom_override is False:
            return Classification(False, None, "override: not Zoom", rng)
        if domain:
            why = f"domain {domain}"
        elif rng is not None:
            why = f"address in Zoom range {rng.prefix} ({rng.source})"
        elif zoom_override:
            why = "override: zoom: true"
        else:
            return Classification(False, None, "not a Zoom domain or range", None)
        return Classification(True, self._service(host, rng, port, transport), why, rng)

    def is_meeting_server_name(self, host: str) -> bool:
        """Does `host` (normalised) name a meeting server: a meeting-server name pattern, or
        HOST.SITE.zoom.us. A TCP 443 connection to one is a tunnel."""
        return self._meeting_server_name(host) is not None or self._at_site(host)

    def _at_site(self, host: str) -> bool:
        return (host.count(".") == 3 and host.endswith(".zoom.us")
                and host[host.index(".") + 1:-8] in self.site_codes)

    def _service(self, host: str | None, rng: ZoomRange | None, port: int, transport: str) -> str:
        if host and host in self.crc_domains:
            return "crc"
        service = self._port_services.get((transport, port))
        if service is not None:
            return service
        if rng is not None and rng.service in ("phone", "cdn"):
            return rng.service
        if transport == "tcp" and port == 443:
            if host and self.is_meeting_server_name(host):
                return "tunnel"
            if host is None and rng is not None:
                return "tunnel"   # an unnamed TCP 443 connection straight to a Zoom server
        if port in (80, 443):
            return "web"
        return "meeting"


@cache
def _load(directory: str) -> ZoomCatalogue:
    base = Path(directory)
    with open(base / "zoom.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    ports = {}
    for service, by_proto in (raw.get("ports") or {}).items():
        for proto, specs in by_proto.items():
            ports[(service, proto)] = _port_ranges(specs)
    ranges_path = base / "data" / "zoom-ranges.csv"
    items = []
    with open(ranges_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            items.append((row["prefix"], ZoomRange(row["prefix"], row["service"], row["source"],
                                                   row["date"])))
    with open(base / "data" / "site-codes.csv", newline="", encoding="utf-8") as f:
        site_codes = frozenset(r["code"].lower() for r in csv.DictReader(f) if r["kind"] == "subdomain")
    return ZoomCatalogue(
        domains=DomainSet(raw.get("domains") or ()),
        domain_regions={normalise_host(k): v for k, v in (raw.get("domain_regions") or {}).items()},
        ports=ports,
        meeting_server_names=tuple(re.compile(p) for p in raw.get("meeting_server_names") or ()),
        crc_domains=DomainSet(raw.get("crc_domains") or ()),
        site_codes=site_codes,
        ranges=PrefixTable.from_prefixes(items),
        ranges_source=ranges_path.name,
    )
