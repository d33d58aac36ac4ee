"""`regionguard coverage`: exact, address-weighted figures, checked against an independent
computation with netaddr IP sets (longest prefix within a source, precedence across sources,
min_confidence), on a small data set made here and on the bundled data."""

from __future__ import annotations

import bisect
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import netaddr
import pytest

from regionguard.core.locator import Locator
from regionguard.core.policy import load_policy
from regionguard.core.zoom import ZoomCatalogue
from regionguard.coverage import address_coverage, session_coverage

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"

ZOOM_RANGES = [("10.0.0.0/16", "zoom"), ("10.1.0.0/24", "zoom"), ("10.2.0.0/23", "cdn"),
               ("2001:db8::/32", "zoom"), ("2001:db9::/48", "zoom")]
# prefix, region, country, confidence
DATACENTERS = [("10.0.0.0/20", "DE", "DE", 0.95),
               ("10.0.4.0/24", "US", "US", 0.4),      # nested, below min_confidence: shadows DE
               ("10.1.0.128/25", "TY", "JP", 0.6),
               ("2001:db8:1::/48", "NL", "NL", 0.85),
               ("10.9.0.0/16", "US", "US", 0.95)]     # not Zoom's: never counted
AWS = [("10.0.4.0/22", "eu-west-1"),                  # IE: places 10.0.4.0/24; conflicts with DE
       ("10.1.0.0/24", "GLOBAL"),                     # anycast: no region
       ("10.2.0.0/24", "us-east-1"),
       ("2001:db9::/48", "eu-central-1")]
ORACLE = [("10.1.0.0/25", "eu-frankfurt-1")]


@pytest.fixture
def small(tmp_path, write_policy):
    base = tmp_path / "config"
    data = base / "data"
    data.mkdir(parents=True)
    shutil.copy(CONFIG / "zoom.yaml", base / "zoom.yaml")
    for name in ("site-codes.csv", "cloud-regions.csv"):
        shutil.copy(CONFIG / "data" / name, data / name)
    with open(data / "zoom-ranges.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prefix", "service", "source", "date"])
        w.writerows([p, s, "test", "2026-01-01"] for p, s in ZOOM_RANGES)
    with open(data / "zoom-datacenters.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prefix", "region", "country", "site", "kind", "confidence", "source", "date", "note"])
        w.writerows([p, r, c, "test", "labelled", conf, "test", "2026-01-01", ""]
                    for p, r, c, conf in DATACENTERS)
    aws = {"createDate": "2026-01-01-00-00-00",
           "prefixes": [{"ip_prefix": p, "region": g if g != "GLOBAL" else "us-east-1", "service": "EC2",
                         "network_border_group": g} for p, g in AWS if ":" not in p],
           "ipv6_prefixes": [{"ipv6_prefix": p, "region": g, "service": "EC2",
                              "network_border_group": g} for p, g in AWS if ":" in p]}
    (data / "aws-ip-ranges.json").write_text(json.dumps(aws))
    oracle = {"last_updated_timestamp": "2026-01-01T00:00:00",
              "regions": [{"region": r, "cidrs": [{"cidr": p, "tags": ["OCI"]}]} for p, r in ORACLE]}
    (data / "oracle-public_ip_ranges.json").write_text(json.dumps(oracle))
    policy = write_policy("""
        version: 1
        account: {type: paid, default_region: US}
    """)
    return {"zoom": ZoomCatalogue.load(base), "data": data, "policy": load_policy(policy)}


# --- the independent computation --------------------------------------------------------------


def source_sets(rows, minimum: float) -> dict[str, netaddr.IPSet]:
    """region → addresses one source places there at `minimum`: the longest prefix answers
    (later rows win among equal prefixes); an answer below `minimum` places nothing."""
    placed: dict[str, netaddr.IPSet] = {}
    order = sorted(range(len(rows)), key=lambda i: (netaddr.IPNetwork(rows[i][0]).prefixlen, i))
    for i in order:
        prefix, region, conf = rows[i]
        net = netaddr.IPSet([prefix])
        for s in placed.values():
            s.remove(netaddr.IPNetwork(prefix))
        if conf >= minimum and region is not None:
            placed.setdefault(region, netaddr.IPSet()).update(net)
    return placed


