"""`regionguard coverage`: how much of Zoom can the evidence place, and how much of a real session
was decided?

    regionguard coverage [--policy F] [--json]                   # Zoom's published address space
    regionguard coverage session.pcapng audit.jsonl [--policy F] # ... and these sessions

Address space: the share of Zoom's published IPv4 and IPv6 ranges (config/data/zoom-ranges.csv)
that the policy's evidence places at its `min_confidence`, by source and by region, weighted by
address. It is computed exactly, interval by interval: Zoom's ranges are cut at every boundary
of the locator's merged prefix tables, and each piece is concluded once by the locator's own
rules (precedence, confidence, conflicts). Nothing is sampled.

What is not in that figure, and said so in the output:
- per-address sources (GeoIP databases, the RIR fallback) answer one address at a time, not by
  prefix; when one of them may decide at this policy's min_confidence, the figure is a lower bound;
- learned evidence (Zoom names regionguard resolved) grows with use; a session replayed here
  shows its effect;
- hostname evidence never places an address by itself.

Sessions (captures, flow files, HAR, audit logs; as `regionguard replay` reads them): the share of
their Zoom connections that were *decided* (placed, or exempt by rule) rather than blocked as
`unknown-region`, by rule.

Exit codes: 0 done; 2 usage error or invalid policy; 4 some session input unreadable (the rest
was counted).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from regionguard.core.locator import Locator
from regionguard.core.paths import policy_path
from regionguard.core.policy import Policy, load_policy
from regionguard.core.zoom import ZoomCatalogue
from regionguard.exits import EXIT_INPUT, EXIT_OK

_V4_BASE = 0xFFFF_0000_0000
_V4_LAST = _V4_BASE | 0xFFFF_FFFF
UNDECIDED_RULES = frozenset({"unknown-region", "internal-error"})


@dataclass
class FamilyCoverage:
    """Address counts for one address family (exact integers; shares are derived)."""

    family: str                 # IPv4 | IPv6
    total: int = 0              # addresses in Zoom's published ranges
    placed: int = 0             # ... placed at min_confidence
    conflict: int = 0           # ... where trusted sources disagree on the region
    by_source: Counter[str] = field(default_factory=Counter)
    by_region: Counter[str] = field(default_factory=Counter)
    by_service: dict[str, list[int]] = field(default_factory=dict)   # service → [placed, total]

    def share(self, n: int) -> float:
        return n / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {
            "total_addresses": self.total,
            "placed_addresses": self.placed,
            "placed_share": self.share(self.placed),
            "conflict_addresses": self.conflict,
            "by_source": {k: {"addresses": v, "share": self.share(v)}
                          for k, v in self.by_source.most_common()},
            "by_region": {k: {"addresses": v, "share": self.share(v)}
                          for k, v in self.by_region.most_common()},
            "by_service": {k: {"placed": p, "total": t, "share": p / t if t else 0.0}
                           for k, (p, t) in sorted(self.by_service.items())},
        }


@dataclass
class AddressCoverage:
    policy: Policy
    min_confidence: float
    families: dict[str, FamilyCoverage]
    counted_sources: list[str]
    not_counted: list[str]      # per-address sources that may decide: the figure is a lower bound

    @property
    def exact(self) -> bool:
        return not self.not_counted

    def to_dict(self) -> dict:
        return {"policy": self.policy.path, "policy_version": self.policy.version_id,
                "min_confidence": self.min_confidence, "sources_counted": self.counted_sources,
                "exact": self.exact, "per_address_sources_not_counted": self.not_counted,
                **{name: fam.to_dict() for name, fam in self.families.items()}}


def address_coverage(policy: Policy, zoom: ZoomCatalogue | None = None,
                     data: Path | None = None) -> AddressCoverage:
    """Exact, address-weighted coverage of Zoom's published ranges by the policy's static
    evidence (`data`: the data directory, default the bundled config/data)."""
    zoom = zoom or ZoomCatalogue.load()
    full = Locator.for_policy(policy, zoom, data=data, log_problems=False)
    # The same static sources, concluded by the locator's own rules, without the per-address
    # sources: a piece of a prefix table is then one answer for all of its addresses.
    static = Locator(full.static, [], [], policy.evidence)
    cuts = sorted({b for s in full.static for b in s.table.boundaries()})
    minimum = policy.evidence.min_confidence
    not_counted = [s.name for s in full.per_address
                   if getattr(s, "_confidence", 1.0) >= minimum]
    families = {"ipv4": FamilyCoverage("IPv4"), "ipv6": FamilyCoverage("IPv6")}
    for start, end, rng in zoom.ranges.intervals():
        v4 = _V4_BASE <= start <= _V4_LAST
        fam = families["ipv4" if v4 else "ipv6"]
        service = fam.by_service.setdefault(rng.service, [0, 0])
        lo = bisect_right(cuts, start)
        hi = bisect_left(cuts, end + 1)
        points = [start, *cuts[lo:hi], end + 1]
        for a, b in zip(points, points[1:], strict=False):
            size = b - a
            fam.total += size
            service[1] += size
            loc = static.locate(_address(a))
            if loc.chosen is None:
                continue
            fam.placed += size
            service[0] += size
            fam.by_source[loc.chosen.source] += size
            fam.by_region[loc.region or f"none ({loc.country})"] += size
            if loc.conflict:
                fam.conflict += size
    return AddressCoverage(policy, minimum, families, [s.name for s in full.static], not_counted)


def _address(key: int) -> str:
    if _V4_BASE <= key <= _V4_LAST:
        return str(ipaddress.IPv4Address(key & 0xFFFF_FFFF))
    return str(ipaddress.IPv6Address(key))


# --- sessions -----------------------------------------------------------------------------------


@dataclass
class SessionCoverage:
    files: list[str]
    connections: int            # Zoom connections recorded (each occurrence)
    decided: int
    distinct: int               # distinct Zoom connections (as replay groups them)
    distinct_decided: int
    by_rule: Counter[str]
    problems: list[str]
    problem_count: int

    def to_dict(self) -> dict:
        return {"files": self.files, "zoom_connections": self.connections, "decided": self.decided,
                "decided_share": self.decided / self.connections if self.connections else 0.0,
                "distinct_zoom_connections": self.distinct, "distinct_decided": self.distinct_decided,
                "by_rule": dict(self.by_rule.most_common()), "problems": self.problems,
                "problem_count": self.problem_count}


def session_coverage(paths: Iterable[str | Path], policy: Policy) -> SessionCoverage:
    """Replay the sessions (offline, as `regionguard replay` does, learned evidence included)
    and count how many of their Zoom connections were decided."""
    from regionguard.replay.replay import replay

    result = replay(paths, policy)
    rows = result.zoom_rows
    by_rule: Counter[str] = Counter()
    for r in rows:
        by_rule[r.decision.rule] += r.count
    decided_rows = [r for r in rows if r.decision.rule not in UNDECIDED_RULES]
    return SessionCoverage(result.files, sum(r.count for r in rows),
                           sum(r.count for r in decided_rows), len(rows), len(decided_rows),
                           by_rule, [str(p) for p in result.problems], result.problem_count)


# --- output -------------------------------------------------------------------------------------


def _pct(n: int, total: int) -> str:
    if not total:
        return "-"
    share = 100 * n / total
    return f"{share:.1f} %" if share >= 1 or share == 0 else f"{share:.2g} %"


def format_text(cov: AddressCoverage, sessions: SessionCoverage | None) -> str:
    p = cov.policy
    lines = [f"regionguard coverage [policy {Path(p.path).name} {p.version_id}, "
             f"min_confidence {cov.min_confidence}]",
             "Zoom's published address space placed by the evidence "
             f"(sources counted: {', '.join(dict.fromkeys(cov.counted_sources)) or 'none'}):"]
    for fam in cov.families.values():
        if not fam.total:
            continue
        lines.append(f"  {fam.family}: {_pct(fam.placed, fam.total)} of {fam.total:,} addresses "
                     f"placed" + (f" ({_pct(fam.conflict, fam.total)} in conflict)"
                                  if fam.conflict else ""))
        lines.append("    by source: " + (", ".join(f"{k} {_pct(v, fam.total)}"
                                                   for k, v in fam.by_source.most_common()) or "none"))
        lines.append("    by region: " + (", ".join(f"{k} {_pct(v, fam.total)}"
                                                   for k, v in fam.by_region.most_common()) or "none"))
        lines.append("    by service (placed of the service's space): " + ", ".join(
            f"{k} {_pct(pl, t)} of {t:,}" for k, (pl, t) in sorted(fam.by_service.items())))
    if cov.not_counted:
        lines.append(f"  lower bound: per-address sources {', '.join(cov.not_counted)} may also "
                     "place addresses at this min_confidence and are not counted")
    lines.append("  not counted: learned evidence (grows as regionguard resolves Zoom's names); "
                 "hostnames never place an address alone")
    if sessions is not None:
        s = sessions
        lines.append(f"Sessions ({len(s.files)} file(s)): {s.decided} of {s.connections} Zoom "
                     f"connections decided ({_pct(s.decided, s.connections)}); distinct: "
                     f"{s.distinct_decided} of {s.distinct}")
        lines.append("  by rule: " + (", ".join(f"{k} {v}" for k, v in s.by_rule.most_common())
                                      or "none"))
        if s.problem_count:
            lines.append(f"  unreadable input ({s.problem_count}):")
            lines += [f"    {x}" for x in s.problems[:20]]
    return "\n".join(lines) + "\n"


def cmd_coverage(args: argparse.Namespace) -> int:
    policy = load_policy(policy_path(args.policy))
    cov = address_coverage(policy)
    sessions = session_coverage(args.files, policy) if args.files else None
    if args.json:
        doc = {"address_space": cov.to_dict()}
        if sessions is not None:
            doc["sessions"] = sessions.to_dict()
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    else:
        sys.stdout.write(format_text(cov, sessions))
    return EXIT_INPUT if sessions is not None and sessions.problem_count else EXIT_OK


__all__ = ["AddressCoverage", "FamilyCoverage", "SessionCoverage", "address_coverage",
           "session_coverage", "cmd_coverage"]
