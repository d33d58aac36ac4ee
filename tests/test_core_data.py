"""The bundled data is sound: every prefix parses, every cloud location has a row, every row says
where it came from, and the build script reproduces the shipped files."""

import csv
import ipaddress
import json
import subprocess
import sys

import pytest

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


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").is_dir(), reason="../shared/data not present")
def test_build_script_reproduces_the_shipped_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    for name in ("zoom-datacenters.csv", "zoom-ranges.csv", "cloud-regions.csv", "site-codes.csv"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
