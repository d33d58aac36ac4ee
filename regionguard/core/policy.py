"""The region policy: its YAML format, Zoom's rules, and every check with an error people can act on.

Zoom's rules, enforced here at load time (and relied on by the decision engine):
- the account's default region is always allowed; opting it out is an error;
- a free account is fixed to its default region: opt lists on it are an error;
- clients outside China never reach CN: CN in their allowed set is an error; clients in China
  reach CN only when CN is opted in;
- one allowed set per client group governs meeting servers, CRC endpoints and dial-in countries;
- scope: the allowed set holds the service classes Zoom's region setting governs (meeting and
  webinar traffic); other Zoom traffic (web, login, logging, CDN) is allowed and audited unless
  `scope:` says otherwise. The hard rules above hold for every class.

`load_policy()` returns an immutable Policy or raises PolicyError listing every problem, each with
file, line, field, bad value and fix.
"""

from __future__ import annotations

import csv
import difflib
import functools
import hashlib
import ipaddress
import math
import os
import re
import reprlib
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionguard.core.errors import PolicyError, Problem
from regionguard.core.paths import data_dir
from regionguard.core.physics import ClientSite, find_city
from regionguard.core.prefixes import PrefixTable, is_address
from regionguard.core.regions import Catalogue, load_catalogue
from regionguard.core.safeyaml import MAX_BYTES, load_yaml
from regionguard.core.zoom import service_classes

LOCATIONS = ("outside-china", "china")
ACCOUNT_TYPES = ("paid", "free")
DISALLOWED_ACTIONS = ("block", "reroute", "monitor")
UNKNOWN_ACTIONS = ("block", "allow", "monitor")
CONFLICT_MODES = ("precedence", "strict")
# `learned` (names regionguard resolved itself, regionguard/core/learned.py) ranks by its confidence,
# 0.75: below the operators' own range data (zoom-dc, cloud 0.9, geofeed 0.8), above GeoIP.
# `rtt` (physics, regionguard/core/physics.py) ranks after the range data (zoom-dc, cloud,
# geofeed): a round trip is cut short by any middlebox that answers for the server (a
# TCP-terminating proxy or firewall near the clients makes every address look near, so in the
# clients' own, allowed, region). Ranked first, that one box would place all of Zoom in reach;
# ranked here, it places only what no range data places, and a disagreement with the range data
# is a conflict either way (blocking under `conflicts: strict`).
SOURCES = ("override", "zoom-dc", "cloud", "geofeed", "rtt", "learned", "geoip", "hostname",
           "fallback")
RTT_MODES = ("off", "passive", "probe")
OTHER_ACTIONS = ("allow", "monitor", "block")
BLOCK_ANSWERS = ("nxdomain", "nodata", "refused", "zero")
CHINA = "CN"

_TOP_KEYS = ("version", "name", "description", "account", "regions", "client", "actions",
             "overrides", "groups", "evidence", "data", "resolver", "reroute", "dns", "gateway",
             "scope")
_KEYS = {
    "account": ("type", "default_region"),
    "regions": ("opt_in", "opt_out"),
    "client": ("location", "site"),
    "site": ("lat", "lon", "city"),
    "actions": ("disallowed", "unknown", "exempt_services"),   # exempt_services: an error (scope)
    "scope": ("governed", "other"),
    "override": ("match", "region", "country", "zoom", "note"),
    "group": ("name", "clients", "client", "regions", "actions", "scope"),
    "evidence": ("precedence", "conflicts", "min_confidence", "learned_ttl_days", "rtt"),
    "data": ("geoip", "geofeeds", "datacenters", "cloud"),
    "resolver": ("nameservers", "hosts", "timeout"),
    "reroute": ("match", "to"),
    "dns": ("block_answer", "strip_ech", "max_ttl"),
    "gateway": ("clients", "allow_proxy_host"),
}


@dataclass(frozen=True, slots=True)
class Override:
    match: str                 # a CIDR prefix, an address, or a hostname glob
    is_network: bool
    region: str | None
    country: str | None
    zoom: bool | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Rules:
    """The effective rules for one set of clients (the policy's top level, or a group)."""

    name: str
    location: str
    allowed: frozenset[str]
    disallowed_action: str
    unknown_action: str
    governed: frozenset[str]       # service classes held to `allowed` (scope.governed)
    other_action: str              # what the rest of Zoom's traffic gets (scope.other)
    clients: tuple[str, ...] = ()
    site: ClientSite | None = None  # where these clients (and RTTs measured for them) are


@dataclass(frozen=True, slots=True)
class EvidenceSettings:
    precedence: tuple[str, ...] = SOURCES
    conflicts: str = "precedence"
    min_confidence: float = 0.5
    learned_ttl_days: float | None = None   # None: the learned store's own (30 days)
    rtt: str = "off"                        # off | passive | probe (regionguard/core/rtt.py)


