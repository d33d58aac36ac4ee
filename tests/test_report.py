"""`regionguard report` on audit logs written by the real proxy (tests/fixtures/replay) and on larger
logs made of audit_record() lines for real Zoom addresses decided by the engine. Expected totals are
counted independently from the lines themselves."""

from __future__ import annotations

import csv
import gzip
import ipaddress
import json
import re
import subprocess
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from regionguard.audit.log import audit_record
from regionguard.core.decision import Engine
from regionguard.core.policy import load_policy
from regionguard.report.summary import TopCounter, summarise
from tests.conftest import BIN, ROOT

FIX = ROOT / "tests" / "fixtures" / "replay"
AUDITS = [FIX / "eu-session.audit.jsonl", FIX / "mixed-session.audit.jsonl"]


def run(*args: str, cwd: Path = FIX) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "regionguard"), "report", *args], capture_output=True,
                          text=True, timeout=180, cwd=cwd)


def lines(*paths: Path) -> list[dict]:
    return [json.loads(x) for p in paths for x in p.read_text().splitlines() if x.strip()]


def make_log(path: Path, n: int, policy: Path = ROOT / "config/examples/eu-only.yaml") -> None:
    """n audit lines: real Zoom addresses from the bundled table, decided by the engine."""
    engine = Engine(load_policy(policy))
    rows = list(csv.DictReader(open(ROOT / "config/data/zoom-datacenters.csv")))
    addresses = [str(ipaddress.ip_network(r["prefix"])[0]) for r in rows]
    with open(path, "w") as f:
        for i in range(n):
            d = engine.decide("10.0.0.5", None, addresses[(i * 7919) % len(addresses)],
                              (443, 8801)[i % 2], ("tcp", "udp")[i % 2])
            rec = audit_record(d, mode="regular", front_end="mitmproxy")
            rec["time"] = f"2026-11-{10 + i % 3:02d}T{i % 24:02d}:00:00.000Z"
            f.write(json.dumps(rec) + "\n")


def test_terminal_summary_of_proxy_audit_logs():
    p = run(*map(str, AUDITS))
    assert p.returncode == 0, p.stderr
    recs = lines(*AUDITS)
    decisions = [r for r in recs if "action" in r]
    assert f"{len(decisions):,} decision(s)" in p.stdout
    for region, n in Counter(r["region"] for r in decisions if r["zoom"]).items():
        assert re.search(rf"^\s+{region}\s+{n}\s", p.stdout, re.M), region
    times = sorted(r["time"] for r in decisions)
    assert f"time range: {times[0]} … {times[-1]}" in p.stdout
    for version in {r["policy_version"] for r in decisions}:
        assert version in p.stdout
    assert re.search(r"top blocked hosts:\n\s+cn01web\.zoom\.us\s+1\b", p.stdout)
    assert "by client group:" in p.stdout and "by service:" in p.stdout


