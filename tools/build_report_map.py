"""Build config/report/world-110m.json, the outline `regionguard report --html` draws its map on.

Source: Natural Earth 1:110m Admin 0 countries (public domain, naturalearthdata.com), as shipped
in the geopandas 0.14.4 wheel on PyPI (geopandas/datasets/naturalearth_lowres/). The polygons are
simplified (Douglas-Peucker, 0.3 degree) and rounded to 0.1 degree: a map to see where traffic
went, not to measure anything. Country codes: ISO 3166-1 alpha-3 from the dataset, mapped to
alpha-2 with pycountry (needed only to run this tool).

    pip download geopandas==0.14.4 --no-deps -d /tmp/gpd && unzip /tmp/gpd/*.whl -d /tmp/gpd
    pip install pycountry
    python tools/build_report_map.py /tmp/gpd/geopandas/datasets/naturalearth_lowres/naturalearth_lowres
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "config" / "report" / "world-110m.json"
TOLERANCE = 0.3
# Natural Earth codes that are not ISO alpha-3, or places pycountry names differently.
EXTRA_A2 = {"KOS": "XK", "-99": None, "CYN": "CY", "SOL": "SO", "SDS": "SS"}


def dbf_encoding(path: Path) -> str:
    """The text encoding of a shapefile's .dbf: its .cpg file when there is one, else cp1252,
    the encoding of Natural Earth's older releases (naturalearth_lowres's names are not UTF-8:
    reading `C\xf4te d'Ivoire` as UTF-8 is what put a replacement character in the map file)."""
    cpg = path.with_suffix(".cpg")
    if cpg.is_file():
        name = cpg.read_text(encoding="ascii").strip() or "utf-8"
        return "utf-8" if name.replace("-", "").lower() == "utf8" else name
    return "cp1252"


def decode_field(raw: bytes, encoding: str) -> str:
    """One DBF text field. Strict: a byte the encoding cannot read stops the build with the
    field shown, rather than putting a broken character into the map."""
    return raw.decode(encoding).strip()


def read_dbf(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    encoding = dbf_encoding(path)
    count, header_len, record_len = struct.unpack("<IHH", data[4:12])
    fields = []
    pos = 32
    while data[pos] != 0x0D:
        name = data[pos:pos + 11].split(b"\0")[0].decode()
        fields.append((name, data[pos + 16]))
        pos += 32
    rows = []
    for i in range(count):
        rec = data[header_len + i * record_len + 1: header_len + (i + 1) * record_len]
        row, off = {}, 0
        for name, size in fields:
            row[name] = decode_field(rec[off:off + size], encoding)
            off += size
        rows.append(row)
    return rows


def read_shp(path: Path) -> list[list[list[tuple[float, float]]]]:
    data = path.read_bytes()
    shapes, pos = [], 100
    while pos < len(data):
        _, length = struct.unpack(">ii", data[pos:pos + 8])
        content = data[pos + 8: pos + 8 + length * 2]
        pos += 8 + length * 2
        kind = struct.unpack("<i", content[:4])[0]
        if kind != 5:
            shapes.append([])
            continue
        nparts, npoints = struct.unpack("<ii", content[36:44])
        parts = list(struct.unpack(f"<{nparts}i", content[44:44 + 4 * nparts])) + [npoints]
        base = 44 + 4 * nparts
        points = [struct.unpack("<dd", content[base + 16 * i: base + 16 * i + 16]) for i in range(npoints)]
        shapes.append([points[parts[i]:parts[i + 1]] for i in range(nparts)])
    return shapes


def simplify(points: list[tuple[float, float]], tol: float) -> list[tuple[float, float]]:
    """Douglas-Peucker, iterative."""
    if len(points) < 3:
        return points
    keep = [False] * len(points)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        a, b = stack.pop()
        (x1, y1), (x2, y2) = points[a], points[b]
        dx, dy = x2 - x1, y2 - y1
        norm = (dx * dx + dy * dy) ** 0.5
        best, index = 0.0, None
        for i in range(a + 1, b):
            x, y = points[i]
            d = abs(dy * x - dx * y + x2 * y1 - y2 * x1) / norm if norm else ((x - x1) ** 2 + (y - y1) ** 2) ** 0.5
            if d > best:
                best, index = d, i
        if index is not None and best > tol:
            keep[index] = True
            stack += [(a, index), (index, b)]
    return [p for p, k in zip(points, keep, strict=True) if k]


def main(stem: str) -> int:
    import pycountry

    rows = read_dbf(Path(stem + ".dbf"))
    shapes = read_shp(Path(stem + ".shp"))
    countries = []
    for row, rings in zip(rows, shapes, strict=True):
        a3 = row.get("iso_a3") or row.get("ISO_A3")
        c = pycountry.countries.get(alpha_3=a3)
        a2 = c.alpha_2 if c else EXTRA_A2.get(a3)
        paths = []
        for ring in rings:
            simple = [(round(x, 1), round(y, 1)) for x, y in simplify(ring, TOLERANCE)]
            dedup = [p for i, p in enumerate(simple) if i == 0 or p != simple[i - 1]]
            if len(dedup) >= 4:
                paths.append([coord for p in dedup for coord in p])
        if paths:
            countries.append({"a2": a2, "a3": a3, "name": row.get("name") or row.get("NAME"),
                              "rings": paths})
    doc = {
        "source": "Natural Earth 1:110m Admin 0 countries (public domain), via the geopandas 0.14.4 "
                  "wheel (naturalearth_lowres); simplified 0.3 deg, rounded 0.1 deg by "
                  "tools/build_report_map.py",
        "format": "rings: flat [lon, lat, lon, lat, ...] lists, equirectangular degrees",
        "countries": countries,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(countries)} countries, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
