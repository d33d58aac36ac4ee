"""The HTML report: one self-contained page (inline CSS and SVG, no script, no network) with a
world map of where Zoom traffic went and where it was stopped, and stacked bar charts.

The map is an equirectangular projection of config/report/world-110m.json (Natural Earth 1:110m,
public domain, simplified by tools/build_report_map.py); each region is drawn at one city from
config/report/region-sites.csv. Hover tooltips are SVG <title>s, so they work without script.
"""

from __future__ import annotations

import csv
import html
import json
import math
from functools import cache
from pathlib import Path

from regionguard.core.paths import config_dir
from regionguard.core.regions import load_catalogue
from regionguard.report.summary import COLOURS, OTHER, STOPPED, Summary

MAP_W, MAP_H = 960, 400
LAT_TOP, LAT_BOTTOM = 84.0, -58.0     # Antarctica is cut off: no Zoom region there
MARKER_GAP = 2.0          # pixels kept between two markers pushed apart
DECLUTTER_ROUNDS = 60     # bounded: markers settle in a few rounds; a crowd stops here anyway
# How a country is shaded, and what the legend says the shade means (in drawing order).
SHADES = (("all", "#c8e6c9", "Zoom region: all allowed"),
          ("some", "#f9e0b4", "Zoom region: some stopped"),
          ("stopped", "#f4c7c3", "Zoom region: all stopped"),
          ("idle", "#cfd8dc", "Zoom region, no traffic"),
          ("outside", "#ffe0b2", "no Zoom region; traffic went there"),
          ("none", "#d9d9d9", "no Zoom region, no traffic"))
SHADE = {key: colour for key, colour, _ in SHADES}


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


@cache
def _world() -> list[dict]:
    with open(config_dir() / "report" / "world-110m.json", encoding="utf-8") as f:
        return json.load(f)["countries"]


@cache
def _sites() -> dict[str, tuple[str, float, float]]:
    path = config_dir() / "report" / "region-sites.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {r["region"]: (r["city"], float(r["lat"]), float(r["lon"])) for r in rows}


def _xy(lon: float, lat: float) -> tuple[float, float]:
    return ((lon + 180.0) / 360.0 * MAP_W, (LAT_TOP - lat) / (LAT_TOP - LAT_BOTTOM) * MAP_H)


def _ring_path(ring: list[float]) -> str:
    pts = [_xy(ring[i], ring[i + 1]) for i in range(0, len(ring), 2)]
    return "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in pts) + "Z"


def _centre(country: dict) -> tuple[float, float]:
    """The middle of the country's largest ring's bounding box (lon, lat)."""
    ring = max(country["rings"], key=len)
    lons, lats = ring[0::2], ring[1::2]
    return (min(lons) + max(lons)) / 2, (min(lats) + max(lats)) / 2


def _pie(cx: float, cy: float, r: float, parts: list[tuple[str, int]], tip: str) -> str:
    total = sum(n for _, n in parts) or 1
    out = [f'<g class="marker"><title>{esc(tip)}</title>']
    live = [(c, n) for c, n in parts if n]
    if len(live) == 1:
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{live[0][0]}"/>')
    else:
        angle = -math.pi / 2
        for colour, n in live:
            sweep = 2 * math.pi * n / total
            x1, y1 = cx + r * math.cos(angle), cy + r * math.sin(angle)
            angle += sweep
            x2, y2 = cx + r * math.cos(angle), cy + r * math.sin(angle)
            large = 1 if sweep > math.pi else 0
            out.append(f'<path d="M{cx:.1f},{cy:.1f}L{x1:.1f},{y1:.1f}A{r:.1f},{r:.1f} 0 {large} 1 '
                       f'{x2:.1f},{y2:.1f}Z" fill="{colour}"/>')
    out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="none" stroke="#fff" '
               f'stroke-width="1.2"/></g>')
    return "".join(out)


