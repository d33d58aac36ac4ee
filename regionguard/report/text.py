"""The report in the terminal: `regionguard report` without --json."""

from __future__ import annotations

from regionguard.report.summary import Summary


def _grid(title: str, rows: list[tuple[str, dict[str, int], int]], actions: list[str],
          limit: int = 25) -> list[str]:
    if not rows:
        return []
    head = [title.upper(), "TOTAL", *[a.upper() for a in actions]]
    body = [[k, str(total), *[str(counts.get(a, 0) or "") for a in actions]]
            for k, counts, total in rows[:limit]]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = [w if i == 0 else w for i, w in enumerate(widths)]
    lines = ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, fmt, strict=True))).rstrip()
             for r in [head, *body]]
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more")
    return lines


def format_text(s: Summary, top: int = 10) -> str:
    out = [f"regionguard report: {len(s.files)} file(s), {s.decisions:,} decision(s), "
           f"{s.zoom:,} for Zoom endpoints"
           + (f", {s.events} event(s)" if s.events else "")
           + (f", {s.problem_count} unreadable line(s) or file(s)" if s.problem_count else "")]
    if s.first_time:
        out.append(f"time range: {s.first_time} … {s.last_time}")
    if s.policy_versions:
        out.append("policy versions: " + ", ".join(f"{v} ({n:,})" for v, n in
                                                    s.policy_versions.most_common()))
    if s.by_action:
        out.append("by action: " + "  ".join(f"{a} {s.by_action[a]:,}" for a in s.actions_seen()))
    actions = [a for a in s.actions_seen() if a != "pass"]
    for title, counter in (("region", s.region_action), ("service", s.service_action),
                           ("scope", s.scope_action),
                           ("client group", s.group_action),
                           ("country without a Zoom region", s.country_action)):
        lines = _grid(title, s.table(counter), actions)
        if lines:
            out += ["", f"by {title}:", *lines]
    out += _reloads(s)
    blocked = s.blocked_hosts.most_common(top)
    if blocked:
        out += ["", "top blocked hosts" + ("" if not s.blocked_hosts.pruned else " (approximate)")
                + ":"]
        width = max(len(h) for h, _ in blocked)
        out += [f"  {h.ljust(width)}  {n:,}" for h, n in blocked]
    if s.problem_count:
        out += ["", f"unreadable input ({s.problem_count}):", *[f"  {p}" for p in s.problems[:20]]]
        if s.problem_count > 20:
            out.append(f"  ... and {s.problem_count - 20} more (all are in --json)")
    return "\n".join(out) + "\n"


RELOADS_SHOWN = 10


def _reloads(s: Summary) -> list[str]:
    """Policy reloads, failed ones with their reason: what an admin most needs to see."""
    if not (s.reloads_ok or s.reloads_failed):
        return []
    out = ["", f"policy reloads: {s.reloads_ok:,} ok, {s.reloads_failed:,} failed"
           + (" (the running policy stayed in force after each failure)" if s.reloads_failed else "")]
    latest = s.latest_reloads()
    shown = latest[-RELOADS_SHOWN:]
    for r in shown:
        if r["ok"]:
            out.append(f"  {r['time']}  ok      {r['policy']}: {r['previous_version'] or '?'} → "
                       f"{r['policy_version'] or '?'}")
        else:
            out.append(f"  {r['time']}  FAILED  {r['policy']}: {r['error']}"
                       + (f" (kept {r['policy_version']})" if r["policy_version"] else ""))
    hidden = s.reloads_ok + s.reloads_failed - len(shown)
    if hidden:
        out.append(f"  ... {hidden:,} earlier (the latest {len(latest)} are in --json)")
    return out


__all__ = ["format_text"]
