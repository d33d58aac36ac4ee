"""Compile a policy and its evidence into an nftables ruleset (JSON): the pure step, no I/O.

The kernel sees a packet's source and destination address, its transport and destination port,
and nothing else: no name, no SNI. So the ruleset holds exactly `Engine.decide(client, None,
address, port, transport)`, the decision the proxy and the DNS filter make for a connection to a
bare address. It is computed by that engine, never re-implemented:

- Destinations. Only Zoom's addresses can be blocked (everything else is `pass`): Zoom's
  published ranges and the policy's network overrides are the candidates. They are cut at every
  boundary where any evidence source may change its answer (each static source's intervals, the
  learned store's addresses and blocks, each GeoIP network met), so every address of a piece has
  the same evidence, hence the same decision; the engine decides one address per piece.
- Ports. Zoom's catalogue classes a connection by transport and port (meeting 8801-8810, relay
  3478-3479, CRC, the web ports; the rest by range or `unknown-service`). Each such port class is
  decided separately; classes whose blocked pieces are the same share one rule.
- Clients. A policy group is chosen by the longest of its client prefixes (Policy.rules_for);
  the client space is cut at every group prefix and each piece given its group the same way.
- NAT64. An address in 64:ff9b::/96 embeds an IPv4 one and is decided as that address (as the
  engine does), so the IPv6 sets hold the images of the IPv4 pieces there.

One table of its own, `inet regionguard`: a base chain on the chosen hook first lets through
what no group is blocked from (one lookup in `blocked_anywhere_v4/v6`), then sends each client
group to its chain (`goto`), whose rules drop (or reject) a transport and port class to a named
interval set of destinations, one set per group, port class and deciding rule (so the counters
say why: region-disallowed, unknown-region, cn-tunnel-removed, ...). `monitor` is let through,
as the proxy does; `reroute` is dropped (the kernel cannot send a packet elsewhere; the DNS
filter gives clients the allowed name). Only TCP and UDP are Zoom's business; other protocols
pass.
"""

from __future__ import annotations

import ipaddress
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from regionguard.core.decision import Engine
from regionguard.core.prefixes import address_key, network_range
from regionguard.core.zoom import ZoomCatalogue

FAMILY = "inet"
TABLE = "regionguard"
BASE_CHAIN = "filter"
HOOKS = ("forward", "output")
VERDICTS = ("drop", "reject")
TRANSPORTS = ("tcp", "udp")

_V4_BASE = 0xFFFF_0000_0000                    # where IPv4 sits among the keys (address_key)
_V4_END = _V4_BASE + (1 << 32)                 # one past the IPv4 band
_NAT64 = 0x0064_FF9B << 96                     # 64:ff9b::/96 (RFC 6052)
_NAT64_END = _NAT64 + (1 << 32)
_COMPAT_END = 1 << 32                          # ::/96, IPv4-compatible: never on the wire
_SPACE_END = 1 << 128
_ANY_BLOCKED = {"ipv4": "blocked_anywhere_v4", "ipv6": "blocked_anywhere_v6"}


class PortClass(NamedTuple):
    """Ports of one transport that Zoom's catalogue classes alike. `ports` None: every port not
    listed in another class of the transport."""

    transport: str
    ports: frozenset[int] | None
    probe: int                # the port the engine is asked about
    label: str                # for comments: the service the port says, or "other ports"


@dataclass(frozen=True)
class Options:
    hook: str = "forward"
    verdict: str = "drop"
    log_prefix: str | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if self.hook not in HOOKS:
            raise ValueError(f"hook {self.hook!r}: use one of {', '.join(HOOKS)}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: use one of {', '.join(VERDICTS)}")


class Element(NamedTuple):
    """Destinations [start, end] (address keys), a transport and a run of ports [low, high]."""

    start: int
    end: int
    transport: str
    low: int
    high: int