def _place_label(text: str, x: float, y: float, r: float,
                 placed: list[tuple[float, float, float, float]]) -> str:
    """A label beside its marker, on the first side (above, right, below, left, then further out)
    where it overlaps no label placed before: Europe's regions sit close together."""
    w, h = 7.6 * len(text) + 4, 13.0
    candidates = []
    for gap in (3.0, 16.0, 30.0):
        candidates += [(x, y - r - gap, "middle"), (x + r + gap, y + 4, "start"),
                       (x, y + r + gap + 10, "middle"), (x - r - gap, y + 4, "end")]
    for tx, ty, anchor in candidates:
        left = tx - w / 2 if anchor == "middle" else (tx if anchor == "start" else tx - w)
        box = (left, ty - h + 2, left + w, ty + 2)
        if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
            break
    placed.append(box)
    return f'<text x="{tx:.1f}" y="{ty:.1f}" class="lbl" text-anchor="{anchor}">{esc(text)}</text>'


def declutter(centres: list[tuple[float, float]], radii: list[float]
              ) -> list[tuple[float, float]]:
    """Centres moved apart so that no two markers overlap: Europe's sites (Amsterdam and
    Frankfurt) are closer than two markers are wide. Each round pushes every overlapping pair
    apart along the line between them, the smaller marker further; bounded in rounds, and kept
    on the map. Deterministic: the same totals draw the same map."""
    pos = [[x, y] for x, y in centres]
    n = len(pos)
    for _ in range(DECLUTTER_ROUNDS):
        moved = False
        for i in range(n):
            for j in range(i + 1, n):
                dx, dy = pos[j][0] - pos[i][0], pos[j][1] - pos[i][1]
                d = math.hypot(dx, dy)
                need = radii[i] + radii[j] + MARKER_GAP
                if d >= need:
                    continue
                if d < 1e-6:                   # the same spot: part them sideways
                    dx, dy, d = 1.0, 0.0, 1.0
                push = need - d
                share_j = radii[i] / (radii[i] + radii[j])   # the smaller one moves more
                ux, uy = dx / d, dy / d
                pos[i][0] -= ux * push * (1 - share_j)
                pos[i][1] -= uy * push * (1 - share_j)
                pos[j][0] += ux * push * share_j
                pos[j][1] += uy * push * share_j
                moved = True
        for k in range(n):
            pos[k][0] = min(max(pos[k][0], radii[k]), MAP_W - radii[k])
            pos[k][1] = min(max(pos[k][1], radii[k]), MAP_H - radii[k])
        if not moved:
            break
    return [(x, y) for x, y in pos]


def shade_legend() -> str:
    """What each country shade means: the map's colours are otherwise unexplained."""
    return "<p class=legend>" + " ".join(
        f'<span><i style="background:{colour}"></i>{esc(text)}</span>' for _, colour, text in SHADES
    ) + "</p>"