@dataclass(frozen=True, slots=True)
class DataSettings:
    geoip: tuple[Path, ...] = ()
    geofeeds: tuple[Path, ...] = ()
    datacenters: bool = True
    cloud: bool = True


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    nameservers: tuple[tuple[str, int], ...] = ()   # empty: the system's resolver
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class DnsSettings:
    block_answer: str = "nxdomain"
    strip_ech: bool = False
    max_ttl: int = 86400


@dataclass(frozen=True)
class GatewaySettings:
    """Who may use the proxy and the DNS filter, and whether remote clients may reach the proxy
    host itself. An empty `clients` lets everyone in (the front ends warn at start-up when they
    listen beyond loopback); loopback clients, the host's own, are always let in."""

    clients: tuple[str, ...] = ()
    allow_proxy_host: bool = False
    _table: PrefixTable[bool] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", PrefixTable.from_prefixes([(c, True) for c in self.clients]))

    @property
    def restricted(self) -> bool:
        return bool(self.clients)

    def client_allowed(self, client: str | None) -> bool:
        """May this client address use the proxy / the DNS filter? Unparseable: no."""
        if not self.clients:
            return True
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        if address.is_loopback:
            return True
        try:
            return self._table.get(str(address)) is not None
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Reroute:
    match: str
    to: str


@dataclass(frozen=True)
class Policy:
    path: str
    version_id: str               # content hash: which policy decided, in every audit line
    account_type: str
    default_region: str
    rules: Rules
    groups: tuple[Rules, ...]
    overrides: tuple[Override, ...]
    evidence: EvidenceSettings
    data: DataSettings
    resolver: ResolverSettings
    reroute: tuple[Reroute, ...]
    dns: DnsSettings
    catalogue: Catalogue
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    warnings: tuple[Problem, ...] = ()
    _group_table: PrefixTable[Rules] = field(default=None, repr=False)  # type: ignore[assignment]

    def rules_for(self, client: str | None) -> Rules:
        """The rules of the first group whose `clients` hold this address, else the top level."""
        if client and self.groups:
            try:
                found = self._group_table.get(client)
            except ValueError:
                found = None
            if found is not None:
                return found
        return self.rules

    def site_for(self, client: str | None) -> ClientSite | None:
        """Where this client's connections leave from (its group's `client.site`), if known."""
        return self.rules_for(client).site

    def enabled_crc_regions(self, client: str | None = None) -> frozenset[str]:
        """Regions whose Conference Room Connectors may join (the same allowed set)."""
        return self.rules_for(client).allowed

    def enabled_dialin_countries(self, client: str | None = None) -> frozenset[str]:
        """Countries whose dial-in numbers stay enabled: those of the allowed regions."""
        return self.catalogue.dialin_countries(self.rules_for(client).allowed)


def allowed_regions(catalogue: Catalogue, account_type: str, default_region: str,
                    opt_in: Iterable[str] | None, opt_out: Iterable[str] | None) -> frozenset[str]:
    """Zoom's allowed set, before the China check (which is an error, not a silent drop).

    - free: the default region only;
    - paid, no lists: every region but China (Zoom's default), plus the default region;
    - opt_in: those, plus the default region;
    - opt_out: every region but those and China, plus the default region;
    - both (rejected by the policy checker; kept total here): their union, as above.
    """
    if account_type == "free":
        return frozenset({default_region})
    everything_but_china = catalogue.codes - {CHINA}
    if opt_in is None and opt_out is None:
        return everything_but_china | {default_region}
    allowed = set(everything_but_china - set(opt_out)) if opt_out is not None else set()
    allowed |= set(opt_in or ())
    allowed.add(default_region)
    return frozenset(allowed)


