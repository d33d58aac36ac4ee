"""The report's model: totals over audit logs (`Summary`, filled by `summarise`), and what every
renderer shares (the action order and colours), so the text, HTML and PNG renderers import this
module and it imports none of them.

Totals by region, service, scope (`governed`: held to the policy's regions; `other`: Zoom traffic
outside the governed scope, such as web and login), client group and action.

The logs are read as a stream: memory holds totals, never lines. Totals are keyed by bounded
things (regions, services, actions, groups, rules, hours); hosts are unbounded, so the "top
blocked hosts" table keeps at most TOP_HOSTS_KEPT hosts and is exact unless more distinct blocked
hosts than that appear (then counts of the rarest are dropped, and the report says so).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from regionguard.progress import ProgressBar, wanted
from regionguard.replay.flows import FORMAT_NAMES, InputProblem, detect_format, is_flow_file, iter_audit_lines

TOP_HOSTS_KEPT = 10_000
MAX_PROBLEMS_KEPT = 200
RELOADS_KEPT = 50          # the latest policy reloads listed; all are counted
RELOAD_ERROR_CHARS = 500   # a failed reload's error as listed (a policy error can be long)
STOPPED = frozenset({"block", "reroute"})
ACTION_ORDER = ("allow", "monitor", "block", "reroute", "pass")
# one colour per action, the same in every renderer; OTHER for an action not listed
COLOURS = {"allow": "#2e7d32", "monitor": "#f9a825", "block": "#c62828", "reroute": "#6a1b9a",
           "pass": "#90a4ae"}
OTHER = "#607d8b"
# the key for a field an audit line leaves empty (lines from before the field existed, a host
# never named): one word every renderer shows, rather than a bare "-"
NONE = "(none)"


class TopCounter:
    """Counts for an unbounded key space in bounded memory: when more than 2×limit keys are held,
    the smallest counts are dropped down to `limit` (exact while fewer keys ever appear)."""

    def __init__(self, limit: int = TOP_HOSTS_KEPT) -> None:
        self.limit = limit
        self.counts: Counter[str] = Counter()
        self.pruned = 0        # how many keys were dropped: the ranking may be approximate

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        if len(self.counts) > 2 * self.limit:
            keep = self.counts.most_common(self.limit)
            self.pruned += len(self.counts) - len(keep)
            self.counts = Counter(dict(keep))

    def most_common(self, n: int) -> list[tuple[str, int]]:
        return self.counts.most_common(n)


@dataclass
class Summary:
    """Totals over audit lines. `add` takes one audit record (a dict)."""

    files: list[str] = field(default_factory=list)
    decisions: int = 0
    zoom: int = 0
    events: int = 0
    problems: list[InputProblem] = field(default_factory=list)
    problem_count: int = 0
    first_time: str | None = None
    last_time: str | None = None
    by_action: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    by_front_end: Counter[str] = field(default_factory=Counter)
    policy_versions: Counter[str] = field(default_factory=Counter)
    region_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    service_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    scope_action: Counter[tuple[str, str]] = field(default_factory=Counter)   # governed | other
    # the map's: meeting traffic only (scope governed; lines from before scope count as governed)
    governed_region_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    governed_country_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    group_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    country_action: Counter[tuple[str, str]] = field(default_factory=Counter)  # no Zoom region
    hour_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    blocked_hosts: TopCounter = field(default_factory=TopCounter)
    # policy reloads (the proxy's "policy-reload" events): counted, and the latest listed
    reloads_ok: int = 0
    reloads_failed: int = 0
    reloads: list[dict] = field(default_factory=list)

    def add(self, r: dict) -> None:
        if "action" not in r:
            self.events += 1
            if r.get("event") == "policy-reload":
                self._reload(r)
            return
        action = str(r.get("action") or "unknown")
        self.decisions += 1
        self.by_action[action] += 1
        self.by_rule[str(r.get("rule") or NONE)] += 1
        self.by_front_end[str(r.get("front_end") or NONE)] += 1
        if r.get("policy_version"):
            self.policy_versions[str(r["policy_version"])] += 1
        t = r.get("time")
        if isinstance(t, str) and t:
            if self.first_time is None or t < self.first_time:
                self.first_time = t
            if self.last_time is None or t > self.last_time:
                self.last_time = t
            self.hour_action[(t[:13], action)] += 1
        if not r.get("zoom"):
            return
        self.zoom += 1
        region = r.get("region") or ("no-region" if r.get("country") else "unknown")
        self.region_action[(region, action)] += 1
        governed = r.get("scope") != "other"
        if governed:
            self.governed_region_action[(region, action)] += 1
        if not r.get("region") and r.get("country"):
            self.country_action[(str(r["country"]), action)] += 1
            if governed:
                self.governed_country_action[(str(r["country"]), action)] += 1
        self.service_action[(str(r.get("service") or NONE), action)] += 1
        self.scope_action[(str(r.get("scope") or NONE), action)] += 1
        self.group_action[(str(r.get("group") or NONE), action)] += 1
        if action in STOPPED or (action == "monitor" and r.get("would") in STOPPED):
            self.blocked_hosts.add(str(r.get("host") or r.get("address") or NONE))

    def _reload(self, r: dict) -> None:
        ok = r.get("ok") is True
        if ok:
            self.reloads_ok += 1
        else:
            self.reloads_failed += 1
        error = " ".join(str(r.get("error") or "").split())   # one line, whatever the policy said
        if len(error) > RELOAD_ERROR_CHARS:
            error = error[:RELOAD_ERROR_CHARS - 3] + "..."
        self.reloads.append({"time": str(r.get("time") or ""), "ok": ok,
                             "policy": str(r.get("policy") or ""),
                             "policy_version": str(r.get("policy_version") or ""),
                             "previous_version": str(r.get("previous_version") or ""),
                             "error": "" if ok else (error or "(no reason recorded)")})
        if len(self.reloads) > 2 * RELOADS_KEPT:   # bounded: keep the latest by time
            self.reloads = self.latest_reloads()

    def latest_reloads(self) -> list[dict]:
        """The latest RELOADS_KEPT reloads, oldest first (logs may be given in any order)."""
        return sorted(self.reloads, key=lambda x: x["time"])[-RELOADS_KEPT:]

    def problem(self, p: InputProblem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(p)

    # --- views ------------------------------------------------------------------------------

    @staticmethod
    def table(counter: Counter[tuple[str, str]]) -> list[tuple[str, dict[str, int], int]]:
        """(key, {action: n}, total), largest total first."""
        rows: dict[str, Counter[str]] = {}
        for (key, action), n in counter.items():
            rows.setdefault(key, Counter())[action] += n
        out = [(k, dict(v), sum(v.values())) for k, v in rows.items()]
        return sorted(out, key=lambda x: (-x[2], x[0]))

    def actions_seen(self) -> list[str]:
        seen = set(self.by_action)
        return [a for a in ACTION_ORDER if a in seen] + sorted(seen - set(ACTION_ORDER))

    def to_dict(self, top: int = 20) -> dict:
        def nested(counter: Counter[tuple[str, str]]) -> dict:
            return {k: {"total": total, **actions} for k, actions, total in self.table(counter)}

        return {
            "files": self.files,
            "decisions": self.decisions,
            "zoom_decisions": self.zoom,
            "events": self.events,
            "problems": self.problem_count,
            "time_range": [self.first_time, self.last_time],
            "policy_versions": dict(self.policy_versions.most_common()),
            "by_action": dict(self.by_action.most_common()),
            "by_rule": dict(self.by_rule.most_common()),
            "by_front_end": dict(self.by_front_end.most_common()),
            "by_region": nested(self.region_action),
            "by_service": nested(self.service_action),
            "by_scope": nested(self.scope_action),
            "by_group": nested(self.group_action),
            "no_region_countries": nested(self.country_action),
            "by_hour": nested(self.hour_action),
            "top_blocked_hosts": [{"host": h, "count": n}
                                  for h, n in self.blocked_hosts.most_common(top)],
            "top_blocked_hosts_exact": self.blocked_hosts.pruned == 0,
            "policy_reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed,
                               "latest": self.latest_reloads()},
        }


def summarise(paths: Iterable[str | Path], progress: str = "never") -> Summary:
    """Read audit logs (plain or gzip) as a stream into a Summary. Unreadable lines become
    problems; an unreadable file becomes one problem."""
    summary = Summary()
    paths = [Path(p) for p in paths]
    sizes = [p.stat().st_size if p.is_file() else 0 for p in paths]
    bar = ProgressBar(sum(sizes)) if wanted(progress, sum(sizes)) else None
    for path, size in zip(paths, sizes, strict=True):
        summary.files.append(str(path))
        if bar:
            bar.start_file(path.name)
        try:
            other = _recording_not_audit(path)
            if other is not None:    # one problem for the file, not one per "line" of it
                summary.problem(other)
                continue
            for item in iter_audit_lines(path, bar.update if bar else None):
                if isinstance(item, InputProblem):
                    summary.problem(item)
                else:
                    summary.add(item[1])
        except OSError as e:
            summary.problem(InputProblem(str(path), "file", f"cannot read: {e.strerror or e}",
                                         "check the path and permissions"))
        finally:
            if bar:
                bar.finish_file(size)
    if bar:
        bar.close()
    return summary


def _recording_not_audit(path: Path) -> InputProblem | None:
    """A recorded session given to `report` (a HAR, a mitmproxy flow file, a capture) instead of
    an audit log: what it is, and the command that reads it. None for anything else; a text file
    that is neither goes on to be read line by line, each bad line reported."""
    try:
        fmt = detect_format(path)
        if fmt == "mitm" and not is_flow_file(path):
            return None
    except (EOFError, zlib.error):
        return None       # a broken gzip file: the line reader says where it breaks
    if fmt == "audit":
        return None
    return InputProblem(str(path), "file",
                        f"this is {FORMAT_NAMES[fmt]}, not a regionguard audit log: nothing in it "
                        "was counted",
                        f"`regionguard replay {path} --policy POLICY` decides the connections it "
                        "holds; `report` reads the audit logs that `regionguard run`, the "
                        "mitmproxy addon or `regionguard dns` write (JSON lines)")


__all__ = ["ACTION_ORDER", "COLOURS", "NONE", "OTHER", "STOPPED", "Summary", "TopCounter", "summarise"]