@dataclass
class BlockSet:
    """One named set: what one client group is blocked from for one reason (the deciding rule),
    in one address family: `daddr . l4proto . dport` elements."""

    name: str
    family: str                 # "ipv4" | "ipv6"
    group: str
    rule: str                   # region-disallowed, unknown-region, cn-tunnel-removed, ...
    elements: list[Element] = field(default_factory=list)

    @property
    def comment(self) -> str:
        return f"group {self.group}: blocked by {self.rule}"


@dataclass
class Compiled:
    """The compiled ruleset: the groups and sets it was built from, and the nft JSON."""

    options: Options
    policy_version: str
    groups: list[tuple[str, list[tuple[int, int]]]]     # (group, client key intervals)
    sets: list[BlockSet]

    def document(self) -> dict:
        """The whole ruleset as one nft JSON batch, one transaction, that replaces the table:
        create it (so that deleting cannot fail), delete it, create it anew with every set,
        chain and rule. Nothing outside table inet regionguard is named."""
        return {"nftables": [_add({"table": _table_object()}),
                             {"delete": {"table": _table_object()}}, *self.commands()]}

    def commands(self) -> list[dict]:
        """Create the table, its sets (with their elements), chains and rules."""
        out: list[dict] = [_add({"table": _table_object()})]
        for name, _fam, kind, items, comment in self._all_sets():
            spec: dict[str, Any] = {**_table(), "name": name, "type": kind,
                                    "flags": ["interval"], "comment": comment[:120]}
            if items:
                spec["elem"] = items
            out.append(_add({"set": spec}))
        out.extend(_add({"chain": c}) for c in self._chains())
        out.extend(_add({"rule": r}) for r in self._rules())
        return out

    def elements(self) -> dict[str, set]:
        """Set name → its elements, for element updates."""
        out: dict[str, set] = {}
        for name, _, _, items, _ in self._all_sets():
            out[name] = {json.dumps(i, sort_keys=True) for i in items}
        return out

    def structure(self) -> tuple:
        """What a ruleset is apart from its elements: equal structures take element updates."""
        return (self.options, tuple(g for g, _ in self.groups),
                tuple(name for name, *_ in self._all_sets()))

    def element_updates(self, old: Compiled) -> list[dict]:
        """The nft commands (one transaction) that turn `old`'s elements into these; `old` has
        the same structure()."""
        out: list[dict] = []
        before, after = old.elements(), self.elements()
        for name, items in after.items():
            gone = sorted(before.get(name, set()) - items)
            new = sorted(items - before.get(name, set()))
            if gone:
                out.append({"delete": {"element": {**_table(), "name": name,
                                                   "elem": [json.loads(i) for i in gone]}}})
            if new:
                out.append(_add({"element": {**_table(), "name": name,
                                             "elem": [json.loads(i) for i in new]}}))
        return out

    def summary(self) -> list[str]:
        """People's view of the ruleset: its groups and sets, one line each."""
        lines = [f"table {FAMILY} {TABLE}: hook {self.options.hook}, verdict "
                 f"{self.options.verdict}, policy {self.policy_version}"]
        for group, clients in self.groups:
            lines.append(f"  group {group}: " + (f"{len(clients)} client ranges" if clients
                                                  else "every other client"))
        for s in self.sets:
            ranges = len({(e.start, e.end) for e in s.elements})
            lines.append(f"  set {s.name}: {len(s.elements)} elements over {ranges} address "
                         f"ranges ({s.comment})")
        return lines

    # --- the parts --------------------------------------------------------------------------

    def _client_set(self, index: int, fam: str) -> str:
        return f"clients_{index}_{'v4' if fam == 'ipv4' else 'v6'}"

    def _all_sets(self) -> Iterator[tuple[str, str, Any, list, str]]:
        for fam in ("ipv4", "ipv6"):
            ranges = _coalesce((e.start, e.end) for s in self.sets if s.family == fam
                               for e in s.elements)
            yield (_ANY_BLOCKED[fam], fam, f"{fam}_addr", [_address(fam, a, b) for a, b in ranges],
                   "every destination blocked for some client group: the others pass at once")
        for i, (group, clients) in enumerate(self.groups[:-1]):
            for fam in ("ipv4", "ipv6"):
                ivs = [iv for iv in clients if _family(iv[0]) == fam]
                yield (self._client_set(i, fam), fam, f"{fam}_addr",
                       [_address(fam, s, e) for s, e in ivs], f"clients of group {group}")
        kind = {fam: [f"{fam}_addr", "inet_proto", "inet_service"] for fam in ("ipv4", "ipv6")}
        for i, (group, _) in enumerate(self.groups):
            for fam in ("ipv4", "ipv6"):   # the addresses of the group's sets
                ranges = _coalesce((e.start, e.end) for s in self.sets
                                   if s.group == group and s.family == fam for e in s.elements)
                yield (self._group_blocked_set(i, fam), fam, f"{fam}_addr",
                       [_address(fam, a, b) for a, b in ranges],
                       f"destinations group {group} is blocked from on some port: the rest pass")
        for s in self.sets:
            yield s.name, s.family, kind[s.family], \
                [_element_item(s.family, e) for e in s.elements], s.comment

    def _group_chain(self, index: int) -> str:
        return f"group_{index}"

    def _group_blocked_set(self, index: int, fam: str) -> str:
        return f"group_{index}_blocked_{'v4' if fam == 'ipv4' else 'v6'}"

    def _chains(self) -> list[dict]:
        base = {**_table(), "name": BASE_CHAIN, "type": "filter", "hook": self.options.hook,
                "prio": self.options.priority, "policy": "accept"}
        return [base] + [{**_table(), "name": self._group_chain(i)}
                         for i in range(len(self.groups))]

    def _rules(self) -> list[dict]:
        # A packet to an address no group is blocked from passes after one lookup, not one per
        # set of its group (accept ends this table's chain only: other tables still see it).
        rules = [_rule(BASE_CHAIN, [_match(_payload(proto, "daddr"), "@" + _ANY_BLOCKED[fam], "!="),
                                    {"accept": None}], "not blocked for any group")
                 for fam, proto in (("ipv4", "ip"), ("ipv6", "ip6"))]
        last = len(self.groups) - 1
        for i, (group, _) in enumerate(self.groups[:-1]):
            for fam, proto in (("ipv4", "ip"), ("ipv6", "ip6")):
                rules.append(_rule(BASE_CHAIN, [
                    _match(_payload(proto, "saddr"), "@" + self._client_set(i, fam)),
                    {"goto": {"target": self._group_chain(i)}}], f"clients of group {group}"))
        rules.append(_rule(BASE_CHAIN, [{"goto": {"target": self._group_chain(last)}}],
                           f"every other client: group {self.groups[last][0]}"))
        chain_of = {g: self._group_chain(i) for i, (g, _) in enumerate(self.groups)}
        # In a group's chain, a destination the group is blocked from on no port passes after
        # one address lookup; only the others go on to the sets of (address, transport, port)
        # that say whether and why (and count). Without it every allowed packet met one
        # concatenated lookup per set of its group.
        for i, (group, _) in enumerate(self.groups):
            for fam, proto in (("ipv4", "ip"), ("ipv6", "ip6")):
                rules.append(_rule(self._group_chain(i), [
                    _match(_payload(proto, "daddr"), "@" + self._group_blocked_set(i, fam), "!="),
                    {"accept": None}], f"not blocked for group {group}"))
        for s in self.sets:
            proto = "ip" if s.family == "ipv4" else "ip6"
            key = _destination_key(proto)
            tail = [{"counter": {"packets": 0, "bytes": 0}}]
            if self.options.log_prefix:
                tail.append({"log": {"prefix": self.options.log_prefix}})
            if self.options.verdict == "drop":
                rules.append(_rule(chain_of[s.group], [_match(key, "@" + s.name), *tail,
                                                       {"drop": None}], s.name))
                continue
            # reject: TCP gets a reset, UDP an ICMP port unreachable, as a closed port would
            rules.append(_rule(chain_of[s.group], [
                _match(key, "@" + s.name), _match({"meta": {"key": "l4proto"}}, "tcp"), *tail,
                {"reject": {"type": "tcp reset"}}], s.name + " (tcp)"))
            rules.append(_rule(chain_of[s.group], [_match(key, "@" + s.name), *tail,
                                                   {"reject": None}], s.name))
        return rules


