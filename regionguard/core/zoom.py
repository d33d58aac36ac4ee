"""Is a destination Zoom's, and which Zoom service (class) is it?

By name: Zoom's domains and their subdomains (case and trailing dot normalised). By address:
Zoom's published IPv4/IPv6 ranges; an IPv6 address that embeds an IPv4 one (IPv4-mapped
::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d) is tested as that IPv4
address too, since a connection to it can reach the IPv4 host.

The service class follows, in this order, from a CRC domain; the transport and port (media,
relays, H.323/SIP); a range Zoom publishes for one service (phone, CDN); on the web ports, the
name (zone controllers, multimedia routers, web, logging, CDN, push); else `unknown-service`.
Whether a class is governed by Zoom's region setting is data too (`services:`), and so are
domains, ports and name patterns (config/zoom.yaml, config/data/zoom-ranges.csv).
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

from regionguard.core.hostnames import DomainSet, normalise_host
from regionguard.core.paths import config_dir, data_dir
from regionguard.core.prefixes import PrefixTable, address_key

_V4_BASE = 0xFFFF_0000_0000          # where IPv4 sits among the keys (prefixes.address_key)
_IPV4_COMPATIBLE_HIGH = 0            # ::a.b.c.d: the top 96 bits of the key
# ...but ::/104 holds ::1 (loopback) and :: (unspecified), never an IPv4 host (RFC 4291 2.5.5.1)
_FIRST_COMPATIBLE = 0x0100_0000
_NAT64_HIGH = 0x0064_FF9B_0000_0000_0000_0000   # 64:ff9b::/96 (RFC 6052 well-known)


def embedded_ipv4_key(key: int) -> int:
    """The key of the IPv4 address an IPv6 key embeds (IPv4-mapped, IPv4-compatible, NAT64
    well-known prefix); -1 when it embeds none. An IPv4 key is its own (it is the mapped form)."""
    high = key >> 32
    if high == 0xFFFF:
        return key
    if high == _NAT64_HIGH or (high == _IPV4_COMPATIBLE_HIGH and key >= _FIRST_COMPATIBLE):
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


UNKNOWN_SERVICE = "unknown-service"   # what no rule classes: governed by default (fail closed)
TUNNEL = "tunnel"
_NAME_CACHE = 50_000                  # names remembered by name_class (bounded)


def _port_ranges(specs: list) -> tuple[tuple[int, int], ...]:
    out = []
    for spec in specs:
        lo, _, hi = str(spec).partition("-")
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


class ServiceClass(NamedTuple):
    name: str
    governed: bool     # does Zoom's data-center region setting govern it (the default scope)?
    what: str


@dataclass(frozen=True)
class ZoomCatalogue:
    domains: DomainSet
    domain_regions: dict[str, dict]
    ports: dict[tuple[str, str], tuple[tuple[int, int], ...]]   # (service, transport) → ranges
    name_rules: tuple[tuple[str, re.Pattern], ...]              # (service, full-name pattern)
    crc_domains: DomainSet
    site_codes: frozenset[str]       # subdomain site codes: HOST.SITE.zoom.us is a meeting server
    ranges: PrefixTable[ZoomRange]
    ranges_source: str
    services: dict[str, ServiceClass] = field(default_factory=dict)
    range_services: frozenset[str] = frozenset({"phone", "cdn"})
    web_ports: frozenset[tuple[str, int]] = frozenset({("tcp", 80), ("tcp", 443), ("udp", 443)})
    # derived in __post_init__: (transport, port) → service, all name rules as one expression
    _port_services: dict[tuple[str, int], str] = field(init=False, repr=False, compare=False)
    _name_match: Callable[[str], re.Match[str] | None] = field(init=False, repr=False, compare=False)
    _name_services: dict[str, str] = field(init=False, repr=False, compare=False)
    _name_classes: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (transport, port) → service, expanded once: port lists are short ranges.
        table = {}
        for (service, proto), ranges in reversed(list(self.ports.items())):
            for lo, hi in ranges:
                for port in range(lo, hi + 1):
                    table[(proto, port)] = service
        object.__setattr__(self, "_port_services", table)
        # One expression for all name rules, each its own named group: one scan of the name,
        # not one per rule (the DNS filter asks this of every new Zoom name); the group that
        # matched says the rule, the first in the file where several could.
        names = {f"r{i}": service for i, (service, _) in enumerate(self.name_rules)}
        joined = "|".join(f"(?P<r{i}>{p.pattern})" for i, (_, p) in enumerate(self.name_rules))
        object.__setattr__(self, "_name_services", names)
        object.__setattr__(self, "_name_match", re.compile(joined).fullmatch if joined
                           else lambda host: None)
        object.__setattr__(self, "_name_classes", {})

    @classmethod
    def load(cls, directory: Path | None = None) -> ZoomCatalogue:
        # the data set in force (updated or bundled) unless a directory is given
        return _load(str(directory or config_dir()), None if directory else str(data_dir()))

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

    def port_service(self, transport: str, port: int) -> str | None:
        """The service class `ports:` gives this transport and port, if any (CRC: TCP 1720)."""
        return self._port_services.get((transport, port))

    def is_governed(self, service: str | None) -> bool:
        """Does Zoom's region setting govern this class (the default scope)? Unknown: yes."""
        known = self.services.get(service or UNKNOWN_SERVICE)
        return known is None or known.governed

    def name_class(self, host: str) -> str:
        """The class a (normalised) name gives a connection on a web port: the first name rule
        that matches the whole name; else `tunnel` for HOST.SITE.zoom.us; else "" (none).
        Remembered per name."""
        found = self._name_classes.get(host)
        if found is None:
            found = self.name_class_unremembered(host)
            if len(self._name_classes) >= _NAME_CACHE:
                self._name_classes.clear()
            self._name_classes[host] = found
        return found

    def name_class_unremembered(self, host: str) -> str:
        """name_class() for a caller that remembers the answer itself (the DNS filter keeps
        every fact of a name it asked about): no second memory of the same names."""
        m = self._name_match(host)
        if m is not None and m.lastgroup is not None:
            return self._name_services[m.lastgroup]
        return TUNNEL if self._at_site(host) else ""

    def is_meeting_server_name(self, host: str) -> bool:
        """Does `host` (normalised) name a meeting server: a zone controller, a multimedia
        router or HOST.SITE.zoom.us."""
        return self.name_class(host) in (TUNNEL, "zone-controller")

    def _at_site(self, host: str) -> bool:
        return (host.count(".") == 3 and host.endswith(".zoom.us")
                and host[host.index(".") + 1:-8] in self.site_codes)

    def _service(self, host: str | None, rng: ZoomRange | None, port: int, transport: str) -> str:
        if host and host in self.crc_domains:
            return "crc"
        service = self._port_services.get((transport, port))
        if service is not None:
            return service
        if rng is not None and rng.service in self.range_services:
            return rng.service
        if (transport, port) in self.web_ports:
            if host:
                return self.name_class(host) or UNKNOWN_SERVICE
            if transport == "tcp" and port == 443:
                return TUNNEL   # an unnamed TCP 443 connection straight to a Zoom server
        return UNKNOWN_SERVICE