def world_map(s: Summary) -> str:
    cat = load_catalogue()
    regions = {k: (counts, total) for k, counts, total in s.table(s.governed_region_action)}
    no_region = {k: (counts, total) for k, counts, total in s.table(s.governed_country_action)}
    parts = [f'<svg class="map" viewBox="0 0 {MAP_W} {MAP_H}" role="img" '
             f'aria-label="World map of Zoom regions reached">',
             f'<rect width="{MAP_W}" height="{MAP_H}" fill="#e8f1f8"/>']
    centres: dict[str, tuple[float, float]] = {}
    for c in _world():
        a2 = c.get("a2") or ""
        centres[a2] = _centre(c)
        region = cat.region_for_country(a2)
        fill, tip = SHADE["none"], c["name"]
        if region in regions:
            counts, total = regions[region]
            stopped = sum(n for a, n in counts.items() if a in STOPPED)
            fill = SHADE["stopped" if stopped == total else ("some" if stopped else "all")]
            tip = f"{c['name']}: Zoom region {region}, {total:,} decision(s), {stopped:,} stopped"
        elif region:
            fill, tip = SHADE["idle"], f"{c['name']}: Zoom region {region}, no traffic"
        elif a2 in no_region:
            counts, total = no_region[a2]
            fill, tip = SHADE["outside"], f"{c['name']}: no Zoom region; {total:,} decision(s)"
        d = "".join(_ring_path(r) for r in c["rings"])
        parts.append(f'<path d="{d}" fill="{fill}" stroke="#fff" stroke-width="0.4">'
                     f'<title>{esc(tip)}</title></path>')
    biggest = max([t for _, t in regions.values()] + [t for _, t in no_region.values()] + [1])
    sites = _sites()
    markers = []
    for code, (counts, total) in regions.items():
        if code not in sites:
            continue
        city, lat, lon = sites[code]
        markers.append((total, code, city, lat, lon, counts))
    for a2, (counts, total) in no_region.items():
        if a2 in centres:
            lon, lat = centres[a2]
            markers.append((total, a2, "country without a Zoom region", lat, lon, counts))
    placed: list[tuple[float, float, float, float]] = []   # label boxes already drawn
    labels = []
    markers.sort(reverse=True)
    sites_xy = [_xy(lon, lat) for _, _, _, lat, lon, _ in markers]
    radii = [5 + 17 * math.sqrt(total / biggest) for total, *_ in markers]
    centres_xy = declutter(sites_xy, radii)
    for (total, code, city, _lat, _lon, counts), (sx, sy), r, (x, y) in zip(
            markers, sites_xy, radii, centres_xy, strict=True):
        if math.hypot(x - sx, y - sy) > 1.0:   # moved off its site: a leader line to the site
            parts.append(f'<line class="leader" x1="{sx:.1f}" y1="{sy:.1f}" x2="{x:.1f}" '
                         f'y2="{y:.1f}" stroke="#555" stroke-width="0.8"/>'
                         f'<circle cx="{sx:.1f}" cy="{sy:.1f}" r="1.5" fill="#555"/>')
        pie = [(COLOURS.get(a, OTHER), counts.get(a, 0)) for a in
               ("allow", "monitor", "block", "reroute")]
        detail = ", ".join(f"{a} {n:,}" for a, n in sorted(counts.items()))
        parts.append(_pie(x, y, r, pie, f"{code} — {city}: {total:,} ({detail})"))
        labels.append(_place_label(f"{code} {total:,}", x, y, r, placed))
    parts += labels    # after every marker, so no marker covers a label
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, rows: list[tuple[str, dict[str, int], int]], actions: list[str],
              limit: int = 15) -> str:
    rows = rows[:limit]
    if not rows:
        return f"<h3>{esc(title)}</h3><p class=muted>no data</p>"
    label_w, bar_w, row_h = 150, 560, 22
    height = row_h * len(rows) + 8
    biggest = max(t for _, _, t in rows) or 1
    out = [f"<h3>{esc(title)}</h3>",
           f'<svg class="chart" viewBox="0 0 {label_w + bar_w + 80} {height}" '
           f'width="{label_w + bar_w + 80}" height="{height}">']
    for i, (key, counts, total) in enumerate(rows):
        y = 4 + i * row_h
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{esc(key)}</text>')
        x = float(label_w)
        for a in actions:
            n = counts.get(a, 0)
            if not n:
                continue
            w = bar_w * n / biggest
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{row_h - 6}" '
                       f'fill="{COLOURS.get(a, OTHER)}"><title>{esc(key)}: {esc(a)} {n:,}</title></rect>')
            x += w
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}" class="num">{total:,}</text>')
    out.append("</svg>")
    return "".join(out)