def _destination_key(proto: str) -> dict:
    """daddr . l4proto . dport: what a block set's elements are matched against."""
    return {"concat": [_payload(proto, "daddr"), {"meta": {"key": "l4proto"}},
                       _payload("th", "dport")]}


def _element_item(fam: str, e: Element) -> dict:
    return {"concat": [_address(fam, e.start, e.end), e.transport,
                       e.low if e.low == e.high else {"range": [e.low, e.high]}]}


# --- compiling --------------------------------------------------------------------------------


def compile_ruleset(engine: Engine, options: Options | None = None) -> Compiled:
    """The ruleset that enforces `engine`'s address decisions (see the module's docstring)."""
    options = options or Options()
    groups = client_groups(engine)
    classes = port_classes(engine.zoom)
    pieces = destination_pieces(engine)
    runs_of = _port_runs_cache(classes)
    sets: list[BlockSet] = []
    for group, clients in groups:
        probe = _probe_client(clients)
        # rule → (transport, port runs) → destination intervals
        blocked: dict[str, dict[tuple[str, tuple[tuple[int, int], ...]], list]] = {}
        for start, end in pieces:
            address = _text(start)
            by_rule: dict[tuple[str, str], list[int]] = {}
            for i, pc in enumerate(classes):
                d = engine.decide_safely(probe, None, address, pc.probe, pc.transport)
                if d.blocks:
                    by_rule.setdefault((d.rule, pc.transport), []).append(i)
            for (rule, transport), members in by_rule.items():
                key = (transport, runs_of(tuple(members)))
                blocked.setdefault(rule, {}).setdefault(key, []).append((start, end))
                if _family(start) == "ipv4":   # the NAT64 image is decided as this address
                    image = (_NAT64 + start - _V4_BASE, _NAT64 + end - _V4_BASE)
                    blocked[rule][key].append(image)
        for rule in sorted(blocked):
            for fam, tag in (("ipv4", "v4"), ("ipv6", "v6")):
                elements = []
                for (transport, runs), ivs in sorted(blocked[rule].items()):
                    for s, e in _coalesce(iv for iv in ivs if _family(iv[0]) == fam):
                        elements.extend(Element(s, e, transport, lo, hi) for lo, hi in runs)
                if elements:
                    sets.append(BlockSet(f"{_ident(group)}_{_ident(rule)}_{tag}", fam, group,
                                         rule, sorted(elements)))
    _check_unique_names(sets)
    return Compiled(options, engine.policy.version_id, groups, sets)