def test_json_totals_match_the_lines(tmp_path):
    log = tmp_path / "audit.jsonl"
    make_log(log, 3000)
    p = run(str(log), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    recs = lines(log)
    assert doc["decisions"] == len(recs)
    assert doc["by_action"] == dict(Counter(r["action"] for r in recs))
    by_region = Counter(r["region"] or ("no-region" if r["country"] else "unknown")
                        for r in recs if r["zoom"])
    assert {k: v["total"] for k, v in doc["by_region"].items()} == dict(by_region)
    blocked = Counter(r.get("host") or r["address"] for r in recs if r["action"] in ("block", "reroute"))
    top = [(h["host"], h["count"]) for h in doc["top_blocked_hosts"]]
    # Hosts with equal counts may come in either order; every host and count must still be exact,
    # and the list must be the largest counts, largest first.
    assert len(top) == min(10, len(blocked)) and len(top) >= 3      # --top defaults to 10
    assert all(blocked[host] == count for host, count in top), top
    assert [n for _, n in top] == sorted(blocked.values(), reverse=True)[:len(top)]
    assert doc["time_range"] == [min(r["time"] for r in recs), max(r["time"] for r in recs)]


def test_html_is_self_contained_with_map_and_charts(tmp_path):
    log = tmp_path / "audit.jsonl"
    make_log(log, 2000)
    out = tmp_path / "report.html"
    p = run(str(log), *map(str, AUDITS), "--html", str(out))
    assert p.returncode == 0, p.stderr
    page = out.read_text()
    # nothing fetched from anywhere: no scripts, stylesheets, images or fonts by URL
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<script|<link""", page, re.I)
    assert page.count("<svg") >= 4                      # map, region, service, group charts
    doc = json.loads(run(str(log), *map(str, AUDITS), "--json").stdout)
    for region in doc["by_region"]:
        if region not in ("unknown", "no-region"):
            assert f">{region} " in page, region          # a labelled marker per region reached
    for h in doc["top_blocked_hosts"][:10]:
        assert f"<td>{h['host']}</td><td class=n>{h['count']:,}</td>" in page


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed")
def test_html_renders_headless(tmp_path):
    """What a person would see: chromium renders the page to a non-blank image."""
    log = tmp_path / "audit.jsonl"
    make_log(log, 500)
    html = tmp_path / "r.html"
    assert run(str(log), "--html", str(html)).returncode == 0
    shot = tmp_path / "shot.png"
    subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1000,900", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=180)
    from PIL import Image  # matplotlib's dependency

    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert img.size == (1000, 900) and len(colours) > 50   # drawn, not a blank page
    # the map's block red and allow green are both on screen
    def on_screen(rgb: tuple[int, int, int]) -> bool:
        return any(all(abs(c - want) < 8 for c, want in zip(seen, rgb, strict=True)) for _, seen in colours)

    assert on_screen((0xC6, 0x28, 0x28)), "no block red (#c62828) on screen"
    assert on_screen((0x2E, 0x7D, 0x32)), "no allow green (#2e7d32) on screen"


def test_png_charts(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "charts.png"
    p = run(*map(str, AUDITS), "--png", str(out))
    assert p.returncode == 0, p.stderr
    from PIL import Image  # matplotlib's dependency

    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == (12 * 110, 8 * 110)            # figsize (12, 8) inches at 110 dpi
        pixels = {rgb: n for n, rgb in png.convert("RGB").getcolors(maxcolors=1 << 20)}
    # The fixtures hold allow, block and pass decisions: their bars are drawn in the report's
    # colours (regionguard/report/html.py COLOURS), each a solid area of many pixels.
    decisions = [r for r in lines(*AUDITS) if "action" in r]
    assert {"allow", "block", "pass"} <= {r["action"] for r in decisions}
    for action, rgb in {"allow": (0x2E, 0x7D, 0x32), "block": (0xC6, 0x28, 0x28)}.items():
        assert pixels.get(rgb, 0) > 500, f"no {action} bar: {pixels.get(rgb)} pixels of {rgb}"
    assert len(pixels) > 20                               # text and axes drawn, not a flat image


def test_bad_lines_are_reported_and_the_rest_counted(tmp_path):
    good = (FIX / "mixed-session.audit.jsonl").read_text().splitlines()
    log = tmp_path / "audit.jsonl"
    log.write_text("\n".join([good[0], '{"action": "block", "regi', *good[1:], "[1, 2]"]) + "\n")
    p = run(str(log), str(tmp_path / "missing.jsonl"))
    assert p.returncode == 4
    assert f"{log}: line 2 column" in p.stdout and f"{log}: line {len(good) + 2}:" in p.stdout
    assert "missing.jsonl: file: cannot read" in p.stdout
    assert re.search(rf"(?<![\d,]){len(good):,} decision\(s\)", p.stdout), p.stdout
    assert "Traceback" not in p.stderr


def test_gzip_and_rotated_logs(tmp_path):
    gz = tmp_path / "audit.jsonl.1.gz"
    gz.write_bytes(gzip.compress(AUDITS[1].read_bytes()))
    doc = json.loads(run(str(AUDITS[0]), str(gz), "--json").stdout)
    assert doc["decisions"] == len([r for r in lines(*AUDITS) if "action" in r])


def test_memory_stays_bounded_as_the_log_grows(tmp_path):
    """Streaming: 8x the lines must not take anywhere near 8x the memory."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    make_log(small, 2000)
    make_log(large, 16000)
    peaks = []
    for path in (small, large):
        tracemalloc.start()
        s = summarise([path])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert s.decisions == sum(1 for _ in open(path))
    assert peaks[1] < 2 * peaks[0] + 200_000, peaks


def test_top_counter_is_bounded_and_exact_until_pruned():
    top = TopCounter(limit=50)
    for i in range(5000):
        top.add(f"host{i % 2000}")
        top.add("hot.zoom.us")
    assert len(top.counts) <= 100 and top.pruned
    assert top.most_common(1) == [("hot.zoom.us", 5000)]
    exact = TopCounter(limit=50)
    for i in range(60):
        exact.add(f"h{i}", i + 1)
    assert not exact.pruned and exact.most_common(2) == [("h59", 60), ("h58", 59)]


def test_progress_bar_when_asked():
    p = run(str(AUDITS[0]), "--progress", "always")
    assert p.returncode == 0, p.stderr
    # the bar names the file and ends full; the summary on stdout is the same as without it
    assert re.search(rf"^{re.escape(AUDITS[0].name)}\s+\[#{{30}}\]\s+100\.0%", p.stderr, re.M), p.stderr
    quiet = run(str(AUDITS[0]), "--progress", "never")
    assert quiet.returncode == 0 and "%" not in quiet.stderr and "[#" not in quiet.stderr
    assert p.stdout == quiet.stdout
