"""The bundled map file (config/report/world-110m.json) and the tool that builds it: every country
name decodes to what it is called, no replacement characters (issue 19: "Côte d'Ivoire" showed as a
broken character, because tools/build_report_map.py read the cp1252 .dbf as UTF-8)."""

from __future__ import annotations

import importlib.util
import json
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
