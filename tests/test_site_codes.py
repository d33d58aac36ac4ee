"""Zoom site codes: every code in the bundled table cites a public source, real Zoom names found
in public material are placed at their site (or left unplaced when their code is not sourced),
and no labelled endpoint is ever placed in a wrong region by the full locator.

Fixtures (see tests/fixtures/README.md for provenance):
- zoom_hostnames.csv: concrete Zoom host names seen in public captures and code, each with its
  source, the region the hostname source must give (empty = must not place) and, where an
  independent label exists, the true region of the address the name resolved to.
- tools/data-inputs/zoom_crc_h323_ips_by_location.csv: Zoom's own location labels for CRC entry
  addresses (an input of tools/build_data.py, kept in the repository: tools/data-inputs/README.md
  records each input's SHA-256, checked here). When ../shared/data is present, its current copy's
  labels are checked too.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import re
from pathlib import Path

import pytest

from regionguard import Locator, load_catalogue, load_policy
from tests.conftest import CONFIG, ROOT

FIXTURES = Path(__file__).parent / "fixtures"
DATA = CONFIG / "data"
INPUTS = ROOT / "tools" / "data-inputs"
CRC = INPUTS / "zoom_crc_h323_ips_by_location.csv"
CAT = load_catalogue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


HOSTNAMES = read_csv(FIXTURES / "zoom_hostnames.csv")
SITE_CODES = read_csv(DATA / "site-codes.csv")


def crc_labels() -> list[tuple[str, str, str]]:
    """(ip, true region, where from) for every CRC row of the repository's copy (pinned by its
    SHA-256 below): never a file beside the checkout, which would make the cases differ between a
    developer's machine and CI."""
    labels = {}
    for row in read_csv(CRC):
        region = CAT.region_for_country(row["country_iso2"])
        labels[(row["ip"], region)] = f"{CRC.name}: {row['label_in_zoom_invitation']}"
    return [(ip, region, why) for (ip, region), why in sorted(labels.items())]


def name_labels() -> list[tuple[str, str, str]]:
    """(ip, true region, name) for fixture names whose address has an independent label."""
    return [(r["address"], r["address_region"], r["name"]) for r in HOSTNAMES
            if r["address"] and r["address_region"]]


@pytest.fixture(scope="module")
def locator() -> Locator:
    return Locator.for_policy(load_policy(CONFIG / "policy.yaml"))


# --- the table itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("row", SITE_CODES, ids=lambda r: f"{r['kind']}:{r['code']}")
def test_every_site_code_cites_its_source_and_date(row):
    assert row["source"].strip() and row["date"].strip(), row["code"]
    assert row["country"] and 0.5 <= float(row["confidence"]) <= 0.9
    # The region follows from the country (empty for a country without a Zoom region).
    assert row["region"] == (CAT.region_for_country(row["country"]) or "")


def test_unsourced_and_misleading_codes_stay_out():
    codes = {(r["kind"], r["code"]) for r in SITE_CODES}
    # No public source says where these are: the old analogies (ny, sj) and unseen subdomains.
    for code in ("nyc", "gru", "bom"):
        assert ("subdomain", code) not in codes
    for code in ("ny", "sj"):
        assert ("zc", code) not in codes
    # zoomca54150137226zc.zoom.us spells an AWS Tokyo address: `ca` is not Canada or California.
    assert ("zc", "ca") not in codes


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", HOSTNAMES, ids=lambda r: r["name"])
def test_zoom_names_are_placed_at_their_site_or_not_at_all(locator, row):
    loc = locator.locate(None, row["name"])
    if row["expected_country"]:
        assert loc.known, f"{row['name']} ({row['source']}) not placed"
        assert loc.chosen.source == "hostname"
        assert (loc.region or "", loc.country) == (row["expected_region"], row["expected_country"])
    else:
        assert not loc.known, f"{row['name']} placed by {loc.summary()} though its code is not sourced"


def test_a_site_code_answer_carries_its_citation(locator):
    ev = locator.locate(None, "zoomsjccv154mmr.sjc.zoom.us").chosen
    assert "ntop/nDPI" in ev.dataset and ev.dataset.startswith("site-codes.csv")
    assert ev.date and ev.matched == "*.sjc.zoom.us" and "San Jose" in ev.note


# --- labelled endpoints: never a wrong region ------------------------------------------------


@pytest.mark.parametrize("ip,region,why", crc_labels() + name_labels(), ids=lambda x: str(x)[:40])
def test_labelled_endpoint_is_placed_right_or_left_unknown(locator, ip, region, why):
    loc = locator.locate(ip)
    assert not loc.known or loc.region == region, f"{ip} ({why}) placed by {loc.summary()}"
    assert not loc.conflict


@pytest.mark.parametrize("row", [r for r in HOSTNAMES if r["address"] and r["address_region"]],
                         ids=lambda r: r["name"])
def test_a_name_and_its_address_never_disagree(locator, row):
    loc = locator.locate(row["address"], row["name"])
    assert not loc.conflict, loc.summary()
    assert not loc.known or loc.region == row["address_region"]


def test_no_bundled_block_contradicts_any_label():
    """Every row of zoom-datacenters.csv (labelled, inferred /19s and covering ranges, cloud)
    that holds a labelled address gives that address's region."""
    labels = [(ipaddress.ip_address(ip), region, why) for ip, region, why in crc_labels() + name_labels()]
    wrong = []
    for row in read_csv(DATA / "zoom-datacenters.csv"):
        net = ipaddress.ip_network(row["prefix"])
        for ip, region, why in labels:
            if ip in net and (row["region"] or None) != region:
                wrong.append(f"{row['prefix']} {row['kind']} says {row['region'] or 'no region'}, "
                             f"but {ip} is {region} ({why})")
    assert not wrong, "\n".join(wrong)


def _recorded_digests() -> dict[str, str]:
    """file name → SHA-256, from the table in tools/data-inputs/README.md."""
    table = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$",
                       (INPUTS / "README.md").read_text(encoding="utf-8"), re.M)
    return dict(table)


def test_the_repository_inputs_are_the_recorded_files():
    recorded = _recorded_digests()
    present = sorted(p.name for p in INPUTS.iterdir() if p.name != "README.md")
    assert sorted(recorded) == present and CRC.name in recorded
    for name, digest in recorded.items():
        assert hashlib.sha256((INPUTS / name).read_bytes()).hexdigest() == digest, name