def timeline(s: Summary, actions: list[str]) -> str:
    rows = sorted(s.table(s.hour_action))        # by hour
    if len(rows) < 2:
        return ""
    if len(rows) > 96:                           # more than four days: one column per day
        days: dict[str, dict[str, int]] = {}
        for hour, counts, _ in rows:
            day = days.setdefault(hour[:10], {})
            for a, n in counts.items():
                day[a] = day.get(a, 0) + n
        rows = [(d, c, sum(c.values())) for d, c in sorted(days.items())]
        unit = "day"
    else:
        unit = "hour (UTC)"
    width, height, pad = 880, 200, 50
    col = (width - pad) / len(rows)
    biggest = max(t for _, _, t in rows) or 1
    out = [f"<h3>Decisions per {unit}</h3>",
           f'<svg class="chart" viewBox="0 0 {width} {height + 24}" width="{width}" height="{height + 24}">']
    for i, (key, counts, _total) in enumerate(rows):
        x, y = pad + i * col, float(height)
        for a in actions:
            n = counts.get(a, 0)
            if n:
                h = (height - 10) * n / biggest
                y -= h
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(col - 1, 1):.1f}" '
                           f'height="{h:.1f}" fill="{COLOURS.get(a, OTHER)}">'
                           f'<title>{esc(key)}: {esc(a)} {n:,}</title></rect>')
    out.append(f'<text x="{pad}" y="{height + 18}">{esc(rows[0][0])}</text>'
               f'<text x="{width}" y="{height + 18}" text-anchor="end">{esc(rows[-1][0])}</text>'
               f'<text x="{pad - 4}" y="12" text-anchor="end" class="num">{biggest:,}</text>'
               f'<line x1="{pad}" x2="{width}" y1="{height}" y2="{height}" stroke="#999"/></svg>')
    return "".join(out)


def legend(actions: list[str]) -> str:
    return "<p class=legend>" + " ".join(
        f'<span><i style="background:{COLOURS.get(a, OTHER)}"></i>{esc(a)}</span>' for a in actions
    ) + "</p>"