@cache
def service_classes(directory: str | None = None) -> dict[str, ServiceClass]:
    """The service classes of config/zoom.yaml, by name (for the policy checker: cheap, no
    ranges loaded)."""
    with open(Path(directory or config_dir()) / "zoom.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return _services(raw)


def _services(raw: dict) -> dict[str, ServiceClass]:
    out = {}
    for name, spec in (raw.get("services") or {}).items():
        spec = spec or {}
        out[str(name)] = ServiceClass(str(name), bool(spec.get("governed", True)),
                                      str(spec.get("what") or ""))
    if UNKNOWN_SERVICE not in out:
        out[UNKNOWN_SERVICE] = ServiceClass(UNKNOWN_SERVICE, True, "Zoom traffic no rule classes")
    return out


def _name_rules(raw: dict, services: dict[str, ServiceClass]) -> tuple[tuple[str, re.Pattern], ...]:
    rules = []
    for i, rule in enumerate(raw.get("names") or ()):
        service, pattern = str(rule["service"]), re.compile(str(rule["match"]))
        if service not in services:
            raise ValueError(f"zoom.yaml: names[{i}]: service {service!r} is not in `services:`")
        if pattern.groups:
            raise ValueError(f"zoom.yaml: names[{i}]: {pattern.pattern!r} has a capturing group; "
                             "write (?:...) instead")
        rules.append((service, pattern))
    return tuple(rules)


@cache
def _load(directory: str, data: str | None = None) -> ZoomCatalogue:
    base = Path(directory)
    data_path = Path(data) if data else base / "data"
    with open(base / "zoom.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    ports = {}
    for service, by_proto in (raw.get("ports") or {}).items():
        for proto, specs in by_proto.items():
            ports[(service, proto)] = _port_ranges(specs)
    ranges_path = data_path / "zoom-ranges.csv"
    items = []
    with open(ranges_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            items.append((row["prefix"], ZoomRange(row["prefix"], row["service"], row["source"],
                                                   row["date"])))
    with open(data_path / "site-codes.csv", newline="", encoding="utf-8") as f:
        site_codes = frozenset(r["code"].lower() for r in csv.DictReader(f) if r["kind"] == "subdomain")
    services = _services(raw)
    unknown = sorted({service for service, _ in ports} - set(services))
    if unknown:
        raise ValueError(f"zoom.yaml: ports: {', '.join(unknown)} not in `services:`")
    web_ports = frozenset((proto, int(number))
                          for proto, numbers in (raw.get("web_ports") or {}).items()
                          for number in numbers)
    return ZoomCatalogue(
        domains=DomainSet(raw.get("domains") or ()),
        domain_regions={normalise_host(k): v for k, v in (raw.get("domain_regions") or {}).items()},
        ports=ports,
        name_rules=_name_rules(raw, services),
        crc_domains=DomainSet(raw.get("crc_domains") or ()),
        site_codes=site_codes,
        ranges=PrefixTable.from_prefixes(items),
        ranges_source=ranges_path.name,
        services=services,
        range_services=frozenset(raw.get("range_services") or ()),
        web_ports=web_ports,
    )
