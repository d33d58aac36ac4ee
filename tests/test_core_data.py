"""The bundled data is sound: every prefix parses, every cloud location has a row, every row says
where it came from, and the shipped files can be made again from a fresh clone: by the build
script from the repository's own inputs, and by `regionguard data update` from a mirror of the
upstream files served over HTTP on 127.0.0.1."""

import csv
import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

from regionguard import load_catalogue
from tests.conftest import CONFIG, ROOT

DATA = CONFIG / "data"
CAT = load_catalogue()


def rows(name):
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_zoom_tables_have_valid_prefixes_regions_and_provenance():
    for row in rows("zoom-datacenters.csv"):
        ipaddress.ip_network(row["prefix"], strict=True)
        assert row["region"] in CAT.codes or row["region"] == ""
        if row["region"]:
            assert CAT.region_for_country(row["country"]) == row["region"]
        assert row["kind"] in ("labelled", "inferred", "cloud") and row["source"]
        assert 0 < float(row["confidence"]) <= 1
        if row["kind"] == "inferred":
            assert float(row["confidence"]) < 0.85
    for row in rows("zoom-ranges.csv"):
        ipaddress.ip_network(row["prefix"], strict=True)
        assert row["service"] in ("zoom", "phone", "cdn") and row["source"] and row["date"]


def test_every_aws_and_oracle_location_is_in_cloud_regions():
    known = {(r["cloud"].lower(), r["location"]) for r in rows("cloud-regions.csv")}
    aws = json.loads((DATA / "aws-ip-ranges.json").read_text())
    for p in aws["prefixes"] + aws["ipv6_prefixes"]:
        assert ("aws", p["network_border_group"]) in known, p
    oci = json.loads((DATA / "oracle-public_ip_ranges.json").read_text())
    for r in oci["regions"]:
        assert ("oci", r["region"]) in known, r["region"]


def test_site_codes_name_real_regions():
    for row in rows("site-codes.csv"):
        # Empty region: a site in a country without a Zoom region (London, Jeddah).
        assert row["region"] in CAT.codes or (row["region"] == "" and row["country"])
        assert row["kind"] in ("subdomain", "zc")


# What tools/build_data.py writes: config/data/ holds exactly these, plus its README and the ISO
# country list, which are written by hand.
BUILT = ("aws-ip-ranges.json", "oracle-public_ip_ranges.json", "cloud-regions.csv",
         "zoom-ranges.csv", "zoom-datacenters.csv", "site-codes.csv")


def _assert_same_as_shipped(out):
    assert sorted(p.name for p in out.iterdir()) == sorted(BUILT)
    for name in BUILT:
        assert (out / name).read_bytes() == (DATA / name).read_bytes(), name


def _fresh_clone(tmp_path: Path) -> Path:
    """What a clone holds for the build: the script, its in-repository inputs and config/data,
    in a directory with no ../shared beside it."""
    clone = tmp_path / "nest" / "clone"
    shutil.copytree(ROOT / "tools", clone / "tools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DATA, clone / "config" / "data")
    assert not (clone.parent / "shared").exists()
    return clone


def test_build_script_in_a_fresh_clone_reproduces_the_shipped_files(tmp_path):
    clone = _fresh_clone(tmp_path)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(clone / "tools" / "build_data.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    _assert_same_as_shipped(out)
    # and in place, over its own config/data: the same bytes again
    run = subprocess.run([sys.executable, str(clone / "tools" / "build_data.py")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for name in BUILT:
        assert (clone / "config" / "data" / name).read_bytes() == (DATA / name).read_bytes(), name


def test_data_update_from_a_mirror_of_the_shipped_sources_reproduces_the_shipped_data(tmp_path):
    from tests.data_mirror import Mirror, bundled_files

    root = tmp_path / "data"
    with Mirror(bundled_files()) as mirror:
        run = subprocess.run([str(Path(sys.executable).parent / "regionguard"), "data", "update",
                              "--mirror-base", mirror.base, "--data-dir", str(root)],
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    current = root / "current"
    for name in ("aws-ip-ranges.json", "oracle-public_ip_ranges.json", "cloud-regions.csv",
                 "site-codes.csv", "iso3166-alpha2.csv"):
        assert (current / name).read_bytes() == (DATA / name).read_bytes(), name

    def table(path, *columns):
        with open(path, newline="", encoding="utf-8") as f:
            return [tuple(r[c] for c in columns) for r in csv.DictReader(f)]
    assert sorted(table(current / "zoom-ranges.csv", "prefix", "service")) == \
        sorted(table(DATA / "zoom-ranges.csv", "prefix", "service"))
    # the cloud rows made again from the fetched files, row for row (the notes name the files
    # they were made from, which differ)
    every_but_note = ("prefix", "region", "country", "site", "kind", "confidence", "source", "date")
    assert table(current / "zoom-datacenters.csv", *every_but_note) == \
        table(DATA / "zoom-datacenters.csv", *every_but_note)


# No test builds from ../shared/data: a clone (CI) has none, so such a test would always skip
# there. The fresh-clone build above reproduces the shipped files from the repository's inputs,
# and tests/test_site_codes.py checks those inputs against the SHA-256 sums recorded in
# tools/data-inputs/README.md (the shared files' sums).
def test_build_script_reads_the_shared_data_beside_the_repository_by_default():
    import runpy

    script = runpy.run_path(str(ROOT / "tools" / "build_data.py"), run_name="build_data")
    assert script["DEFAULT_SHARED"] == (ROOT.parent / "shared" / "data").resolve()
    assert script["DEFAULT_OUT"] == ROOT / "config" / "data"