def reload_table(s: Summary) -> str:
    """Policy reloads: counts, and the latest ones with the reason for each failure."""
    if not (s.reloads_ok or s.reloads_failed):
        return ""
    latest = s.latest_reloads()
    out = [f"<h2>Policy reloads</h2><p>{s.reloads_ok:,} ok, "
           + (f"<b class=bad>{s.reloads_failed:,} failed</b>" if s.reloads_failed else "0 failed")
           + (" (the running policy stayed in force after each failure)" if s.reloads_failed
              else "")
           + (f"; the latest {len(latest)} are listed" if len(latest) < s.reloads_ok + s.reloads_failed
              else "") + "</p>",
           "<table><tr><th>time</th><th>outcome</th><th>policy</th><th>version</th>"
           "<th>reason</th></tr>"]
    for r in reversed(latest):     # newest first
        version = (f"{r['previous_version'] or '?'} → {r['policy_version'] or '?'}" if r["ok"]
                   else f"kept {r['policy_version'] or '?'}")
        out.append(f"<tr{'' if r['ok'] else ' class=fail'}><td>{esc(r['time'])}</td>"
                   f"<td>{'ok' if r['ok'] else 'FAILED'}</td><td>{esc(r['policy'])}</td>"
                   f"<td>{esc(version)}</td><td>{esc(r['error'])}</td></tr>")
    out.append("</table>")
    return "".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 4px}.muted{color:#777}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}.card.stop b{color:#c62828}.card.ok b{color:#2e7d32}
svg.map{width:100%;height:auto;border:1px solid #ccd;border-radius:4px}
svg text{font:12px system-ui,sans-serif;fill:#333}svg text.lbl{font-weight:600;
paint-order:stroke;stroke:#fff;stroke-width:3px}svg text.num{fill:#555}
.legend span{margin-right:14px;white-space:nowrap}.legend i{display:inline-block;width:11px;height:11px;
margin-right:4px;border-radius:2px;vertical-align:-1px}
table{border-collapse:collapse;margin:6px 0}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{color:#c62828}b.bad{color:#c62828}
"""


def render_html(s: Summary, title: str = "regionguard report", top: int = 10) -> str:
    actions = s.actions_seen()
    zoom_actions = [a for a in actions if a != "pass"]
    stopped = sum(n for a, n in s.by_action.items() if a in STOPPED)
    unknown = sum(n for (region, _), n in s.governed_region_action.items() if region == "unknown")
    other = sum(n for (scope, _), n in s.scope_action.items() if scope == "other")
    cards = [("decisions", f"{s.decisions:,}", ""), ("Zoom", f"{s.zoom:,}", ""),
             ("allowed", f"{s.by_action.get('allow', 0):,}", "ok"),
             ("stopped", f"{stopped:,}", "stop"),
             ("regions reached", str(len({r for (r, a) in s.region_action if r != 'unknown'
                                           and a not in STOPPED})), "")]
    if s.by_action.get("monitor"):
        cards.insert(3, ("monitored", f"{s.by_action['monitor']:,}", ""))
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class=muted>{len(s.files)} audit log(s): {esc(', '.join(Path(f).name for f in s.files))}"
            + (f"<br>{esc(s.first_time)} … {esc(s.last_time)}" if s.first_time else "") + "</p>",
            '<div class="cards">' + "".join(f'<div class="card {cls}"><b>{v}</b>{esc(k)}</div>'
                                              for k, v, cls in cards) + "</div>",
            "<h2>Where the meeting traffic went</h2>", world_map(s), legend(zoom_actions),
            shade_legend(),
            "<p class=muted>Markers: one per Zoom region (at one of its data-center cities) and per "
            "country without a Zoom region; area grows with the number of decisions; slices show "
            "what was allowed, monitored and stopped. Markers that would cover each other are "
            "moved apart, with a line to their site. Countries are shaded by their Zoom region's "
            "traffic, as the second legend says."
            + (f" {unknown:,} Zoom decision(s) had no provable region and are not on the map."
               if unknown else "")
            + (f" The map shows the governed scope (meeting and webinar traffic) only: {other:,} "
               "decision(s) for Zoom traffic outside it (web, login, logging, CDN) are counted "
               "under By scope." if other else "") + "</p>",
            "<h2>Decisions</h2>", legend(actions),
            bar_chart("By region", s.table(s.region_action), zoom_actions),
            bar_chart("By service", s.table(s.service_action), zoom_actions),
            bar_chart("By scope", s.table(s.scope_action), zoom_actions),
            bar_chart("By client group", s.table(s.group_action), zoom_actions),
            timeline(s, actions)]
    blocked = s.blocked_hosts.most_common(top)
    body.append("<h2>Top blocked hosts</h2>")
    if blocked:
        body.append("<table><tr><th>host</th><th>stopped</th></tr>" + "".join(
            f"<tr><td>{esc(h)}</td><td class=n>{n:,}</td></tr>" for h, n in blocked) + "</table>")
        if s.blocked_hosts.pruned:
            body.append("<p class=muted>approximate: more distinct blocked hosts than the report "
                        "keeps counts for</p>")
    else:
        body.append("<p class=muted>nothing was stopped</p>")
    body.append("<h2>Rules and policy versions</h2><table><tr><th>rule</th><th>decisions</th></tr>"
                + "".join(f"<tr><td>{esc(r)}</td><td class=n>{n:,}</td></tr>"
                          for r, n in s.by_rule.most_common()) + "</table>")
    body.append("<table><tr><th>policy version</th><th>decisions</th></tr>" + "".join(
        f"<tr><td>{esc(v)}</td><td class=n>{n:,}</td></tr>" for v, n in s.policy_versions.most_common())
        + "</table>")
    body.append(reload_table(s))
    if s.problem_count:
        body.append(f"<h2>Unreadable input ({s.problem_count:,})</h2><ul>" + "".join(
            f"<li>{esc(p)}</li>" for p in s.problems[:50]) + "</ul>")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")
