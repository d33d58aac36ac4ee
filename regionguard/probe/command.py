"""`regionguard probe ADDRESS...`: measure round trips to addresses from this host, keep the
minimum with the learned evidence (the state directory), and say what physics makes of it.

The host is taken to stand at the client site the policy gives for `--client` (its group's
`client.site`, else the top level's): run it where those clients are. It sends TCP SYNs only
(one connect per port and round, closed when answered); nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from regionguard.core.learned import open_state
from regionguard.core.paths import policy_path
from regionguard.core.physics import MARGIN_MS, SPEED_KM_PER_MS, Outcome, zoom_sites
from regionguard.core.policy import load_policy
from regionguard.core.rtt import RttSource, RttStore
from regionguard.exits import EXIT_CONFIG, EXIT_NO_ANSWER, EXIT_OK
from regionguard.probe.tcp import probe


def cmd_probe(args: argparse.Namespace) -> int:
    policy = load_policy(policy_path(args.policy))
    site = policy.site_for(args.client)
    if site is None:
        print(f"regionguard probe: {policy.path}: client.site: no site for "
              f"{'client ' + args.client if args.client else 'the top level'}\n"
              "    fix: say where this host is: `client: {site: {city: Frankfurt}}` (or "
              "{lat: .., lon: ..}) at the top level, or in the group of --client",
              file=sys.stderr)
        return EXIT_CONFIG
    learned = open_state(args.state_dir)
    store = learned.rtt if learned is not None else RttStore.in_memory()
    source = RttSource(store, zoom_sites())
    status = EXIT_OK
    try:
        for address in args.addresses:
            samples = asyncio.run(probe(address, args.port or (443, 8801), args.count,
                                        args.timeout))
            for s in samples:
                if s.rtt_ms is not None:
                    store.observe(site, address, s.rtt_ms, "probe")
            answered = [s for s in samples if s.rtt_ms is not None]
            if not answered:
                status = EXIT_NO_ANSWER
            found = source.outcome(address)
            if args.json:
                print(json.dumps(_as_json(address, samples, found), ensure_ascii=False))
            else:
                _print(address, samples, found)
    finally:
        store.flush()
        if learned is not None:
            learned.close()
    return status


def _as_json(address, samples, found) -> dict:
    out: dict = {"address": address,
                 "samples": [{"port": s.port, "rtt_ms": s.rtt_ms, "answer": s.answer}
                             for s in samples]}
    if found is not None:
        outcome, measured = found
        out["measurements"] = [{"site": m.site.name, "min_ms": m.min_ms, "samples": m.samples,
                                "how": m.how, "last": m.last} for m in measured]
        out["physics"] = outcome_json(outcome)
    return out


def outcome_json(outcome: Outcome) -> dict:
    return {"radius_km": round(outcome.radius_km, 1), "outcome": outcome.kind,
            "placed": outcome.placed, "regions": sorted(outcome.regions),
            "speed_km_per_ms": round(SPEED_KM_PER_MS, 2), "margin_ms": MARGIN_MS,
            "sites": [{"region": d.site.region, "site": d.site.name, "kind": d.site.kind,
                       "city": d.site.city, "km": round(d.km)} for d in outcome.inside[:50]]}


def _print(address, samples, found) -> None:
    shown = ", ".join(f"{s.port} {s.answer}" + (f" {s.rtt_ms:.2f} ms" if s.rtt_ms is not None
                                                 else "") for s in samples)
    print(f"{address}  ({shown})")
    if found is None:
        print("  no answer: nothing measured, nothing known\n")
        return
    outcome, measured = found
    for line in outcome_lines(outcome, measured):
        print("  " + line)
    print()


def outcome_lines(outcome: Outcome, measured) -> list[str]:
    """What `probe` and `explain` print about an address's measurements."""
    lines = [m.describe() for m in measured]
    lines.append(f"→ within {outcome.radius_km:.0f} km (light in fibre {SPEED_KM_PER_MS:.1f} "
                 f"km/ms one way, processing margin {MARGIN_MS:g} ms)")
    cities: dict[tuple[str, str], tuple[int, str]] = {}
    rank = {"labelled": 0, "cloud": 1, "country": 2}
    for d in sorted(outcome.inside, key=lambda d: (d.km, rank.get(d.site.kind, 3))):
        key = (d.site.region, d.site.city)
        if key not in cities:
            cities[key] = (round(d.km), d.site.kind)
    near = sorted(cities.items(), key=lambda kv: kv[1][0])
    listed = ", ".join(f"{region}: {city} {km} km ({kind})" for (region, city), (km, kind)
                       in near[:6])
    more = f" (+{len(near) - 6} more)" if len(near) > 6 else ""
    if outcome.kind == "placed":
        lines.append(f"placed in {outcome.placed}: every Zoom site within reach is {outcome.placed}'s"
                     f" — {listed}{more}")
    elif outcome.kind == "several":
        lines.append(f"not placed: Zoom sites of {len(outcome.regions)} regions within reach "
                     f"({', '.join(sorted(outcome.regions))}) — {listed}{more}")
    else:
        lines.append("no Zoom site within reach: not a Zoom data centre we know of; a claim of "
                     "any region is contradicted")
    return lines


__all__ = ["cmd_probe", "outcome_json", "outcome_lines"]
