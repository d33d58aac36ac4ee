"""`regionguard report --png`: the report's charts as one PNG, drawn with matplotlib (the
optional `report` extra). The world map stays in the HTML report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # no display: headless servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from regionguard.report.summary import COLOURS, OTHER, Summary  # noqa: E402


def _stacked(ax, title: str, rows: list[tuple[str, dict[str, int], int]], actions: list[str],
             limit: int = 15) -> None:
    rows = rows[:limit][::-1]          # largest at the top
    ax.set_title(title, loc="left", fontsize=11)
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [k for k, _, _ in rows]
    left = [0] * len(rows)
    for a in actions:
        values = [counts.get(a, 0) for _, counts, _ in rows]
        if any(values):
            ax.barh(labels, values, left=left, color=COLOURS.get(a, OTHER), label=a)
            left = [x + v for x, v in zip(left, values, strict=True)]
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:,}", va="center", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


def render_png(s: Summary, out: str | Path, title: str = "regionguard report") -> None:
    actions = [a for a in s.actions_seen() if a != "pass"] or s.actions_seen()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
    _stacked(axes[0][0], "Zoom decisions by region", s.table(s.region_action), actions)
    _stacked(axes[0][1], "by service", s.table(s.service_action), actions)
    _stacked(axes[1][0], "by client group", s.table(s.group_action), actions)
    all_actions = s.actions_seen()
    totals = [s.by_action.get(a, 0) for a in all_actions]
    ax = axes[1][1]
    ax.set_title("all decisions by action", loc="left", fontsize=11)
    if any(totals):
        ax.bar(all_actions, totals, color=[COLOURS.get(a, OTHER) for a in all_actions])
        for i, n in enumerate(totals):
            ax.text(i, n, f"{n:,}", ha="center", va="bottom", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    else:
        ax.set_axis_off()
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", ncols=len(handles), frameon=False)
    span = f"{s.first_time} … {s.last_time}" if s.first_time else "no timestamps"
    fig.suptitle(f"{title} — {s.decisions:,} decisions, {span}", x=0.01, ha="left", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, format="png")
    plt.close(fig)
