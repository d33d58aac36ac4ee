"""`regionguard explain`, `validate` and `regions`: the core's commands for people and scripts."""

from __future__ import annotations

import argparse
import json
import re
import sys

from regionguard.core import datasets
from regionguard.core.decision import Action, Decision, Engine
from regionguard.core.errors import ConfigError, Problem
from regionguard.core.learned import LearnedStore, open_state
from regionguard.core.locator import Locator
from regionguard.core.paths import bundled_data_dir, data_dir, policy_path
from regionguard.core.policy import ResolverSettings, Rules, load_policy, parse_hostport
from regionguard.core.prefixes import is_address
from regionguard.core.regions import load_catalogue
from regionguard.core.zoom import embedded_ipv4, service_classes
from regionguard.dns.resolve import NameResolver, ResolveError
from regionguard.exits import EXIT_BLOCKED, EXIT_CONFIG, EXIT_OK, EXIT_RESOLVE
from regionguard.probe.command import outcome_json, outcome_lines

# --- explain ----------------------------------------------------------------------------------


def _resolver_settings(engine: Engine, nameservers: list[str] | None) -> ResolverSettings:
    settings = engine.policy.resolver
    if not nameservers:
        return settings
    parsed = []
    for ns in nameservers:
        hp = parse_hostport(ns, 53)
        if hp is None:
            raise UsageError(f"--nameserver {ns!r} is not HOST:PORT (e.g. 127.0.0.1:5353)")
        parsed.append(hp)
    return ResolverSettings(tuple(parsed), settings.hosts, settings.timeout)


def _target_action(decisions: list[Decision]) -> Decision | None:
    """The decision for a whole target: its first usable address, else its first decision."""
    for d in decisions:
        if not d.blocks:
            return d
    return decisions[0] if decisions else None


class UsageError(Exception):
    pass


# A DNS name: labels of letters, digits, '-' and '_', at least one label not all digits (so a
# mistyped address such as 999.1.1.1 is not sent to DNS).
_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)(?!(\d+\.)*\d+\.?$)"
                       r"([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")


def cmd_explain(args: argparse.Namespace) -> int:
    # Read only: explain shows what was learned, and its own look-ups teach nothing.
    learned = open_state(args.state_dir)
    if learned is not None and learned.problem:
        print(f"regionguard explain: {learned.describe()}", file=sys.stderr)
    try:
        return _explain(args, learned)
    finally:
        if learned is not None:
            learned.close()


def _explain(args: argparse.Namespace, learned: LearnedStore | None) -> int:
    engine = Engine(load_policy(policy_path(args.policy)), learned=learned)
    try:
        resolver = NameResolver(_resolver_settings(engine, args.nameserver))
    except UsageError as e:
        print(f"regionguard explain: {e}", file=sys.stderr)
        return EXIT_CONFIG
    status = EXIT_OK
    for target in args.targets:
        if not is_address(target) and not _HOSTNAME.fullmatch(target):
            status = EXIT_CONFIG
            print(f"regionguard explain: {target!r} is neither an IP address nor a hostname",
                  file=sys.stderr)
            continue
        try:
            answer = resolver.resolve(target)
        except ResolveError as e:
            status = max(status, EXIT_RESOLVE)
            if args.json:
                _print_json({"target": target, "error": str(e), "addresses": [], "decision": None})
            else:
                print(f"{target}: cannot resolve: {e}", file=sys.stderr)
            continue
        host = args.host if answer.source == "literal" else answer.name
        decisions = [engine.decide(args.client, host, a, args.port, args.transport)
                     for a in answer.addresses]
        overall = _target_action(decisions)
        if overall is not None and overall.blocks:
            status = max(status, EXIT_BLOCKED) if status != EXIT_RESOLVE else status
        if args.json:
            _print_json(_as_json(target, answer.source, decisions, overall, engine))
        else:
            _print_text(target, answer.source, decisions, overall, engine)
    if not args.json:
        print(datasets.describe_set(data_dir(), bundled_data_dir()))
    return status