def expected(zoom_prefixes, sources, minimum: float) -> dict:
    """sources: [(name, rows)] in precedence order → by family: total, placed, by source/region,
    conflict."""
    out = {}
    for fam, version in (("ipv4", 4), ("ipv6", 6)):
        zoom = netaddr.IPSet(p for p in zoom_prefixes if netaddr.IPNetwork(p).version == version)
        remaining = netaddr.IPSet(zoom)
        by_source: dict[str, int] = {}
        by_region: dict[str, int] = {}
        trusted: dict[str, netaddr.IPSet] = {}
        for name, rows in sources:
            sets = source_sets(rows, minimum)
            for region, s in sets.items():
                got = s & remaining
                if got.size:
                    by_source[name] = by_source.get(name, 0) + got.size
                    by_region[region] = by_region.get(region, 0) + got.size
                trusted.setdefault(region, netaddr.IPSet()).update(s & zoom)
            for s in sets.values():
                remaining -= s
        conflict = netaddr.IPSet()
        regions = sorted(trusted)
        for i, a in enumerate(regions):
            for b in regions[i + 1:]:
                conflict |= trusted[a] & trusted[b]
        out[fam] = {"total": zoom.size, "placed": zoom.size - remaining.size,
                    "by_source": by_source, "by_region": by_region, "conflict": conflict.size}
    return out


def overlapping(prefixes):
    """A test: does this prefix overlap any of these? (Rows that do not can be left out of the
    IP-set computation, which is slow on the ~10,000 AWS prefixes.)"""
    spans = sorted((n.version, n.first, n.last) for n in netaddr.IPSet(prefixes).iter_cidrs())
    keys = [(v, a) for v, a, _ in spans]

    def test(prefix: str) -> bool:
        n = netaddr.IPNetwork(prefix)
        i = bisect.bisect_right(keys, (n.version, n.last)) - 1
        return i >= 0 and spans[i][0] == n.version and spans[i][2] >= n.first
    return test


def _small_sources():
    country_region = {"IE": "IE", "US": "US", "DE": "DE"}
    aws_country = {"eu-west-1": "IE", "us-east-1": "US", "eu-central-1": "DE"}
    return [("zoom-dc", [(p, r, c) for p, r, _, c in DATACENTERS]),
            ("cloud", [(p, country_region[aws_country[g]] if g != "GLOBAL" else None, 0.9) for p, g in AWS]),
            ("cloud", [(p, "DE", 0.9) for p, _ in ORACLE])]


def _got(cov, fam: str) -> dict:
    f = cov.families[fam]
    return {"total": f.total, "placed": f.placed, "by_source": dict(f.by_source),
            "by_region": dict(f.by_region), "conflict": f.conflict}


def test_small_data_set_matches_an_independent_computation(small):
    cov = address_coverage(small["policy"], small["zoom"], small["data"])
    want = expected([p for p, _ in ZOOM_RANGES], _small_sources(), 0.5)
    for fam in ("ipv4", "ipv6"):
        assert _got(cov, fam) == want[fam], fam
    # And by hand, so the independent computation is itself checked:
    v4 = cov.families["ipv4"]
    assert v4.total == 65536 + 256 + 512
    assert dict(v4.by_region) == {"DE": 3840 + 128, "TY": 128, "IE": 256, "US": 256}
    assert dict(v4.by_source) == {"zoom-dc": 3840 + 128, "cloud": 256 + 256 + 128}
    assert v4.conflict == 768                        # 10.0.5.0-10.0.7.255: DE (zoom-dc) vs IE (AWS)
    assert v4.by_service["cdn"] == [256, 512]
    v6 = cov.families["ipv6"]
    assert v6.total == 2**96 + 2**80
    assert dict(v6.by_region) == {"NL": 2**80, "DE": 2**80}
    assert cov.exact


def test_min_confidence_changes_what_counts(small, write_policy):
    policy = load_policy(write_policy("""
        version: 1
        account: {type: paid, default_region: US}
        evidence: {min_confidence: 0.3, precedence: [override, zoom-dc, cloud, hostname]}
    """))
    cov = address_coverage(policy, small["zoom"], small["data"])
    want = expected([p for p, _ in ZOOM_RANGES], _small_sources(), 0.3)
    assert _got(cov, "ipv4") == want["ipv4"]
    assert cov.families["ipv4"].by_region["US"] == 256 + 256      # the 0.4 row now places


