"""`regionguard replay`: decide recorded sessions offline, for CI and for people.

    regionguard replay session.mitm session.har audit.jsonl --policy eu.yaml
    regionguard replay session.mitm --json            # one JSON document on stdout
    regionguard replay session.mitm --junit out.xml   # JUnit XML for CI test reports

Every recorded connection and request goes through the same decision core as the proxy
(`Engine.decide_safely`): same policy, same evidence, same fail-closed rules. Replay never opens a
network connection: a name recorded without its address (a request the proxy refused before
connecting) is looked up in the policy's static `resolver.hosts` only; failing that, it is
decided without an address, which blocks it (a region that cannot be proven is not allowed).

Identical connections (policy group of the client, host, address, port, transport) are decided
once and counted.

A packet capture's own DNS answers are learned evidence (`regionguard.core.learned`), as the DNS filter
would have learned them: each replay run has its own in-memory store, fed in capture order, so a
connection by IP alone to an address a site-coded Zoom name resolved to earlier is placed at that
site. Nothing outside the run is read or written.

Exit codes: 0 every Zoom connection complies; 1 something would be blocked (see --fail-on);
2 usage error or invalid policy; 4 some input could not be read (the rest was replayed);
5 = 1 and 4 together.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionguard.core.decision import Action, Decision, Engine
from regionguard.core.paths import default_policy_path, policy_path
from regionguard.core.policy import Policy, load_policy
from regionguard.exits import EXIT_BLOCKED, EXIT_CONFIG, EXIT_INPUT, EXIT_OK
from regionguard.progress import ProgressBar, wanted
from regionguard.replay.flows import Connection, InputProblem, ObserveDns, read_connections

FAIL_CHOICES = ("block", "reroute", "monitor", "none")
DEFAULT_FAIL_ON = frozenset({"block", "reroute"})
MAX_PROBLEMS_KEPT = 1000   # a file of garbage must not fill memory with messages

Key = tuple[str | None, str | None, str | None, int, str]


@dataclass
class Row:
    """One distinct connection: its decision and how often, where and how it was recorded."""

    decision: Decision
    first_file: str
    first_position: str
    resolved_by: str               # recorded | policy resolver.hosts | none
    count: int = 0
    kinds: set[str] = field(default_factory=set)
    recorded: Counter[str] = field(default_factory=Counter)

    def fails(self, fail_on: frozenset[str]) -> bool:
        d = self.decision
        if d.action is Action.MONITOR:
            return "monitor" in fail_on and d.would in (Action.BLOCK, Action.REROUTE)
        return str(d.action) in fail_on

    def to_dict(self, fail_on: frozenset[str]) -> dict:
        return {**self.decision.to_dict(), "count": self.count, "fails": self.fails(fail_on),
                "first_seen": f"{self.first_file}: {self.first_position}",
                "kinds": sorted(self.kinds), "address_from": self.resolved_by,
                "recorded_actions": dict(self.recorded)}


class ReplayComplianceError(AssertionError):
    """A recorded session would be (partly) blocked, or could not be read in full."""


@dataclass
class ReplayResult:
    """Everything a replay found. `complies` is what a CI check wants."""

    policy: Policy
    fail_on: frozenset[str]
    files: list[str] = field(default_factory=list)
    rows: dict[Key, Row] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)
    problem_count: int = 0
    records: int = 0

    @property
    def zoom_rows(self) -> list[Row]:
        return [r for r in self.rows.values() if r.decision.zoom]

    @property
    def failing(self) -> list[Row]:
        return [r for r in self.rows.values() if r.fails(self.fail_on)]

    @property
    def complies(self) -> bool:
        """No connection would be blocked, and every record could be read."""
        return not self.failing and not self.problem_count

    @property
    def exit_code(self) -> int:
        return (EXIT_BLOCKED if self.failing else EXIT_OK) | (EXIT_INPUT if self.problem_count else EXIT_OK)

    def sorted_rows(self, include_pass: bool = False) -> list[Row]:
        rows = [r for r in self.rows.values() if include_pass or r.decision.zoom]
        return sorted(rows, key=lambda r: (not r.fails(self.fail_on), r.decision.host or "",
                                           r.decision.address or "", r.decision.port))

    def summary(self) -> dict:
        zoom = self.zoom_rows
        return {
            "files": len(self.files),
            "records": self.records,
            "connections": len(self.rows),
            "zoom_connections": len(zoom),
            "by_action": dict(Counter(str(r.decision.action) for r in zoom)),
            "failing": len(self.failing),
            "problems": self.problem_count,
            "complies": self.complies,
            "exit_code": self.exit_code,
        }

    def to_dict(self, include_pass: bool = False) -> dict:
        return {
            "policy": self.policy.path,
            "policy_version": self.policy.version_id,
            "fail_on": sorted(self.fail_on),
            "files": self.files,
            "summary": self.summary(),
            "connections": [r.to_dict(self.fail_on) for r in self.sorted_rows(include_pass)],
            "problems": [p.to_dict() for p in self.problems],
        }

    def assert_complies(self) -> None:
        """Raise ReplayComplianceError (an AssertionError) listing every failing connection and
        unreadable record, unless the session complies."""
        __tracebackhide__ = True   # pytest shows the message, not this frame
        if not self.complies:
            raise ReplayComplianceError(
                f"recorded session does not comply with policy {self.policy.path} "
                f"({len(self.failing)} connection(s) would be blocked, {self.problem_count} "
                f"unreadable record(s)):\n{self.explain_failures()}")

    def explain_failures(self) -> str:
        """A message for a failed CI assertion: every failing connection and unreadable record."""
        lines = []
        for r in self.sorted_rows():
            if r.fails(self.fail_on):
                d = r.decision
                lines.append(f"{str(d.action).upper()} {d.host or '-'} {d.address or '-'}:{d.port}"
                             f"/{d.transport} region {d.region or 'unknown'} [{d.rule}] "
                             f"({r.count}x, first at {r.first_file}: {r.first_position}): {d.reason}")
        lines += [f"UNREADABLE {p}" for p in self.problems]
        return "\n".join(lines)


def _engine_for(policy: str | Path | Policy | Engine | None) -> Engine:
    """The engine to replay with: a policy's gets a fresh in-memory learned store (when
    regionguard.core.learned is installed), so what one run learns never leaks into another."""
    if isinstance(policy, Engine):
        return policy
    if not isinstance(policy, Policy):
        policy = load_policy(policy or default_policy_path())
    store = _learned_store()
    if store is None:
        return Engine(policy)
    return Engine(policy, learned=store)  # type: ignore[call-arg]


class SessionClock:
    """The time of the recorded session, for the learned store replay creates: the latest DNS
    answer seen so far (the wall clock before the first). A capture is judged as of when it was
    recorded, so an old capture's answers are not expired by today's date."""

    def __init__(self) -> None:
        self.now: float | None = None

    def __call__(self) -> float:
        return self.now if self.now is not None else time.time()

    def advance(self, when: float) -> None:
        if self.now is None or when > self.now:
            self.now = when


def _learned_store() -> Any:
    try:
        from regionguard.core.learned import LearnedStore
    except ImportError:
        return None   # no learned evidence in this build: captures' DNS answers are not used
    store = LearnedStore.in_memory()
    store.clock = SessionClock()
    return store


def _dns_observer(engine: Engine, path: Path) -> ObserveDns | None:
    """What a capture's DNS answers are told to: the engine's learned store, if it has one."""
    store = getattr(engine, "learned", None)
    if store is None or not hasattr(store, "observe"):
        return None
    source = f"capture {path}"
    clock = getattr(store, "clock", None)

    def observe(when: float, name: str, addresses: tuple[str, ...]) -> None:
        if isinstance(clock, SessionClock):
            clock.advance(when)
        store.observe(name, addresses, source, when=when)
    return observe


def replay(paths: Iterable[str | Path], policy: str | Path | Policy | Engine | None = None, *,
           client: str | None = None, fail_on: Iterable[str] = DEFAULT_FAIL_ON,
           fmt: str | None = None, progress: str = "never") -> ReplayResult:
    """Decide every connection recorded in these files under this policy (default: the bundled
    one). `client` stands in for records that carry no client address (HAR). Raises ConfigError
    for an invalid policy; unreadable input becomes `problems`, never an exception."""
    engine = _engine_for(policy)
    result = ReplayResult(engine.policy, frozenset(fail_on) - {"none"})
    paths = [Path(p) for p in paths]
    sizes = [p.stat().st_size if p.is_file() else 0 for p in paths]
    bar = ProgressBar(sum(sizes)) if wanted(progress, sum(sizes)) else None
    static_hosts = engine.policy.resolver.hosts
    for path, size in zip(paths, sizes, strict=True):
        result.files.append(str(path))
        if bar:
            bar.start_file(path.name)
        for item in read_connections(path, fmt=fmt, progress=bar.update if bar else None,
                                     observe_dns=_dns_observer(engine, path)):
            if isinstance(item, InputProblem):
                result.problem_count += 1
                if len(result.problems) < MAX_PROBLEMS_KEPT:
                    result.problems.append(item)
                continue
            result.records += 1
            _add(result, engine, item, client, static_hosts)
        if bar:
            bar.finish_file(size)
    if bar:
        bar.close()
    return result


def _add(result: ReplayResult, engine: Engine, c: Connection, client: str | None,
         static_hosts: dict[str, tuple[str, ...]]) -> None:
    who = c.client or client
    if c.address is not None:
        candidates, how = [c.address], "recorded"
    elif c.host and c.host.lower().rstrip(".") in static_hosts:
        candidates, how = list(static_hosts[c.host.lower().rstrip(".")]), "policy resolver.hosts"
    else:
        candidates, how = [None], "none"
    # The client matters only through the policy group it selects: key on the group, so a HAR
    # (no client recorded) and an audit log of the same session collapse into the same rows.
    group = engine.policy.rules_for(who).name
    for address in candidates:
        key = (group, c.host, address, c.port, c.transport)
        row = result.rows.get(key)
        if row is None:
            decision = engine.decide_safely(who, c.host, address, c.port, c.transport)
            row = result.rows[key] = Row(decision, c.file, c.position, how)
        row.count += 1
        row.kinds.add(c.kind)
        if c.recorded:
            row.recorded[c.recorded] += 1


# --- output ---------------------------------------------------------------------------------------


def evidence_text(d: Decision) -> str:
    loc = d.location
    if loc is None or loc.chosen is None:
        return "none" if d.zoom else "-"
    e = loc.chosen
    text = f"{e.source} {e.matched}" + (f" ({e.date})" if e.date else "")
    return text + (" CONFLICT" if loc.conflict else "")


def format_table(result: ReplayResult, include_pass: bool = False) -> str:
    rows = result.sorted_rows(include_pass)
    groups = bool(result.policy.groups)
    head = ("N", "HOST", "ADDRESS", "PORT", "REGION", "SERVICE", "SCOPE", "EVIDENCE", "DECISION")
    if groups:
        head = ("GROUP", *head)
    body = []
    for r in rows:
        d = r.decision
        region = d.region or (f"none ({d.country})" if d.country else ("unknown" if d.zoom else "-"))
        decision = f"{str(d.action).upper()} {d.rule}" + (f" (would {d.would})" if d.would else "")
        address = d.address or "(not recorded)"
        cells = (str(r.count), d.host or "-", address, f"{d.port}/{d.transport}", region,
                 d.service or "-", d.scope or "-", evidence_text(d), decision)
        body.append((d.group or "-", *cells) if groups else cells)
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *body]]
    return "\n".join(lines)


def print_text(result: ReplayResult, include_pass: bool, out=None) -> None:
    out = out or sys.stdout
    s = result.summary()
    out.write(f"regionguard replay: {s['files']} file(s), {s['records']} record(s), "
              f"{s['zoom_connections']} distinct Zoom connection(s) "
              f"[policy {Path(result.policy.path).name} {result.policy.version_id}]\n")
    if result.sorted_rows(include_pass):
        out.write(format_table(result, include_pass) + "\n")
    failing = [r for r in result.sorted_rows() if r.fails(result.fail_on)]
    if failing:
        out.write("\nwhy:\n")
        for r in failing:
            d = r.decision
            out.write(f"  {d.host or '-'} {d.address or '(no address recorded)'}:{d.port}: "
                      f"{d.reason} (first at {r.first_file}: {r.first_position})\n")
    if result.problem_count:
        out.write(f"\nunreadable input ({result.problem_count}):\n")
        for p in result.problems:
            out.write(f"  {p}\n")
        if result.problem_count > len(result.problems):
            out.write(f"  ... and {result.problem_count - len(result.problems)} more\n")
    verdict = "PASS" if result.complies else "FAIL"
    parts = []
    if failing:
        parts.append(f"{len(failing)} connection(s) would be blocked")
    if result.problem_count:
        parts.append(f"{result.problem_count} record(s) unreadable")
    out.write(f"\nresult: {verdict}" + (f" — {'; '.join(parts)}" if parts else "")
              + f" (exit {result.exit_code})\n")


def junit_xml(result: ReplayResult, include_pass: bool = False) -> bytes:
    """One test case per distinct connection, one error per unreadable record."""
    rows = result.sorted_rows(include_pass)
    policy_name = Path(result.policy.path).stem
    failures = sum(1 for r in rows if r.fails(result.fail_on))
    suite = ET.Element("testsuite", name="regionguard replay", tests=str(len(rows) + len(result.problems)),
                       failures=str(failures), errors=str(len(result.problems)), skipped="0")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="policy", value=result.policy.path)
    ET.SubElement(props, "property", name="policy_version", value=result.policy.version_id)
    for r in rows:
        d = r.decision
        case = ET.SubElement(suite, "testcase", classname=f"regionguard.replay.{policy_name}",
                             name=f"{d.host or '-'} {d.address or '-'}:{d.port}/{d.transport}")
        detail = (f"{d.reason}\nregion: {d.region or 'unknown'}; service: {d.service or '-'} "
                  f"(scope {d.scope or '-'}); evidence: {evidence_text(d)}; "
                  f"rule: {d.rule}; seen {r.count}x, first at {r.first_file}: {r.first_position}")
        if r.fails(result.fail_on):
            failure = ET.SubElement(case, "failure", type=str(d.action),
                                    message=f"{str(d.action).upper()} ({d.rule}) region "
                                            f"{d.region or 'unknown'}")
            failure.text = detail
        else:
            ET.SubElement(case, "system-out").text = f"{str(d.action).upper()}: {detail}"
    for p in result.problems:
        case = ET.SubElement(suite, "testcase", classname="regionguard.replay.input",
                             name=f"read {p.file} {p.position}")
        ET.SubElement(case, "error", type="unreadable", message=p.message).text = str(p)
    ET.indent(suite)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="utf-8") + b"\n"


# --- the command ---------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    result = replay(args.files, policy_path(args.policy), client=args.client,
                    fail_on=args.fail_on, fmt=args.format, progress=args.progress)
    if args.junit:
        try:
            Path(args.junit).write_bytes(junit_xml(result, args.all))
        except OSError as e:
            print(f"regionguard replay: cannot write --junit {args.junit}: {e}", file=sys.stderr)
            return EXIT_CONFIG
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(args.all), indent=1, default=str) + "\n")
    else:
        print_text(result, args.all)
    if args.json:   # the table already lists them; JSON readers want them on stderr too
        for p in result.problems[:20]:
            print(f"regionguard replay: {p}", file=sys.stderr)
    return result.exit_code


__all__ = ["cmd_replay", "replay", "ReplayResult", "ReplayComplianceError", "Row", "junit_xml",
           "format_table"]
