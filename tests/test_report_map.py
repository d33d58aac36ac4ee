"""The bundled map file (config/report/world-110m.json) and the tool that builds it: every country
name decodes to what it is called, no replacement characters (issue 19: "Côte d'Ivoire" showed as a
broken character, because tools/build_report_map.py read the cp1252 .dbf as UTF-8)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import struct

from tests.conftest import ROOT

MAP = ROOT / "config" / "report" / "world-110m.json"


def build_tool():
    spec = importlib.util.spec_from_file_location("build_report_map", ROOT / "tools" / "build_report_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_country_name_in_the_map_file_decodes():
    countries = json.loads(MAP.read_text(encoding="utf-8"))["countries"]
    assert len(countries) > 150
    broken = [c["name"] for c in countries if "\ufffd" in c["name"] or not c["name"].isprintable()]
    assert not broken, broken
    names = {c["a2"]: c["name"] for c in countries}
    assert names["CI"] == "Côte d'Ivoire"


def dbf(names: list[bytes]) -> bytes:
    """A minimal dBASE III file with one 32-byte character field NAME."""
    field = b"NAME".ljust(11, b"\0") + b"C" + b"\0" * 4 + bytes([32]) + b"\0" * 15
    header_len, record_len = 32 + 32 + 1, 1 + 32
    head = bytes([3, 126, 1, 1]) + struct.pack("<IHH", len(names), header_len, record_len)
    head += b"\0" * 20
    records = b"".join(b" " + n.ljust(32, b" ") for n in names)
    return head + field + b"\r" + records + b"\x1a"


def test_the_build_tool_reads_natural_earths_cp1252_names(tmp_path):
    tool = build_tool()
    path = tmp_path / "countries.dbf"
    path.write_bytes(dbf(["Côte d'Ivoire".encode("cp1252"), b"Germany"]))
    assert [r["NAME"] for r in tool.read_dbf(path)] == ["Côte d'Ivoire", "Germany"]
    # a release that says it is UTF-8 (a .cpg file) is read as UTF-8
    path.write_bytes(dbf(["Côte d'Ivoire".encode()]))
    path.with_suffix(".cpg").write_text("UTF-8\n")
    assert [r["NAME"] for r in tool.read_dbf(path)] == ["Côte d'Ivoire"]


# --- the HTML map drawn from a real-sized log -------------------------------------------------


def map_of(tmp_path, n: int = 3000) -> str:
    from regionguard.report.html import world_map
    from regionguard.report.summary import summarise
    from tests.test_report import make_log

    log = tmp_path / "audit.jsonl"
    make_log(log, n)
    return world_map(summarise([log]))


MARKER = re.compile(r'<g class="marker"><title>([^<]*)</title>.*?<circle cx="([\d.]+)" cy="([\d.]+)" '
                    r'r="([\d.]+)" fill="none"')


def test_no_marker_covers_another(tmp_path):
    svg = map_of(tmp_path)
    markers = [(tip.split(" ")[0], float(x), float(y), float(r))
               for tip, x, y, r in MARKER.findall(svg)]
    codes = {m[0] for m in markers}
    assert {"DE", "NL"} <= codes, codes                # Frankfurt and Amsterdam: the close pair
    for i, (a, xa, ya, ra) in enumerate(markers):
        for b, xb, yb, rb in markers[i + 1:]:
            # 0.2: the SVG's coordinates are rounded to 0.1 px
            assert math.hypot(xa - xb, ya - yb) >= ra + rb - 0.2, (a, b)
    assert '<line class="leader"' in svg               # a moved marker points at its site


def test_every_country_shade_is_explained(tmp_path):
    from regionguard.report.html import render_html
    from regionguard.report.summary import summarise
    from tests.test_report import make_log

    log = tmp_path / "audit.jsonl"
    make_log(log, 6)                                   # a few regions reached, not all
    page = render_html(summarise([log]))
    svg = page[page.index('<svg class="map"'):page.index("</svg>")]
    shades = set(re.findall(r'<path d="[^"]*" fill="(#[0-9a-f]{6})" stroke="#fff" stroke-width="0.4">',
                            svg))
    assert "#cfd8dc" in shades                         # some Zoom region had no traffic
    legend = dict(re.findall(r'<i style="background:(#[0-9a-f]{6})"></i>([^<]+)</span>', page))
    assert legend["#cfd8dc"] == "Zoom region, no traffic"
    assert shades <= set(legend), shades - set(legend)