def test_a_per_address_source_that_may_decide_makes_it_a_lower_bound(small, write_policy):
    policy = load_policy(write_policy("""
        version: 1
        account: {type: paid, default_region: US}
        evidence: {min_confidence: 0.3}
    """))
    cov = address_coverage(policy, small["zoom"], small["data"])
    assert cov.not_counted == ["fallback"] and not cov.exact
    assert address_coverage(small["policy"], small["zoom"], small["data"]).not_counted == []


def test_bundled_data_matches_an_independent_computation():
    """The figures for the bundled data and default policy, by netaddr from the data files."""
    policy = load_policy(CONFIG / "policy.yaml")
    cov = address_coverage(policy)
    data = CONFIG / "data"
    with open(data / "zoom-ranges.csv", newline="") as f:
        zoom = [r["prefix"] for r in csv.DictReader(f)]
    with open(data / "zoom-datacenters.csv", newline="") as f:
        dc = [(r["prefix"], r["region"] or (f"none ({r['country']})" if r["country"] else None),
               float(r["confidence"])) for r in csv.DictReader(f)]
    with open(data / "cloud-regions.csv", newline="") as f:
        where = {(r["cloud"].lower(), r["location"]): r["country"] for r in csv.DictReader(f)}

    def label(country: str | None) -> str | None:
        if not country:
            return None
        return policy.catalogue.region_for_country(country) or f"none ({country})"
    doc = json.loads((data / "aws-ip-ranges.json").read_text())
    aws: dict[str, str] = {}
    for e in doc["prefixes"] + doc["ipv6_prefixes"]:
        aws.setdefault(e.get("ip_prefix") or e["ipv6_prefix"], e["network_border_group"])
    aws_rows = [(p, None if g == "GLOBAL" else label(where.get(("aws", g))), 0.9) for p, g in aws.items()]
    doc = json.loads((data / "oracle-public_ip_ranges.json").read_text())
    oci_rows = [(c["cidr"], label(where.get(("oci", r["region"]))), 0.9)
                for r in doc["regions"] for c in r["cidrs"]]
    near = overlapping(zoom)
    sources = [("zoom-dc", dc), ("cloud", aws_rows), ("cloud", oci_rows)]
    want = expected(zoom, [(name, [r for r in rows if near(r[0])]) for name, rows in sources], 0.5)
    for fam in ("ipv4", "ipv6"):
        got = _got(cov, fam)
        del got["conflict"], want[fam]["conflict"]   # conflicts also count no-region answers; not here
        assert got == want[fam], fam
    print("bundled IPv4 placed share", cov.families["ipv4"].placed / cov.families["ipv4"].total)


def test_sessions_count_decided_zoom_connections_by_rule(tmp_path):
    policy = load_policy(CONFIG / "policy.yaml")
    locator = Locator.for_policy(policy, log_problems=False)
    placed = "159.124.47.249"                      # labelled by Zoom: DE
    assert locator.locate(placed).region == "DE"
    unplaced = next(str(netaddr.IPAddress((s & 0xFFFFFFFF) + 5)) for s, e, r
                    in ZoomCatalogue.load().ranges.intervals()
                    if s >> 32 == 0xFFFF and r.service == "zoom" and e - s > 8
                    and locator.locate(str(netaddr.IPAddress((s & 0xFFFFFFFF) + 5))).chosen is None)
    log = tmp_path / "audit.jsonl"
    lines = [{"time": "2026-01-01T00:00:00Z", "address": placed, "port": 8801, "transport": "udp"}] * 3
    lines += [{"time": "2026-01-01T00:00:01Z", "address": unplaced, "port": 8801, "transport": "udp"}]
    lines += [{"time": "2026-01-01T00:00:02Z", "address": "192.0.2.1", "port": 443, "transport": "tcp"}]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    s = session_coverage([log], policy)
    assert (s.connections, s.decided, s.distinct, s.distinct_decided) == (4, 3, 2, 1)
    assert dict(s.by_rule) == {"region-allowed": 3, "unknown-region": 1}
    assert s.problem_count == 1

    r = subprocess.run([sys.executable, "-m", "regionguard", "coverage", "--json", str(log)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 4, r.stderr
    doc = json.loads(r.stdout)
    assert doc["sessions"]["decided"] == 3 and doc["sessions"]["zoom_connections"] == 4
    assert doc["address_space"]["ipv4"]["total_addresses"] == address_coverage(policy).families["ipv4"].total
    text = subprocess.run([sys.executable, "-m", "regionguard", "coverage"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert text.returncode == 0 and "IPv4:" in text.stdout and "by source: zoom-dc" in text.stdout