def _physics(engine: Engine, d: Decision):
    """The measurements of a decision's address and what physics makes of them, if any."""
    rtt = engine.locator.rtt
    if rtt is None or not d.address:
        return None
    return rtt.outcome(embedded_ipv4(d.address) or d.address)


def _data_json() -> dict:
    """The data set the answers came from, and the date of each source."""
    directory = data_dir()
    return {"directory": str(directory),
            "updated": directory.resolve() != bundled_data_dir().resolve(),
            "dates": datasets.dataset_dates(directory)}


def _as_json(target: str, how: str, decisions: list[Decision], overall: Decision | None,
             engine: Engine) -> dict:
    addresses = []
    for d in decisions:
        loc = d.location
        addresses.append({
            "ip": d.address,
            "region": d.region,
            "country": d.country,
            "zoom": d.zoom,
            "zoom_why": d.zoom_why,
            "service": d.service,
            "scope": d.scope,
            "conflict": loc.conflict if loc else False,
            "chosen_source": loc.chosen.source if loc and loc.chosen else None,
            "evidence": [e.to_dict() | {"accepted": e.confidence
                                        >= engine.policy.evidence.min_confidence}
                         for e in (loc.evidence if loc else ())],
            "decision": d.to_dict(),
        })
        physics = _physics(engine, d)
        if physics is not None:
            outcome, measured = physics
            addresses[-1]["rtt"] = {
                "measurements": [{"site": m.site.name, "latitude": m.site.latitude,
                                  "longitude": m.site.longitude, "min_ms": m.min_ms,
                                  "samples": m.samples, "how": m.how, "first": m.first,
                                  "last": m.last} for m in measured],
                **outcome_json(outcome)}
    return {
        "target": target,
        "resolved_by": how,
        "policy": engine.policy.path,
        "policy_version": engine.policy.version_id,
        "addresses": addresses,
        "data": _data_json(),
        "decision": None if overall is None else {
            "action": str(overall.action), "rule": overall.rule, "reason": overall.reason,
            "address": overall.address, "scope": overall.scope,
        },
    }


_MARK = {Action.ALLOW: "ALLOW", Action.BLOCK: "BLOCK", Action.REROUTE: "REROUTE",
         Action.MONITOR: "MONITOR", Action.PASS: "PASS"}


def _print_text(target: str, how: str, decisions: list[Decision], overall: Decision | None,
                engine: Engine) -> None:
    out = sys.stdout
    minimum = engine.policy.evidence.min_confidence
    head = f"{target}"
    if overall is not None:
        head += f"  →  {_MARK[overall.action]} ({overall.rule})"
    out.write(head + "\n")
    for d in decisions:
        place = d.region or (f"no Zoom region (country {d.country})" if d.country else "unknown")
        line = f"  {d.address:<39} region {place:<12}"
        if d.zoom:
            line += f" service {d.service:<8} scope {d.scope or '-':<8} group {d.group}"
        out.write(f"{line}  {_MARK[d.action]} [{d.rule}]" +
                  (f" would {d.would}" if d.would else "") + "\n")
        out.write(f"      zoom: {'yes' if d.zoom else 'no'} — {d.zoom_why}\n")
        loc = d.location
        if loc is not None and loc.evidence:
            out.write("      evidence, in precedence order (* decided, ~ below min_confidence):\n")
            for e in loc.evidence:
                mark = "*" if e is loc.chosen else ("~" if e.confidence < minimum else " ")
                region = e.region or "-"
                country = e.country or "-"
                out.write(f"      {mark} {e.source:<9} {region:<3} {country:<3} "
                          f"conf {e.confidence:.2f}  {e.matched:<22} {e.dataset}"
                          f"{' ' + e.date if e.date else ''}"
                          f"{'  (' + e.note + ')' if e.note else ''}\n")
            if loc.conflict:
                out.write(f"      CONFLICT: trusted sources disagree: {loc.summary()}\n")
        elif d.zoom:
            out.write("      evidence: none — no source knows this address\n")
        physics = _physics(engine, d)
        if physics is not None:
            outcome, measured = physics
            out.write("      physics (round-trip time):\n")
            for line in outcome_lines(outcome, measured):
                out.write(f"        {line}\n")
        out.write(f"      why: {d.reason}\n")
    out.write("\n")