def load_policy(path: str | Path, catalogue: Catalogue | None = None) -> Policy:
    """Read, check and build a policy. Raises PolicyError with every problem found."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # a FIFO would block the reader forever, a device (/dev/zero) never end
            raise PolicyError([Problem(str(path), "", "not a regular file (a directory, device, FIFO "
                                       "or socket)", "give the path of a policy YAML file")])
        with open(path, "rb") as f:
            # read at most one byte more than a policy may have: a huge file (or /dev/zero)
            # is refused without reading it all
            data = f.read(MAX_BYTES + 1)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem(str(path), "", "file not found",
                                   "give the path of a policy YAML file (see config/policy.yaml)")]) from None
    except UnicodeDecodeError as e:
        raise PolicyError([Problem(str(path), "", f"not UTF-8 text (byte {e.start})",
                                   "save the file as UTF-8")]) from None
    except OSError as e:
        raise PolicyError([Problem(str(path), "", f"cannot read: {e.strerror or e}",
                                   "check the file and its permissions")]) from None
    return parse_policy(text, str(path), catalogue)


def parse_policy(text: str, filename: str = "<policy>", catalogue: Catalogue | None = None) -> Policy:
    """Check and build a policy from its text (see regionguard.core.safeyaml for what YAML is read)."""
    catalogue = catalogue or load_catalogue()
    raw, lines = load_yaml(text, filename, PolicyError)
    checker = _Checker(filename, lines, catalogue, Path(filename).parent)
    policy = checker.build(raw, text)
    if checker.problems:
        # a group that inherits a bad top-level value reports the same problem again: once is enough
        raise PolicyError(list(dict.fromkeys(checker.problems)))
    return policy


# --- internals -------------------------------------------------------------------------------------


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Checker:
    def __init__(self, filename: str, lines: dict[tuple, int], catalogue: Catalogue, base: Path) -> None:
        self.filename = filename
        self.lines = lines
        self.catalogue = catalogue
        self.base = base
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.top_site: ClientSite | None = None
        self.site_given = False   # a bad site is reported once, not again as a missing one

    # reporting
    def line(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, path: tuple, message: str, fix: str) -> None:
        self.problems.append(Problem(self.filename, _dotted(path), message, fix, self.line(path)))

    def warn(self, path: tuple, message: str, fix: str) -> None:
        self.warnings.append(Problem(self.filename, _dotted(path), message, fix, self.line(path)))

    # shape helpers
    def mapping(self, value: Any, path: tuple, keys: Iterable[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_show(value)}",
                       f"write `{_dotted(path)}:` followed by indented `key: value` lines")
            return {}
        keys = tuple(keys)
        for k in value:
            if k not in keys:
                close = difflib.get_close_matches(str(k), keys, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(keys)}"
                self.error(path + (k,), f"unknown key {k!r}", f"remove it or rename it ({hint})")
        return value

    def sequence(self, value: Any, path: tuple, fix: str | None = None) -> list:
        """A YAML list. A lone scalar is not taken as a list of one: `clients: 10.0.0.0/8,
        10.1.0.0/16` is one string, and `opt_in: true` a mistake, not a region. The fix shows the
        list the user most likely meant (`opt_in: [US]`) unless the caller knows better."""
        if value is None:
            return []
        if not isinstance(value, list):
            if fix is None and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                fix = (f"write a YAML list: `{path[-1]}: [{value}]` (or one `- item` per line "
                       "under it)")
            self.error(path, f"expected a list, got {_kind(value)} {_show(value)}",
                       fix or "write a YAML list: [A, B] (or one `- item` per line)")
            return []
        return value

    def text(self, value: Any, path: tuple, example: str) -> str | None:
        """A string. YAML reads unquoted `NO`, `on`, `1.10` or `2024-01-01` as a boolean, a number
        or a date: say so, instead of using str() of what YAML made of it."""
        if isinstance(value, str):
            return value
        self.error(path, f"expected text, got {_kind(value)} {_show(value)}",
                   f"write it as text, quoted if YAML would read it otherwise: {example}")
        return None

    def whole_number(self, value: Any, path: tuple, low: int, high: int, example: str) -> int | None:
        """An int in [low, high]; YAML's true/false (which Python counts as ints) and floats are not."""
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        self.error(path, f"{_show(value)} is not a whole number from {low} to {high}",
                   f"write e.g. {example}")
        return None

    def choice(self, value: Any, path: tuple, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            fix = f"use one of: {', '.join(choices)}" + (f" (did you mean {close[0]!r}?)" if close else "")
            self.error(path, f"{_show(value)} is not a valid value", fix)
            return default
        return value

    def region_names(self, values: list, path: tuple) -> set[str]:
        out: set[str] = set()
        for i, name in enumerate(values):
            if self.text(name, path + (i,), "[US, Europe]") is None:
                continue
            codes = self.catalogue.expand(name)
            if codes is None:
                close = self.catalogue.suggest(str(name))
                fix = ((f"did you mean {' or '.join(map(repr, close))}? " if close else "")
                       + "use a region code (" + " ".join(sorted(self.catalogue.codes))
                       + ") or a group (" + ", ".join(self.catalogue.groups)
                       + "); `regionguard regions` lists them")
                self.error(path + (i,), f"unknown region or group {name!r}", fix)
            else:
                out |= codes
        return out

    def one_region(self, value: Any, path: tuple) -> str | None:
        if self.text(value, path, "US") is None:
            return None
        code = self.catalogue.region_code(value)
        if code is None:
            expanded = self.catalogue.expand(str(value))
            if expanded:
                self.error(path, f"{_show(value)} is a group of regions ({', '.join(sorted(expanded))}), "
                           "but a single region is needed", f"pick one of {', '.join(sorted(expanded))}")
            else:
                close = self.catalogue.suggest(str(value))
                self.error(path, f"unknown region {_show(value)}",
                           (f"did you mean {' or '.join(map(repr, close))}? " if close else "")
                           + "use one of " + " ".join(sorted(self.catalogue.codes)))
        return code

    # the policy
    def build(self, raw: Any, text: str) -> Policy:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.error((), "the policy must be a YAML mapping", "start from config/policy.yaml")
            raw = {}
        top = self.mapping(raw, (), _TOP_KEYS)
        version = top.get("version")
        if type(version) is not int or version != 1:   # True == 1.0 == 1 in Python, not here
            self.error(("version",), f"unsupported version {version!r}" if version is not None
                       else "missing", "write `version: 1` at the top")

        for key in ("name", "description"):
            if top.get(key) is not None:
                self.text(top[key], (key,), f'{key}: "..."')

        account = self.mapping(top.get("account"), ("account",), _KEYS["account"])
        account_type = self.choice(account.get("type"), ("account", "type"), ACCOUNT_TYPES, "paid")
        default_region = "US"
        if account.get("default_region") is None:
            self.error(("account", "default_region"), "missing",
                       "name the region the Zoom account was created in, e.g. `default_region: US`")
        else:
            default_region = self.one_region(account["default_region"],
                                             ("account", "default_region")) or "US"

        base = self.rules(top, (), "default", account_type, default_region, None)
        groups = []
        names = set()
        group_fix = ("`groups` is a list of mappings, one per group: write `groups: [{name: lab, "
                     "clients: [10.20.0.0/16], regions: {opt_in: [US]}}]` or one `- name: ...` "
                     "block per group")
        for i, g in enumerate(self.sequence(top.get("groups"), ("groups",), group_fix)):
            gpath = ("groups", i)
            if not isinstance(g, dict):
                # one error for the entry: its name, clients and rules would only follow from it
                self.error(gpath, f"expected a group (a mapping), got {_kind(g)} {_show(g)}",
                           group_fix)
                continue
            g = self.mapping(g, gpath, _KEYS["group"])
            raw_name = g.get("name")
            given = (self.text(raw_name, gpath + ("name",), "name: shanghai-office")
                     if raw_name is not None else None)
            name = given or f"group-{i + 1}"
            if raw_name is None or raw_name == "":
                self.error(gpath + ("name",), "missing", "give every group a unique `name`")
            elif name in names or name == "default":
                self.error(gpath + ("name",), f"duplicate group name {name!r}", "use a unique name")
            names.add(name)
            clients = []
            for j, c in enumerate(self.sequence(g.get("clients"), gpath + ("clients",))):
                if self.text(c, gpath + ("clients", j), "10.20.0.0/16") is None:
                    continue
                try:
                    clients.append(str(ipaddress.ip_network(c, strict=False)))
                except ValueError:
                    self.error(gpath + ("clients", j), f"{_show(c)} is not an address or CIDR prefix",
                               "write client networks like 10.20.0.0/16 or 2001:db8::/32")
            if not clients and "clients" not in g:
                self.error(gpath + ("clients",), "missing",
                           "list the client networks this group applies to, e.g. [10.20.0.0/16]")
            groups.append(self.rules(g, gpath, name, account_type, default_region, top,
                                     tuple(clients)))

        overrides = tuple(self.overrides(top.get("overrides")))
        evidence = self.evidence(top.get("evidence"))
        if evidence.rtt != "off" and not self.site_given:
            self.error(("evidence", "rtt"), f"rtt: {evidence.rtt} needs to know where clients "
                       "are, and no client site is given",
                       "add `client: {site: {city: Frankfurt}}` (or {lat: .., lon: ..}) at the "
                       "top level or in the groups whose connections are measured")
        data = self.data(top.get("data"))
        resolver = self.resolver(top.get("resolver"))
        reroute = tuple(self.reroutes(top.get("reroute")))
        dns = self.dns(top.get("dns"))
        gateway = self.gateway(top.get("gateway"))

        table: PrefixTable[Rules] = PrefixTable.from_prefixes(
            # first match wins: add in reverse so earlier groups are added last and win ties
            [(c, g) for g in reversed(groups) for c in g.clients]
        )
        return Policy(
            path=self.filename,
            version_id=hashlib.sha256(text.encode()).hexdigest()[:12],
            account_type=account_type,
            default_region=default_region,
            rules=base,
            groups=tuple(groups),
            overrides=overrides,
            evidence=evidence,
            data=data,
            resolver=resolver,
            reroute=reroute,
            dns=dns,
            catalogue=self.catalogue,
            gateway=gateway,
            warnings=tuple(self.warnings),
            _group_table=table,
        )

    def rules(self, section: dict, path: tuple, name: str, account_type: str, default_region: str,
              parent: dict | None, clients: tuple[str, ...] = ()) -> Rules:
        inherit = parent or {}
        client = self.mapping(section.get("client"), path + ("client",), _KEYS["client"])
        parent_client = inherit.get("client") if isinstance(inherit.get("client"), dict) else {}
        location = self.choice(client.get("location", parent_client.get("location")),
                               path + ("client", "location"), LOCATIONS, "outside-china")
        if "site" in client:
            self.site_given = True
            site = self.site(client["site"], path + ("client", "site"))
        elif parent is not None:
            site = self.top_site
        else:
            site = None
        if parent is None:
            self.top_site = site

        regions_path = path + ("regions",) if "regions" in section or parent is None else ("regions",)
        regions_raw = section.get("regions") if "regions" in section else inherit.get("regions")
        regions = self.mapping(regions_raw, regions_path, _KEYS["regions"])
        opt_in = opt_out = None
        if "opt_in" in regions:
            opt_in = self.region_names(self.sequence(regions["opt_in"], regions_path + ("opt_in",)),
                                       regions_path + ("opt_in",))
        if "opt_out" in regions:
            opt_out = self.region_names(self.sequence(regions["opt_out"], regions_path + ("opt_out",)),
                                        regions_path + ("opt_out",))

        if account_type == "free" and (opt_in is not None or opt_out is not None):
            self.error(regions_path, "a free account is fixed to its default region "
                       f"({default_region}); regions cannot be opted in or out",
                       "remove `regions:` (or set account.type: paid if the account is paid)")
        if opt_out and default_region in opt_out:
            self.error(regions_path + ("opt_out",), f"{default_region!r} is the account's default "
                       "region, which is always on and cannot be opted out",
                       f"remove {default_region} (or the group containing it) from opt_out")
        if opt_in is not None and opt_out is not None:
            self.error(regions_path, "both opt_in and opt_out are given; a policy lists either the "
                       "regions it opts in, or the regions it opts out of every region but China",
                       "keep one of the two lists")
            opt_out = None
        allowed = allowed_regions(self.catalogue, account_type, default_region, opt_in, opt_out)

        if location == "outside-china" and CHINA in allowed:
            in_opt_in = opt_in and CHINA in opt_in
            where = regions_path + ("opt_in",) if in_opt_in else ("account", "default_region")
            who = "the top level" if name == "default" else f"group {name!r}"
            self.error(where, "clients outside China are never routed to China (CN), "
                       f"but CN is allowed for {who}",
                       "remove CN (or China) from opt_in, or set `client: {location: china}` "
                       "for clients based in China (in a group, for a China office)")

        actions = self.mapping(section.get("actions"), path + ("actions",), _KEYS["actions"])
        parent_actions = inherit.get("actions") if isinstance(inherit.get("actions"), dict) else {}
        disallowed = self.choice(actions.get("disallowed", parent_actions.get("disallowed")),
                                 path + ("actions", "disallowed"), DISALLOWED_ACTIONS, "block")
        unknown = self.choice(actions.get("unknown", parent_actions.get("unknown")),
                              path + ("actions", "unknown"), UNKNOWN_ACTIONS, "block")
        governed, other = self.scope(section, path, inherit, actions)
        return Rules(name, location, allowed, disallowed, unknown, governed, other, clients, site)

    def site(self, raw: Any, path: tuple) -> ClientSite | None:
        """`site: {lat: 50.11, lon: 8.68}` or `site: {city: Frankfurt}` (config/data/cities.csv)."""
        fix = "write site: {lat: 50.11, lon: 8.68} or site: {city: Frankfurt}"
        if not isinstance(raw, dict):
            self.error(path, f"expected a mapping, got {_kind(raw)} {_show(raw)}", fix)
            return None
        site = self.mapping(raw, path, _KEYS["site"])
        if "city" in site:
            if "lat" in site or "lon" in site:
                self.error(path, "gives both a city and coordinates", "keep one of the two")
                return None
            name = self.text(site["city"], path + ("city",), "city: Frankfurt")
            if name is None:
                return None
            city, candidates = find_city(name)
            if city is None:
                shown = "; ".join(f"{c.name}, {c.country}" for c in candidates[:5])
                self.error(path + ("city",),
                           f"{name!r} is " + (f"ambiguous ({shown})" if candidates
                                              else "not in config/data/cities.csv"),
                           ("name the country too, e.g. city: \"" + candidates[0].name + ", "
                            + candidates[0].country + "\"") if candidates else
                           "give the coordinates instead: site: {lat: 50.11, lon: 8.68} (the "
                           "city table holds cities of 1,000,000+ and Zoom's site cities)")
                return None
            return ClientSite(f"{city.name} ({city.country})", city.latitude, city.longitude)
        values = []
        for key, limit in (("lat", 90), ("lon", 180)):
            value = site.get(key)
            if value is None:
                self.error(path + (key,), "missing", fix)
                return None
            if not _is_number(value) or not -limit <= value <= limit:
                self.error(path + (key,), f"{_show(value)} is not a number from -{limit} to "
                           f"{limit} (degrees)", fix)
                return None
            values.append(float(value))
        return ClientSite(f"{values[0]:g},{values[1]:g}", values[0], values[1])

    def scope(self, section: dict, path: tuple, inherit: dict, actions: dict
              ) -> tuple[frozenset[str], str]:
        """`scope:` (inherited per key from the top level): which service classes the allowed
        regions govern, by default those Zoom's region setting governs; and what other Zoom
        traffic gets: allow (audited), monitor (let through, audited as what the region rules
        would do) or block."""
        classes = service_classes()
        default = frozenset(n for n, c in classes.items() if c.governed)
        if "exempt_services" in actions:
            self.exempt_services_error(path + ("actions", "exempt_services"),
                                       actions["exempt_services"], default, classes)
        scope = self.mapping(section.get("scope"), path + ("scope",), _KEYS["scope"])
        parent = inherit.get("scope") if isinstance(inherit.get("scope"), dict) else {}
        governed = default
        raw = scope.get("governed", parent.get("governed"))
        if raw is not None:
            where = path + ("scope", "governed") if "governed" in scope else ("scope", "governed")
            names = [str(s) for s in self.sequence(raw, where)]
            for i, s in enumerate(names):
                self.choice(s, where + (i,), tuple(classes), s)
            governed = frozenset(s for s in names if s in classes)
            left_out = sorted(default - governed)
            if left_out and "governed" in scope:
                self.warn(where, f"leaves out {', '.join(left_out)}, which Zoom's region setting "
                          "governs: that traffic is not held to the allowed regions",
                          f"add {', '.join(left_out)} to scope.governed unless that is the intent")
        other = self.choice(scope.get("other", parent.get("other")), path + ("scope", "other"),
                            OTHER_ACTIONS, "allow")
        return governed, other

    def exempt_services_error(self, path: tuple, raw: Any, default: frozenset[str],
                              classes: dict) -> None:
        """`actions.exempt_services` (before scope): an error that gives both exact rewrites.
        Accepting it would keep two spellings of one thing, and any translation changes what
        the file meant without the admin noticing: either everything still held to the region
        (what made Zoom's web and login fail) or silently less held."""
        exempt = {str(s) for s in self.sequence(raw, path)}
        held = [n for n in classes if n not in exempt]
        self.error(path, "no longer supported: replaced by `scope:`, which holds only the service "
                   "classes Zoom's region setting governs to the allowed regions and allows and "
                   "audits the rest of Zoom's traffic",
                   "delete exempt_services to hold only " + ", ".join(sorted(default))
                   + " (the new default); or, to keep holding everything but "
                   + ", ".join(sorted(exempt)) + " to the region policy as before, write "
                   + f"`scope: {{governed: [{', '.join(held)}]}}` instead")

    def overrides(self, raw: Any) -> Iterable[Override]:
        for i, o in enumerate(self.sequence(raw, ("overrides",))):
            path = ("overrides", i)
            o = self.mapping(o, path, _KEYS["override"])
            if o.get("match") is None or o.get("match") == "":
                self.error(path + ("match",), "missing",
                           "give an address, a CIDR prefix or a hostname pattern such as *.lab.example")
                continue
            match = self.text(o["match"], path + ("match",), '"203.0.113.0/24" or "*.lab.example"')
            if match is None:
                continue
            match = match.strip()
            is_network = False
            try:
                ipaddress.ip_network(match, strict=True)
                is_network = True
            except ValueError as e:
                if "/" in match or is_address(match.split("/")[0]):
                    self.error(path + ("match",), f"{match!r} is not a valid CIDR prefix ({e})",
                               "clear the host bits, e.g. 203.0.113.0/24")
                    continue
                match = match.lower().rstrip(".")   # as names are compared: normalise_host
                if not _HOST_PATTERN.match(match):
                    self.error(path + ("match",), f"{match!r} is neither an address, a CIDR prefix "
                               "nor a hostname pattern", "write e.g. 203.0.113.0/24 or *.lab.example "
                               "(letters, digits, '-', '.', '*'; international names as xn--…)")
                    continue
            region = None
            if o.get("region") not in (None, "none", "None"):
                region = self.one_region(o["region"], path + ("region",))
            country = self.country(o.get("country"), path + ("country",))
            if country is None and region:
                countries = self.catalogue.regions[region].countries
                country = countries[0] if countries else None
            if o.get("region") in (None, "none", "None") and o.get("country") is None \
                    and o.get("zoom") is None:
                self.error(path, "says nothing", "give a `region`, a `country` or `zoom: true/false`")
            zoom = o.get("zoom")
            if zoom is not None and not isinstance(zoom, bool):
                self.error(path + ("zoom",), f"{_show(zoom)} is not true or false", "write zoom: true")
                zoom = None
            note = o.get("note")
            if note is not None:
                note = self.text(note, path + ("note",), 'note: "lab network"')
            yield Override(match, is_network, region, country, zoom, note or "")

    def country(self, value: Any, path: tuple) -> str | None:
        """An ISO 3166-1 alpha-2 code (config/data/iso3166-alpha2.csv), upper-cased."""
        if value is None:
            return None
        if value is False:   # YAML 1.1 reads an unquoted NO (Norway) as false
            self.error(path, "YAML read this as false (unquoted NO is a boolean in YAML)",
                       'quote the code: country: "NO"')
            return None
        if self.text(value, path, 'country: "DE"') is None:
            return None
        code = value.strip().upper()
        known = iso_countries()
        if code not in known:
            close = ([_RESERVED_CODES[code]] if code in _RESERVED_CODES
                     else difflib.get_close_matches(code, sorted(known), n=3))
            self.error(path, f"{_show(value)} is not an ISO 3166-1 alpha-2 country code",
                       (f"did you mean {' or '.join(map(repr, close))}? " if close else "")
                       + "write the two-letter code, e.g. DE, US, JP (the list: "
                       "config/data/iso3166-alpha2.csv)")
            return None
        return code

    def evidence(self, raw: Any) -> EvidenceSettings:
        ev = self.mapping(raw, ("evidence",), _KEYS["evidence"])
        precedence = SOURCES
        if "precedence" in ev:
            items = self.sequence(ev["precedence"], ("evidence", "precedence"))
            for i, s in enumerate(items):
                self.choice(s, ("evidence", "precedence", i), SOURCES, s)
            precedence = tuple(dict.fromkeys(s for s in items if isinstance(s, str) and s in SOURCES))
        conflicts = self.choice(ev.get("conflicts"), ("evidence", "conflicts"), CONFLICT_MODES,
                                "precedence")
        min_conf = ev.get("min_confidence", 0.5)
        if not _is_number(min_conf) or not 0 <= min_conf <= 1:
            self.error(("evidence", "min_confidence"), f"{_show(min_conf)} is not a number from 0 to 1",
                       "write e.g. min_confidence: 0.5")
            min_conf = 0.5
        ttl = ev.get("learned_ttl_days")
        if ttl is not None and (not _is_number(ttl) or not 0 < ttl <= 3650):
            self.error(("evidence", "learned_ttl_days"),
                       f"{ttl!r} is not a number of days from above 0 to 3650",
                       "write e.g. learned_ttl_days: 30")
            ttl = None
        raw_rtt = ev.get("rtt")
        if raw_rtt is False:   # YAML 1.1 reads an unquoted `off` as false: it means off
            raw_rtt = "off"
        rtt = self.choice(raw_rtt, ("evidence", "rtt"), RTT_MODES, "off")
        if rtt != "off" and "rtt" not in precedence:
            self.error(("evidence", "rtt"), f"rtt: {rtt} measures, but `rtt` is not in "
                       "evidence.precedence, so no measurement would ever count",
                       "add rtt to evidence.precedence (after geofeed), or set rtt: off")
        return EvidenceSettings(precedence, conflicts, float(min_conf),
                                None if ttl is None else float(ttl), rtt)

    def path_list(self, raw: Any, path: tuple, what: str) -> tuple[Path, ...]:
        out = []
        for i, p in enumerate(self.sequence(raw, path)):
            if self.text(p, path + (i,), "GeoLite2-Country.mmdb") is None:
                continue
            if "\0" in p:
                self.error(path + (i,), "a path cannot hold a NUL character", "fix the file name")
                continue
            full = (self.base / p).resolve() if not Path(p).is_absolute() else Path(p)
            if not full.is_file():
                self.warn(path + (i,), f"{what} {str(full)!r} not found: that source is off, and "
                          "addresses only it could place stay unknown (blocked by default)",
                          f"fix the path (relative paths are from {self.base}) or remove it")
                continue
            out.append(full)
        return tuple(out)

    def data(self, raw: Any) -> DataSettings:
        d = self.mapping(raw, ("data",), _KEYS["data"])
        flags = {}
        for key in ("datacenters", "cloud"):
            value = d.get(key, True)
            if not isinstance(value, bool):
                self.error(("data", key), f"{_show(value)} is not true or false", f"write {key}: true")
                value = True
            flags[key] = value
        return DataSettings(self.path_list(d.get("geoip"), ("data", "geoip"), "GeoIP database"),
                            self.path_list(d.get("geofeeds"), ("data", "geofeeds"), "geofeed"),
                            **flags)

    def resolver(self, raw: Any) -> ResolverSettings:
        r = self.mapping(raw, ("resolver",), _KEYS["resolver"])
        servers = []
        for i, ns in enumerate(self.sequence(r.get("nameservers"), ("resolver", "nameservers"))):
            if self.text(ns, ("resolver", "nameservers", i), '"127.0.0.1:5353"') is None:
                continue
            parsed = parse_hostport(ns, 53)
            if parsed is None:
                self.error(("resolver", "nameservers", i), f"{_show(ns)} is not HOST:PORT",
                           "write an address with an optional port: 127.0.0.1:5353 or [::1]:53")
            else:
                servers.append(parsed)
        hosts: dict[str, tuple[str, ...]] = {}
        raw_hosts = r.get("hosts") or {}
        if not isinstance(raw_hosts, dict):
            self.error(("resolver", "hosts"), "expected a mapping of name: address",
                       'write hosts: {"de.zoom.us": "127.0.1.1"}')
            raw_hosts = {}
        for name, addrs in raw_hosts.items():
            if self.text(name, ("resolver", "hosts", name), '"de.zoom.us": "127.0.1.1"') is None:
                continue
            good = []
            # one address, or a list of them
            for a in self.sequence([addrs] if isinstance(addrs, str) else addrs,
                                   ("resolver", "hosts", name)):
                if isinstance(a, str) and is_address(a):
                    good.append(str(a))
                else:
                    self.error(("resolver", "hosts", name), f"{_show(a)} is not an IP address",
                               "map each name to an address or a list of addresses")
            hosts[str(name).lower().rstrip(".")] = tuple(good)
        timeout = r.get("timeout", 3.0)
        if not _is_number(timeout) or not 0 < timeout <= 60:
            self.error(("resolver", "timeout"), f"{_show(timeout)} is not a number of seconds above 0 "
                       "and at most 60", "write e.g. timeout: 3")
            timeout = 3.0
        return ResolverSettings(tuple(servers), hosts, float(timeout))

    def gateway(self, raw: Any) -> GatewaySettings:
        g = self.mapping(raw, ("gateway",), _KEYS["gateway"])
        clients = []
        for i, c in enumerate(self.sequence(g.get("clients"), ("gateway", "clients"))):
            if self.text(c, ("gateway", "clients", i), '"10.0.0.0/8"') is None:
                continue
            try:
                clients.append(str(ipaddress.ip_network(c, strict=False)))
            except ValueError:
                self.error(("gateway", "clients", i), f"{_show(c)} is not an address or CIDR prefix",
                           "list the client networks allowed to use the proxy and DNS filter, "
                           "e.g. [10.0.0.0/8, 2001:db8::/32]")
        allow = g.get("allow_proxy_host", False)
        if not isinstance(allow, bool):
            self.error(("gateway", "allow_proxy_host"), f"{_show(allow)} is not true or false",
                       "write allow_proxy_host: false (the default) or true")
            allow = False
        return GatewaySettings(tuple(clients), allow)

    def reroutes(self, raw: Any) -> Iterable[Reroute]:
        for i, r in enumerate(self.sequence(raw, ("reroute",))):
            r = self.mapping(r, ("reroute", i), _KEYS["reroute"])
            if not r.get("match") or not r.get("to"):
                self.error(("reroute", i), "needs both `match` and `to`",
                           'write {match: "*.zoom.us", to: us01.zoom.us}')
                continue
            names = []
            for key, example in (("match", '"*.zoom.us"'), ("to", "us01.zoom.us")):
                value = self.text(r[key], ("reroute", i, key), f"{key}: {example}")
                value = value.strip().lower().rstrip(".") if value is not None else None
                if value is not None and (not _HOST_PATTERN.match(value)
                                          or key == "to" and "*" in value):
                    self.error(("reroute", i, key), f"{_show(value)} is not a hostname"
                               + (" pattern" if key == "match" else ""), f"write e.g. {key}: {example}")
                    value = None
                names.append(value)
            if None not in names:
                yield Reroute(names[0], names[1])

    def dns(self, raw: Any) -> DnsSettings:
        d = self.mapping(raw, ("dns",), _KEYS["dns"])
        answer = self.choice(d.get("block_answer"), ("dns", "block_answer"), BLOCK_ANSWERS, "nxdomain")
        strip = d.get("strip_ech", False)
        if not isinstance(strip, bool):
            self.error(("dns", "strip_ech"), f"{_show(strip)} is not true or false", "write strip_ech: true")
            strip = False
        # RFC 2181: a TTL is at most 2^31 - 1 seconds
        max_ttl = self.whole_number(d.get("max_ttl", 86400), ("dns", "max_ttl"), 0, 2**31 - 1,
                                    "max_ttl: 3600")
        if max_ttl is None:
            max_ttl = 86400
        return DnsSettings(answer, strip, max_ttl)


# a hostname, or a pattern of one with `*` wildcards, as the classifier compares them (lower case)
_HOST_PATTERN = re.compile(r"^(?=.{1,253}$)[a-z0-9_*](?:[a-z0-9_*.-]*[a-z0-9_*])?$")


# codes ISO 3166 reserves for other uses, which people write for the country's own code
_RESERVED_CODES = {"UK": "GB", "EL": "GR"}


@functools.cache
def iso_countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes, from config/data/iso3166-alpha2.csv."""
    with open(data_dir() / "iso3166-alpha2.csv", encoding="utf-8", newline="") as f:
        rows = csv.reader(line for line in f if not line.startswith("#"))
        return frozenset(row[0] for row in rows if row and row[0] != "code")


# a value quoted in an error: enough to recognise it, never the whole of a huge list or string
_SHORT = reprlib.Repr(maxlevel=2, maxlist=5, maxdict=5, maxstring=60, maxother=60)


def _show(value: Any) -> str:
    return _SHORT.repr(value)


def _kind(value: Any) -> str:
    """What YAML made of a value, in its words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"   # a date, for example


def _is_number(value: Any) -> bool:
    """A finite int or float; YAML's true/false and .nan/.inf are not numbers here."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def parse_hostport(text: str, default_port: int) -> tuple[str, int] | None:
    """'127.0.0.1:53', '[::1]:5353', '::1', 'localhost' → (host, port); None if malformed."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        if not p.isdigit():
            return None
        port = int(p)
    if not host or not 0 < port < 65536:
        return None
    return host, port