def _port_runs_cache(classes: list[PortClass]):
    """(indices of port classes) → the runs of their ports together, remembered."""
    listed = {t: set().union(*[c.ports for c in classes if c.transport == t and c.ports])
              for t in TRANSPORTS}
    memo: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}

    def runs(members: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        found = memo.get(members)
        if found is None:
            ports: set[int] = set()
            for i in members:
                pc = classes[i]
                ports |= pc.ports if pc.ports is not None else (
                    set(range(1, 65536)) - listed[pc.transport])
                if pc.ports is None:
                    ports.add(0)   # port 0 is no service, but it is not a listed one either
            found = memo[members] = tuple(_runs(sorted(ports)))
        return found

    return runs


def _check_unique_names(sets: list[BlockSet]) -> None:
    seen: dict[str, BlockSet] = {}
    for s in sets:
        if s.name in seen:
            raise ValueError(f"two sets would be named {s.name!r} (groups {seen[s.name].group!r} "
                             f"and {s.group!r}): rename one of the groups")
        seen[s.name] = s


FAIL_CLOSED_GROUP = "everyone"
FAIL_CLOSED_RULE = "no-policy-loaded"


def fail_closed_ruleset(zoom: ZoomCatalogue, options: Options | None = None,
                        overrides: Iterable[str] = ()) -> Compiled:
    """The table for when no policy can be loaded: every client blocked from every Zoom address
    (Zoom's published ranges, their NAT64 images, and `overrides`: network prefixes a policy
    declared Zoom's, if one is known), on every TCP and UDP port. Fail closed."""
    ranges = [(s, e) for s, e, _ in zoom.ranges.intervals()]
    ranges += [network_range(o) for o in overrides]
    ranges = _coalesce(r for r in ranges if not _never_on_wire(r[0]))
    ranges = _coalesce(ranges + [(_NAT64 + s - _V4_BASE, _NAT64 + e - _V4_BASE)
                                 for s, e in ranges if _family(s) == "ipv4"])
    sets = []
    for fam, tag in (("ipv4", "v4"), ("ipv6", "v6")):
        elements = [Element(s, e, transport, 0, 65535) for s, e in ranges if _family(s) == fam
                    for transport in TRANSPORTS]
        if elements:
            sets.append(BlockSet(f"{FAIL_CLOSED_GROUP}_{_ident(FAIL_CLOSED_RULE)}_{tag}", fam,
                                 FAIL_CLOSED_GROUP, FAIL_CLOSED_RULE, sorted(elements)))
    return Compiled(options or Options(), "none", [(FAIL_CLOSED_GROUP, [])], sets)


def port_classes(zoom: ZoomCatalogue) -> list[PortClass]:
    """Every transport's ports, cut where the catalogue's class of a bare address may change:
    the port table's services, each web port, and the rest."""
    out = []
    for transport in TRANSPORTS:
        by_service: dict[str, set[int]] = {}
        for (service, proto), ranges in zoom.ports.items():
            if proto == transport:
                for lo, hi in ranges:
                    by_service.setdefault(service, set()).update(range(lo, hi + 1))
        listed = set().union(*by_service.values()) if by_service else set()
        for service, ports in by_service.items():
            out.append(PortClass(transport, frozenset(ports), min(ports), service))
        for proto, port in sorted(zoom.web_ports):
            if proto == transport and port not in listed:
                out.append(PortClass(transport, frozenset({port}), port, f"web port {port}"))
                listed.add(port)
        rest = next(p for p in range(1, 65536) if p not in listed)
        out.append(PortClass(transport, None, rest, "other ports"))
    return out


def client_groups(engine: Engine) -> list[tuple[str, list[tuple[int, int]]]]:
    """(group name, client key intervals) per policy group, in the policy's order, the top
    level (everyone else) last with no intervals of its own. Each client address is in the
    group Policy.rules_for gives it."""
    policy = engine.policy
    names = [g.name for g in policy.groups]
    cuts = {_V4_BASE, _V4_END}
    for g in policy.groups:
        for c in g.clients:
            s, e = network_range(c)
            cuts.update((s, e + 1))
    out: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
    edges = sorted(k for k in cuts if 0 <= k < _SPACE_END)
    for start, nxt in zip([0, *edges], [*edges, _SPACE_END], strict=True):
        if start >= nxt or _never_on_wire(start):
            continue
        rules = policy.rules_for(_text(start))
        if rules is not policy.rules:
            out[rules.name].append((start, nxt - 1))
    groups = [(n, _coalesce(out[n])) for n in names]
    return [*groups, (policy.rules.name, [])]


def destination_pieces(engine: Engine) -> list[tuple[int, int]]:
    """Zoom's candidate destinations (published ranges, network overrides saying `zoom: true`)
    cut wherever any evidence source's answer may change."""
    candidates = [(s, e) for s, e, _ in engine.zoom.ranges.intervals()]
    # an override makes an address Zoom's only with `zoom: true` (a region alone does not)
    candidates += [network_range(o.match) for o in engine.policy.overrides
                   if o.is_network and o.zoom]
    candidates = _coalesce(candidates)
    cuts: set[int] = {_V4_BASE, _V4_END, _NAT64, _NAT64_END, _COMPAT_END}
    locator = engine.locator
    for source in locator.static:
        cuts.update(source.table.boundaries())
    cuts.update(engine.zoom.ranges.boundaries())
    store = locator.learned
    if store is not None:
        from regionguard.core.learned import block_end, block_of

        for key in list(store.exact):
            cuts.update((key, key + 1))
        for start in list(store.spread):
            _, length = block_of(start)
            cuts.update((start, block_end(start, length) + 1))
    for source in locator.per_address:   # sources that speak of single addresses (RTT)
        if hasattr(source, "points"):
            for address in source.points():
                key = address_key(address)
                cuts.update((key, key + 1))
    edges = sorted(cuts)
    pieces = []
    for s, e in candidates:
        inner = edges[bisect_right(edges, s):bisect_left(edges, e + 1)]
        for a, b in zip([s, *inner], [*inner, e + 1], strict=True):
            if a < b and not _never_on_wire(a) and not _NAT64 <= a < _NAT64_END:
                pieces.extend(_split_per_address(engine, a, b - 1))
    return pieces


def _split_per_address(engine: Engine, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Cut a piece further where a per-address source (GeoIP) may change its answer: at the
    edges of the database's networks (GeoIPSource.span). A source whose answers never reach
    min_confidence cannot change a decision; one that can and has no networks to show cannot
    be compiled."""
    minimum = engine.policy.evidence.min_confidence
    deciding = [s for s in engine.locator.per_address
                if getattr(s, "_confidence", 1.0) >= minimum
                and not hasattr(s, "points")]   # cut at their points already
    for source in deciding:
        if not hasattr(source, "span"):
            raise ValueError(f"evidence source {source.name!r} decides addresses one by one "
                             "(its confidence reaches evidence.min_confidence) and shows no "
                             "networks, so it cannot be compiled to nftables: raise "
                             "evidence.min_confidence above it or leave it out of "
                             "evidence.precedence")
    if not deciding:
        yield start, end
        return
    at = start
    while at <= end:
        nxt = end + 1
        for source in deciding:
            _, last = network_range(source.span(_text(at)))
            nxt = min(nxt, last + 1)
        yield at, nxt - 1
        at = nxt

def _probe_client(clients: list[tuple[int, int]]) -> str | None:
    """An address of the group (None for the top level: Policy.rules_for(None) is it)."""
    return _text(clients[0][0]) if clients else None


def _coalesce(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1] + 1 and _family(s) == _family(out[-1][0]):
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _family(key: int) -> str:
    return "ipv4" if _V4_BASE <= key < _V4_END else "ipv6"


def _never_on_wire(key: int) -> bool:
    """::/96 (IPv4-compatible, unspecified, loopback): no packet carries these to a server."""
    return key < _COMPAT_END


def _text(key: int) -> str:
    if _family(key) == "ipv4":
        return str(ipaddress.IPv4Address(key - _V4_BASE))
    return str(ipaddress.IPv6Address(key))


def _address(fam: str, start: int, end: int) -> Any:
    if start == end:
        return _text(start)
    size = end - start + 1
    if size & (size - 1) == 0 and start % size == 0:
        return {"prefix": {"addr": _text(start), "len": (32 if fam == "ipv4" else 128)
                           - size.bit_length() + 1}}
    return {"range": [_text(start), _text(end)]}


def _ident(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)[:40] or "_"


def _runs(values: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return [(a, b) for a, b in out]


def _table() -> dict:
    """What names the table inside a set, chain, rule or element."""
    return {"family": FAMILY, "table": TABLE}


def _table_object() -> dict:
    return {"family": FAMILY, "name": TABLE}


def _add(obj: dict) -> dict:
    return {"add": obj}


def _payload(protocol: str, name: str) -> dict:
    return {"payload": {"protocol": protocol, "field": name}}


def _match(left: dict, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(chain: str, expr: list[dict], comment: str) -> dict:
    return {**_table(), "chain": chain, "expr": expr, "comment": comment[:120]}


__all__ = ["BASE_CHAIN", "FAMILY", "HOOKS", "TABLE", "VERDICTS", "Compiled", "Options",
           "client_groups", "compile_ruleset", "destination_pieces", "fail_closed_ruleset",
           "port_classes"]