# --- validate ---------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for f in args.files:
        try:
            policy = load_policy(f)
        except ConfigError as e:
            print(f"{f}: INVALID\n{e}", file=sys.stderr)
            status = EXIT_CONFIG
            continue
        try:
            # also reads geofeeds and databases; printed below
            problems = Locator.for_policy(policy, log_problems=False).problems
        except OSError as e:
            problems = (Problem(f, "data", f"bundled data unreadable: {e}", "reinstall regionguard"),)
        for w in problems:
            print(f"warning: {w}", file=sys.stderr)
        r = policy.rules
        print(f"{f}: OK (policy {policy.version_id}; {policy.account_type} account, default "
              f"region {policy.default_region}; allowed {' '.join(sorted(r.allowed))}; "
              f"{len(policy.groups)} group(s))")
        print(f"  {_scope_text(r)}")
        for g in policy.groups:
            print(f"  group {g.name} ({', '.join(g.clients)}): {g.location}, allowed "
                  f"{' '.join(sorted(g.allowed))}"
                  + ("" if (g.governed, g.other_action) == (r.governed, r.other_action)
                     else f"; {_scope_text(g)}"))
        print(f"  CRC regions enabled: {' '.join(sorted(policy.enabled_crc_regions()))}; "
              f"dial-in countries enabled: {' '.join(sorted(policy.enabled_dialin_countries()))}")
    directory = data_dir()
    print(datasets.describe_set(directory, bundled_data_dir()))
    for message in datasets.stale_sources(directory):
        print(f"warning: {message}", file=sys.stderr)
    return status


def _scope_text(rules: Rules) -> str:
    """`scope: governed A B; other Zoom traffic (C D): allow`, classes in config/zoom.yaml order."""
    classes = list(service_classes())
    governed = [c for c in classes if c in rules.governed]
    other = [c for c in classes if c not in rules.governed]
    return (f"scope: governed {' '.join(governed) or '(none)'}; other Zoom traffic "
            f"({' '.join(other) or 'none'}): {rules.other_action}")


# --- regions ------------------------------------------------------------------------------------


def cmd_regions(args: argparse.Namespace) -> int:
    cat = load_catalogue()
    # the allowed column is the policy's: --policy, else the bundled default (as the help says)
    try:
        allowed = load_policy(policy_path(args.policy)).rules.allowed
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        _print_json({
            "regions": [{"code": r.code, "name": r.name, "countries": list(r.countries),
                         "dialin_countries": list(r.dialin_countries),
                         "allowed": r.code in allowed}
                        for r in cat.regions.values()],
            "groups": {k: list(v) for k, v in cat.groups.items()},
            "aliases": cat.aliases,
        })
        return EXIT_OK
    print("Zoom data-center regions (API codes):")
    for r in cat.regions.values():
        state = "  allowed" if r.code in allowed else "  not allowed"
        print(f"  {r.code}  {r.name:<15} data centers in {', '.join(r.countries)}{state}")
    print("Groups:")
    for name, codes in cat.groups.items():
        print(f"  {name:<16} {' '.join(codes)}")
    print("Aliases:")
    for a, t in cat.aliases.items():
        print(f"  {a:<16} → {t}")
    print("A country not listed above has no Zoom data center and belongs to no region.")
    return EXIT_OK


def _print_json(obj: object) -> None:
    """One compact JSON document on one line (for scripts that read line by line)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")


__all__ = ["cmd_explain", "cmd_regions", "cmd_validate"]
