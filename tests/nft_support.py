"""What the nft tests share: the lab policy (documentation prefixes placed by overrides), and
a reading of a compiled ruleset as the kernel reads it, to compare with Engine.decide."""

from __future__ import annotations

import bisect
import ipaddress
import random

from regionguard.core.decision import Engine
from regionguard.core.prefixes import address_key
from regionguard.nft.ruleset import Compiled

# Default clients may reach US and DE; the lab group (10.9.2.0/24, 2001:db8:9:2::/64) US and
# SG. The servers' prefixes are documentation prefixes that overrides make Zoom's.
POLICY = """\
version: 1
account: {default_region: US}
regions: {opt_in: [US, DE]}
overrides:
  - {match: "198.51.100.0/26", region: US, zoom: true, note: "lab server, allowed"}
  - {match: "198.51.100.64/26", region: SG, zoom: true, note: "lab server, SG"}
  - {match: "198.51.100.128/26", region: DE, zoom: true, note: "lab server, DE"}
  - {match: "198.51.100.192/26", zoom: true, note: "lab server, region unknown"}
  - {match: "2001:db8:1:1::/64", region: US, zoom: true}
  - {match: "2001:db8:1:2::/64", region: SG, zoom: true}
  - {match: "2001:db8:1:3::/64", region: DE, zoom: true}
groups:
  - {name: lab, clients: [10.9.2.0/24, "2001:db8:9:2::/64"], regions: {opt_in: [US, SG]}}
"""
US4, SG4, DE4, UNKNOWN4 = "198.51.100.10", "198.51.100.70", "198.51.100.130", "198.51.100.200"
US6, SG6, DE6 = "2001:db8:1:1::10", "2001:db8:1:2::10", "2001:db8:1:3::10"
DEFAULT_CLIENT4, LAB_CLIENT4 = "10.9.1.2", "10.9.2.2"
DEFAULT_CLIENT6, LAB_CLIENT6 = "2001:db8:9:1::2", "2001:db8:9:2::2"

_V4_BASE = 0xFFFF_0000_0000


def kernel_blocks(compiled: Compiled, client: str, address: str, port: int,
                  transport: str) -> bool:
    """The verdict of the compiled table, read as nft reads it: the client's group is the one
    whose client set holds its source (else the last, everyone else's); the packet is blocked
    when an element of one of that group's sets of its family holds (daddr, l4proto, dport)."""
    source, dest = address_key(client), address_key(address)
    group = compiled.groups[-1][0]
    for name, clients in compiled.groups[:-1]:
        if any(s <= source <= e for s, e in clients):
            group = name
            break
    family = "ipv4" if ":" not in address else "ipv6"
    edges, covering = _index(compiled, group, family)
    i = bisect.bisect_right(edges, dest) - 1
    return i >= 0 and any(t == transport and lo <= port <= hi for t, lo, hi in covering[i])


_INDEXES: dict[tuple[int, str, str], tuple[Compiled, tuple[list[int], list[list]]]] = {}


def _index(compiled: Compiled, group: str, family: str) -> tuple[list[int], list[list]]:
    """The group's elements of one family cut into elementary address intervals, each with
    the (transport, low port, high port) that hold there: a lookup is one bisect."""
    key = (id(compiled), group, family)
    found = _INDEXES.get(key)
    if found is not None and found[0] is compiled:
        return found[1]
    elements = [e for s in compiled.sets if s.group == group and s.family == family
                for e in s.elements]
    edges = sorted({k for e in elements for k in (e.start, e.end + 1)})
    covering: list[list] = [[] for _ in edges]
    for e in elements:
        for i in range(bisect.bisect_left(edges, e.start), bisect.bisect_left(edges, e.end + 1)):
            covering[i].append((e.transport, e.low, e.high))
    _INDEXES[key] = (compiled, (edges, covering))   # the object kept: its id stays its own
    return edges, covering


def key_text(key: int) -> str:
    if _V4_BASE <= key < _V4_BASE + (1 << 32):
        return str(ipaddress.IPv4Address(key - _V4_BASE))
    return str(ipaddress.IPv6Address(key))


def sample_destinations(compiled: Compiled, engine: Engine, rng: random.Random, n: int
                        ) -> list[tuple[str, int, str]]:
    """(address, port, transport): half drawn from the elements of every set (each set's
    elements in turn), the rest from Zoom's ranges at large on Zoom's and other ports."""
    out: list[tuple[str, int, str]] = []
    sets = [s for s in compiled.sets if s.elements]
    while len(out) < n // 2 and sets:
        for s in sets:
            e = rng.choice(s.elements)
            out.append((key_text(rng.randint(e.start, e.end)), rng.randint(e.low, e.high),
                        e.transport))
    ranges = list(engine.zoom.ranges.intervals())
    ports = [443, 80, 8801, 8810, 3478, 5060, 1720, 22, 5000, 60000]
    while len(out) < n:
        start, end, _ = rng.choice(ranges)
        out.append((key_text(rng.randint(start, end)), rng.choice(ports),
                    rng.choice(("tcp", "udp"))))
    return out
