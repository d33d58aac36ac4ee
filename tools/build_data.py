#!/usr/bin/env python3
"""Build regionguard's bundled data files (config/data/) from public facts.

Stdlib only.  Deterministic: every CSV is sorted and written with "\\n" line
endings, so running the script twice gives byte-identical output.

Inputs (defaults are the files in the shared data directory, see
../shared/data/README.md for their upstream source and date; a file not there is taken from
the repository's own copies, so a fresh clone rebuilds config/data with no other input:
tools/data-inputs/ for the small Zoom files, config/data/ for the verbatim AWS and Oracle
files; `regionguard data update` fetches fresh AWS, Oracle and Zoom files at run time):

  AWS ip-ranges.json            --aws FILE      (https://ip-ranges.amazonaws.com/ip-ranges.json)
  Oracle public_ip_ranges.json  --oracle FILE   (https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json)
  Zoom.txt                      --zoom-txt FILE (https://assets.zoom.us/docs/ipranges/Zoom.txt)
  union of Zoom range files     --zoom-v4-union FILE, --zoom-v6-union FILE
  freshly downloaded Zoom files --zoom-dir DIR  (the 12 files listed in
                                zoom-ipranges-file-urls_elico.txt; replaces the
                                2024 union; ZoomPhone* -> phone, ZoomCDN* -> cdn)

Dates are taken from the files themselves where they carry one (AWS
createDate, Oracle last_updated_timestamp), else from a YYYY-MM-DD in the file
name, else from the matching --*-date flag (required when neither exists).

Usage:
  python tools/build_data.py [--shared DIR] [--out config/data]
  python tools/build_data.py --aws ~/Downloads/ip-ranges.json \\
      --oracle ~/Downloads/public_ip_ranges.json \\
      --zoom-dir ~/Downloads/zoom-ipranges --zoom-date 2026-09-01
"""
from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import json
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = (REPO_ROOT / ".." / "shared" / "data").resolve()
DEFAULT_OUT = REPO_ROOT / "config" / "data"
IN_REPO_INPUTS = REPO_ROOT / "tools" / "data-inputs"   # byte-for-byte copies of shared files

sys.path.insert(0, str(REPO_ROOT))   # this clone's regionguard, installed or not
from regionguard.data.cloudmap import cloud_row  # noqa: E402 - after the path it needs

# Default file names in the shared directory.
F_AWS = "aws-ip-ranges_2026-08-22.json"
F_OCI = "oracle-oci-public_ip_ranges_2025-07-31.json"
F_ZOOM_TXT = "Zoom.txt_mirror_sgawa_2026-06-06.txt"
F_V4_UNION = "zoom-ipv4_elico_2024-07-18_cleaned.txt"
F_V6_UNION = "zoom-ipv6_elico_2024-07-18_cleaned.txt"
F_SERVICES = "zoom_ips_by_service_rezmoss.csv"
F_CRC = "zoom_crc_h323_ips_by_location.csv"
F_DERIVED = "zoom_cloud_ranges_region_mapping_DERIVED.csv"

# Output file names.
O_AWS = "aws-ip-ranges.json"
O_OCI = "oracle-public_ip_ranges.json"
# The verbatim copies in config/data stand in for the two big shared files in a clone.
IN_REPO_COPIES = {F_AWS: DEFAULT_OUT / O_AWS, F_OCI: DEFAULT_OUT / O_OCI}


def default_input(shared: Path, name: str) -> Path:
    """SHARED/name, else the repository's copy of it (tools/data-inputs, config/data)."""
    for path in (shared / name, IN_REPO_INPUTS / name, IN_REPO_COPIES.get(name)):
        if path is not None and path.exists():
            return path
    return shared / name
O_CLOUD_REGIONS = "cloud-regions.csv"
O_DATACENTERS = "zoom-datacenters.csv"
O_RANGES = "zoom-ranges.csv"
O_SITE_CODES = "site-codes.csv"

# ---------------------------------------------------------------------------
# Zoom data-center regions
# ---------------------------------------------------------------------------
ZOOM_REGIONS = ("AU", "CA", "CN", "DE", "HK", "IE", "IN", "LA", "MX", "NL", "SG", "TY", "US")
COUNTRY_TO_ZOOM_REGION = {
    "US": "US", "CA": "CA", "DE": "DE", "NL": "NL", "IE": "IE", "IN": "IN",
    "AU": "AU", "CN": "CN", "BR": "LA", "MX": "MX", "JP": "TY", "HK": "HK",
    "SG": "SG",
}


def zoom_region(country: str) -> str:
    """Zoom region of a country; '' when that country has no Zoom data center."""
    return COUNTRY_TO_ZOOM_REGION.get(country, "")


# ---------------------------------------------------------------------------
# Cloud region locations (knowledge, not in the shared files)
# ---------------------------------------------------------------------------
# AWS regions: code -> (country ISO-3166 alpha-2, city/area, note)
AWS_REGIONS = {
    "af-south-1": ("ZA", "Cape Town", ""),
    "ap-east-1": ("HK", "Hong Kong", ""),
    "ap-east-2": ("TW", "Taipei", ""),
    "ap-northeast-1": ("JP", "Tokyo", ""),
    "ap-northeast-2": ("KR", "Seoul", ""),
    "ap-northeast-3": ("JP", "Osaka", ""),
    "ap-south-1": ("IN", "Mumbai", ""),
    "ap-south-2": ("IN", "Hyderabad", ""),
    "ap-southeast-1": ("SG", "Singapore", ""),
    "ap-southeast-2": ("AU", "Sydney", ""),
    "ap-southeast-3": ("ID", "Jakarta", ""),
    "ap-southeast-4": ("AU", "Melbourne", ""),
    "ap-southeast-5": ("MY", "Kuala Lumpur", "Asia Pacific (Malaysia)"),
    "ap-southeast-6": ("NZ", "Auckland", "Asia Pacific (New Zealand)"),
    "ap-southeast-7": ("TH", "Bangkok", "Asia Pacific (Thailand)"),
    "ca-central-1": ("CA", "Montreal", ""),
    "ca-west-1": ("CA", "Calgary", ""),
    "cn-north-1": ("CN", "Beijing", "AWS China partition"),
    "cn-northwest-1": ("CN", "Ningxia", "AWS China partition"),
    "eu-central-1": ("DE", "Frankfurt", ""),
    "eu-central-2": ("CH", "Zurich", ""),
    "eu-north-1": ("SE", "Stockholm", ""),
    "eu-south-1": ("IT", "Milan", ""),
    "eu-south-2": ("ES", "Aragón", "Europe (Spain)"),
    "eu-west-1": ("IE", "Dublin", ""),
    "eu-west-2": ("GB", "London", ""),
    "eu-west-3": ("FR", "Paris", ""),
    "eusc-de-east-1": ("DE", "Brandenburg", "AWS European Sovereign Cloud"),
    "il-central-1": ("IL", "Tel Aviv", ""),
    "me-central-1": ("AE", "UAE", ""),
    "me-central-2": ("SA", "Saudi Arabia", ""),
    "me-south-1": ("BH", "Bahrain", ""),
    "mx-central-1": ("MX", "Querétaro", "Mexico (Central)"),
    "sa-east-1": ("BR", "São Paulo", ""),
    "us-east-1": ("US", "N. Virginia", ""),
    "us-east-2": ("US", "Ohio", ""),
    "us-west-1": ("US", "N. California", ""),
    "us-west-2": ("US", "Oregon", ""),
    "us-gov-east-1": ("US", "GovCloud (US-East)", "AWS GovCloud (US)"),
    "us-gov-west-1": ("US", "GovCloud (US-West)", "AWS GovCloud (US)"),
    "us-south-1": ("US", "", "UNCERTAIN: region not documented at data date; 'us-' prefix implies US, city unknown"),
    "me-west-1": ("", "", "UNKNOWN location: region not documented at data date ('me-' = Middle East, country unknown)"),
    "sa-west-1": ("", "", "UNKNOWN location: region not documented at data date ('sa-' = South America, country unknown; possibly Chile)"),
}

# Metro codes used in AWS Local Zone / Wavelength Zone names: code -> (country, city, note)
AWS_METRO_CODES = {
    # United States
    "atl": ("US", "Atlanta", ""), "bna": ("US", "Nashville", ""), "bos": ("US", "Boston", ""),
    "chi": ("US", "Chicago", ""), "clt": ("US", "Charlotte", ""), "den": ("US", "Denver", ""),
    "dfw": ("US", "Dallas", ""), "dtw": ("US", "Detroit", ""), "hnl": ("US", "Honolulu", ""),
    "hou": ("US", "Houston", ""), "iah": ("US", "Houston", ""), "kc": ("US", "Kansas City", ""),
    "mci": ("US", "Kansas City", ""), "las": ("US", "Las Vegas", ""), "lax": ("US", "Los Angeles", ""),
    "mia": ("US", "Miami", ""), "msp": ("US", "Minneapolis", ""), "nyc": ("US", "New York", ""),
    "pdx": ("US", "Portland", ""), "phl": ("US", "Philadelphia", ""), "phx": ("US", "Phoenix", ""),
    "sea": ("US", "Seattle", ""), "sfo": ("US", "San Francisco", ""), "tpa": ("US", "Tampa", ""),
    "was": ("US", "Washington DC", ""),
    "jan": ("US", "Jackson MS", "UNCERTAIN: city inferred from code 'jan' (Jackson, Mississippi airport code)"),
    "foe": ("US", "", "UNCERTAIN: code 'foe' not identified; US assumed (us-east-1 Wavelength zones are Verizon US)"),
    # Americas outside the US
    "qro": ("MX", "Querétaro", ""), "bue": ("AR", "Buenos Aires", ""), "lim": ("PE", "Lima", ""),
    "scl": ("CL", "Santiago", ""), "bog": ("CO", "Bogotá", ""), "yto": ("CA", "Toronto", ""),
    "yvr": ("CA", "Vancouver", ""),
    # Asia Pacific
    "del": ("IN", "Delhi", ""), "ccu": ("IN", "Kolkata", ""), "tpe": ("TW", "Taipei", ""),
    "per": ("AU", "Perth", ""), "akl": ("NZ", "Auckland", ""), "bkk": ("TH", "Bangkok", ""),
    "mnl": ("PH", "Manila", ""), "han": ("VN", "Hanoi", ""), "nrt": ("JP", "Tokyo", ""),
    "kix": ("JP", "Osaka", ""), "cjj": ("KR", "Daejeon", "SK Telecom Wavelength zone"),
    "sel": ("KR", "Seoul", ""), "sin": ("SG", "Singapore", ""),
    # Europe, Middle East, Africa
    "ham": ("DE", "Hamburg", ""), "ber": ("DE", "Berlin", ""), "dtm": ("DE", "Dortmund", ""),
    "muc": ("DE", "Munich", ""), "waw": ("PL", "Warsaw", ""), "cph": ("DK", "Copenhagen", ""),
    "hel": ("FI", "Helsinki", ""), "ath": ("GR", "Athens", ""), "ist": ("TR", "Istanbul", ""),
    "lon": ("GB", "London", ""), "man": ("GB", "Manchester", ""), "mct": ("OM", "Muscat", ""),
    "lag": ("NG", "Lagos", ""), "los": ("NG", "Lagos", ""),
}

# Oracle Cloud (OCI) regions: name -> (country, city, note)
OCI_REGIONS = {
    "af-johannesburg-1": ("ZA", "Johannesburg", ""),
    "ap-batam-1": ("ID", "Batam", ""),
    "ap-chuncheon-1": ("KR", "Chuncheon", ""),
    "ap-hyderabad-1": ("IN", "Hyderabad", ""),
    "ap-melbourne-1": ("AU", "Melbourne", ""),
    "ap-mumbai-1": ("IN", "Mumbai", ""),
    "ap-osaka-1": ("JP", "Osaka", ""),
    "ap-seoul-1": ("KR", "Seoul", ""),
    "ap-singapore-1": ("SG", "Singapore", ""),
    "ap-singapore-2": ("SG", "Singapore", ""),
    "ap-sydney-1": ("AU", "Sydney", ""),
    "ap-tokyo-1": ("JP", "Tokyo", ""),
    "ca-montreal-1": ("CA", "Montreal", ""),
    "ca-toronto-1": ("CA", "Toronto", ""),
    "eu-amsterdam-1": ("NL", "Amsterdam", ""),
    "eu-dublin-3": ("IE", "Dublin", ""),
    "eu-frankfurt-1": ("DE", "Frankfurt", ""),
    "eu-jovanovac-1": ("RS", "Jovanovac", "Serbia"),
    "eu-madrid-1": ("ES", "Madrid", ""),
    "eu-marseille-1": ("FR", "Marseille", ""),
    "eu-milan-1": ("IT", "Milan", ""),
    "eu-paris-1": ("FR", "Paris", ""),
    "eu-stockholm-1": ("SE", "Stockholm", ""),
    "eu-zurich-1": ("CH", "Zurich", ""),
    "il-jerusalem-1": ("IL", "Jerusalem", ""),
    "me-abudhabi-1": ("AE", "Abu Dhabi", ""),
    "me-dubai-1": ("AE", "Dubai", ""),
    "me-jeddah-1": ("SA", "Jeddah", ""),
    "me-riyadh-1": ("SA", "Riyadh", ""),
    "mx-monterrey-1": ("MX", "Monterrey", ""),
    "mx-queretaro-1": ("MX", "Querétaro", ""),
    "sa-bogota-1": ("CO", "Bogotá", ""),
    "sa-santiago-1": ("CL", "Santiago", ""),
    "sa-saopaulo-1": ("BR", "São Paulo", ""),
    "sa-valparaiso-1": ("CL", "Valparaíso", ""),
    "sa-vinhedo-1": ("BR", "Vinhedo", ""),
    "uk-cardiff-1": ("GB", "Cardiff", "UK West (Newport)"),
    "uk-london-1": ("GB", "London", ""),
    "us-abilene-1": ("US", "Abilene TX", ""),
    "us-ashburn-1": ("US", "Ashburn", ""),
    "us-boardman-1": ("US", "Boardman OR", ""),
    "us-chicago-1": ("US", "Chicago", ""),
    "us-dallas-1": ("US", "Dallas", ""),
    "us-desmoines-1": ("US", "Des Moines", ""),
    "us-phoenix-1": ("US", "Phoenix", ""),
    "us-quincy-1": ("US", "Quincy WA", ""),
    "us-saltlake-2": ("US", "Salt Lake City", ""),
    "us-sanjose-1": ("US", "San Jose", ""),
}

# Local Zone:       <parent-region>-<metro>-<n>[a-z]   e.g. us-east-1-bos-1, us-west-2-las-1b
# Wavelength Zone:  <parent-region>-wl<n>-<metro>-wlz-<n>  e.g. us-east-1-wl1-bos-wlz-1
# Other wlz form:   <parent-region>-<metro>-wlz-<n>     e.g. us-east-1-foe-wlz-1
# Dedicated LZ:     <parent-region>-<tag>gov-<metro>-<n>  e.g. ap-southeast-1-sggov-sin-1a
RE_REGION = re.compile(r"^([a-z]+(?:-[a-z]+)*-\d+)")
RE_WAVELENGTH = re.compile(r"^(?P<parent>.+?-\d+)-wl\d+-(?P<metro>[a-z]+)-wlz-\d+$")
RE_WLZ_OTHER = re.compile(r"^(?P<parent>.+?-\d+)-(?P<metro>[a-z]+)-wlz-\d+$")
RE_DEDICATED = re.compile(r"^(?P<parent>.+?-\d+)-(?P<tag>[a-z]+gov)-(?P<metro>[a-z]+)-\d+[a-z]?$")
RE_LOCAL_ZONE = re.compile(r"^(?P<parent>.+?-\d+)-(?P<metro>[a-z]+)-\d+[a-z]?$")


def aws_location(name: str) -> tuple[str, str, str]:
    """(country, city, note) for an AWS region or network_border_group."""
    if name == "GLOBAL":
        return ("", "", "anycast/global (CloudFront, Global Accelerator, Route 53 ...): no single location")
    if name in AWS_REGIONS:
        country, city, note = AWS_REGIONS[name]
        return (country, city, "; ".join(x for x in ("region", note) if x))
    for regex, kind in ((RE_WAVELENGTH, "Wavelength Zone"), (RE_WLZ_OTHER, "Wavelength-type zone"),
                        (RE_DEDICATED, "dedicated Local Zone"), (RE_LOCAL_ZONE, "Local Zone")):
        m = regex.match(name)
        if m and m.group("parent") in AWS_REGIONS:
            parent = m.group("parent")
            metro = m.group("metro")
            if metro in AWS_METRO_CODES:
                country, city, note = AWS_METRO_CODES[metro]
                base = f"{kind} (parent region {parent}; metro code {metro})"
                return (country, city, "; ".join(x for x in (base, note) if x))
            return ("", "", f"UNKNOWN location: {kind} metro code '{metro}' not in tools/build_data.py (parent {parent})")
    return ("", "", "UNKNOWN location: not in tools/build_data.py")


def oci_location(name: str) -> tuple[str, str, str]:
    if name in OCI_REGIONS:
        country, city, note = OCI_REGIONS[name]
        return (country, city, "; ".join(x for x in ("region", note) if x))
    return ("", "", "UNKNOWN location: OCI region not in tools/build_data.py")


# ---------------------------------------------------------------------------
# Site codes in Zoom host names.  Every code needs a public source that shows
# the code in a real Zoom name AND what place it stands for; a code whose
# meaning cannot be sourced stays out (a wrong site code is worse than none).
# ---------------------------------------------------------------------------
# nDPI's test capture of a Zoom desktop client (certificate valid 2019-2021):
# DNS answers and SNI zoomam104zc/zoomam105zc.zoom.us -> 213.19.144.104/.105 and
# zoomfr84zc/zoomfr85zc.zoom.us -> 213.244.140.84/.85.  Zoom's own CRC labels put
# 213.19.144.110 at "Amsterdam Netherlands" and 213.244.140.110 at "Germany": the
# same /24s, so `am` is Amsterdam and `fr` is Frankfurt/Germany (not France).
SRC_NDPI_ZOOM = ("github ntop/nDPI tests/cfgs/default/result/zoom.pcap.out "
                 "@ 0110623b4ed94e49f2821073146d705856ed149f")
# nDPI's second Zoom capture: SNI zoomsjccv154mmr.sjc.zoom.us -> 144.195.73.154,
# served with Zoom's certificate "CN=*.sjc.zoom.us, L=San Jose, ST=California"
# (valid 2021-04-13 .. 2022-04-20): Zoom itself says sjc is San Jose.
SRC_NDPI_ZOOM2 = ("github ntop/nDPI tests/cfgs/default/result/zoom2.pcap.out "
                  "@ 03784a485e7d1619ee3c3763a5f4397bb3c8d26d")
# Zoom's own Meeting SDK (web) demo form in Zoom's GitHub repository offers the web
# client relays `rwc<SITE>.<SITE>.zoom.us`, each labelled with its city in Chinese,
# e.g. "rwciad.iad.zoom.us-美国-华盛顿(IAD)" (SDK versions up to 3.14.0: 2025).
SRC_RWC_LIST = ("github zoom/videosdk-ui-toolkit-web src/demo/meetingsdk/NavMeetingSDK.tsx "
                "@ 4e59fc9123028429596a9b40c20dc75c548206da (option list 'meeting-rwc')")
# Self-describing names (the name spells its own address) seen in public code,
# cited as corroboration: zoomiad206247100214rwg.iad.zoom.us (index id
# 59262361039) and zoomiad20624799165rwg.iad.zoom.us (index id 70886358385)
# sit in 206.247.0.0/16, where Zoom labels 206.247.11.121 "US East".
SRC_IAD_NAMES = ("names zoomiad206247100214rwg.iad.zoom.us / zoomiad20624799165rwg.iad.zoom.us "
                 "(stored code index ids 59262361039, 70886358385) in 206.247.0.0/16 where "
                 "zoom_crc_h323_ips_by_location.csv S8 labels 206.247.11.121 US East")
SRC_CRC = "zoom_crc_h323_ips_by_location.csv"

SITE_CODES = [
    # code, kind, country, city, confidence, source, date, note
    ("sjc", "subdomain", "US", "San Jose", "0.8", f"{SRC_NDPI_ZOOM2}; {SRC_RWC_LIST}", "2021-04-13",
     "Zoom's own certificate for *.sjc.zoom.us names San Jose; rwc list label 美国-圣何塞(SJC)"),
    ("iad", "subdomain", "US", "Washington DC (Dulles)", "0.8", f"{SRC_RWC_LIST}; {SRC_IAD_NAMES}", "2025",
     "rwc list label 美国-华盛顿(IAD); iad names spell addresses in 206.247.0.0/16 (Zoom: US East)"),
    ("yyz", "subdomain", "CA", "Toronto", "0.7", SRC_RWC_LIST, "2025", "rwc list label 加拿大-多伦多(YYZ)"),
    ("yvr", "subdomain", "CA", "Vancouver", "0.7", SRC_RWC_LIST, "2025", "rwc list label 加拿大-温哥华(YVR)"),
    ("syd", "subdomain", "AU", "Sydney", "0.7", SRC_RWC_LIST, "2025", "rwc list label 澳大利亚-悉尼(SYD)"),
    ("mel", "subdomain", "AU", "Melbourne", "0.7", SRC_RWC_LIST, "2025", "rwc list label 澳大利亚-墨尔本(MEL)"),
    ("hkg", "subdomain", "HK", "Hong Kong", "0.7", SRC_RWC_LIST, "2025", "rwc list label 香港"),
    ("nrt", "subdomain", "JP", "Tokyo", "0.7", SRC_RWC_LIST, "2025", "rwc list label 东京(NRT)"),
    ("sin", "subdomain", "SG", "Singapore", "0.7", SRC_RWC_LIST, "2025", "rwc list label 新加坡(SIN)"),
    ("fra", "subdomain", "DE", "Frankfurt", "0.7", SRC_RWC_LIST, "2025", "rwc list label 欧洲-德国-法兰克福(FRA)"),
    ("ams", "subdomain", "NL", "Amsterdam", "0.7", SRC_RWC_LIST, "2025", "rwc list label 荷兰-阿姆斯特丹(AMS)"),
    # Sites in countries without a Zoom data-center region: placed in the country, no region.
    ("lhr", "subdomain", "GB", "London", "0.7", SRC_RWC_LIST, "2025", "rwc list label 英国-伦敦(LHR)"),
    ("jed", "subdomain", "SA", "Jeddah", "0.7", SRC_RWC_LIST, "2025", "rwc list label 沙特-吉达(JED)"),
    ("ruh", "subdomain", "SA", "Riyadh", "0.7", SRC_RWC_LIST, "2025", "rwc list label 沙特-利雅得(RUH)"),
    ("ksa", "subdomain", "SA", "", "0.7", SRC_RWC_LIST, "2025",
     "rwc list label 沙特 (Saudi Arabia, city not given)"),
    ("am", "zc", "NL", "Amsterdam", "0.7", f"{SRC_NDPI_ZOOM}; {SRC_CRC} 213.19.144.110", "2020",
     "zoomam104zc.zoom.us -> 213.19.144.104, same /24 as Zoom-labelled Amsterdam 213.19.144.110"),
    ("fr", "zc", "DE", "Frankfurt", "0.7", f"{SRC_NDPI_ZOOM}; {SRC_CRC} 213.244.140.110", "2020",
     "zoomfr84zc.zoom.us -> 213.244.140.84, same /24 as Zoom-labelled Germany 213.244.140.110 (fr is not France)"),
]
# Rejected (see config/data/README.md): nyc gru bom subdomains and the ny sj zone-controller
# codes had no source; `ca` in zoomca54150137226zc.zoom.us is not a place (the name spells
# 54.150.137.226, AWS Tokyo); dv, frn: city not sourced; cloud: not a site; tj: zoom.com.cn rule.

# ---------------------------------------------------------------------------
# CRC invitation sources (dates from shared/data/README.md).  None = undated;
# approximate dates are not used as the row date but mentioned in the note.
# ---------------------------------------------------------------------------
CRC_SOURCE_DATES = {
    "S1": ("2018-11-20", "PATRIC3/p3_docs webinar page"),
    "S2": (None, "University of Idaho course page (~2020)"),
    "S3": ("2020-11-20", "WormBase webinar mail script"),
    "S4": ("2021-02-26", "WormBase webinar mail script"),
    "S5": ("2021-03-22", "WormBase webinar mail script"),
    "S6": (None, "HKUST invitation (2021 or later, undated)"),
    "S8": ("2025-07-15", "e-mail dated 2025-07-15"),
}
GEN_NEW = "2025 invitation"
GEN_OLD = "2018-2021 invitations"
CONF_LABELLED_NEW = "0.95"
CONF_LABELLED_OLD = "0.85"
CONF_INFERRED = "0.6"
# In the 2025 list each CRC site sits in its own /19 inside these Zoom blocks.
SITE_PER_19_BLOCKS = ("159.124.0.0/16", "170.114.0.0/16")
# Largest covering Zoom.txt range that may be inferred as one site (needs all
# labelled addresses in it to agree).  /16 blocks are never inferred.
MAX_INFER_BLOCK_PREFIXLEN = 19


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
RE_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


def die(msg: str) -> None:
    print(f"build_data: error: {msg}", file=sys.stderr)
    sys.exit(2)


def warn(msg: str) -> None:
    print(f"build_data: warning: {msg}", file=sys.stderr)


def date_from_name(path: Path, override: str | None, what: str) -> str:
    if override:
        return override
    m = RE_DATE.search(path.name)
    if m:
        return m.group(1)
    die(f"cannot tell the date of {what} ({path}); pass it with the matching --*-date flag")
    return ""


def net(text: str, where: str, bad: list[str]) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        bad.append(f"{where}: {text!r}: {exc}")
        return None


def netkey(n) -> tuple:
    return (n.version, int(n.network_address), n.prefixlen)


def read_cidr_lines(path: Path, bad: list[str]) -> list:
    out = []
    # split() rather than lines: robust to missing trailing newline and CRLF
    for tok in path.read_text(encoding="utf-8").split():
        if tok.startswith("#"):
            continue
        n = net(tok, path.name, bad)
        if n is not None:
            out.append(n)
    return out


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")


class PrefixIndex:
    """Longest-prefix lookup of networks (covering-prefix search by masking)."""

    def __init__(self):
        self.by_len: dict[tuple[int, int], dict[int, list]] = {}

    def add(self, n, payload) -> None:
        self.by_len.setdefault((n.version, n.prefixlen), {}).setdefault(int(n.network_address), []).append(payload)

    def covering(self, n) -> list[tuple]:
        """All (network-prefixlen, payloads) covering n, most specific first."""
        bits = 32 if n.version == 4 else 128
        addr = int(n.network_address)
        out = []
        for plen in range(n.prefixlen, -1, -1):
            table = self.by_len.get((n.version, plen))
            if not table:
                continue
            mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
            hit = table.get(addr & mask)
            if hit:
                out.append((plen, hit))
        return out


# ---------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------
def load_aws(path: Path, bad: list[str]):
    data = json.loads(path.read_text(encoding="utf-8"))
    m = re.match(r"(\d{4}-\d{2}-\d{2})", data.get("createDate", ""))
    if not m:
        die(f"{path}: no createDate")
    entries = []
    for p in data.get("prefixes", []):
        entries.append((p["ip_prefix"], p["region"], p["network_border_group"], p["service"]))
    for p in data.get("ipv6_prefixes", []):
        entries.append((p["ipv6_prefix"], p["region"], p["network_border_group"], p["service"]))
    idx = PrefixIndex()
    locations = set()
    for pfx, region, nbg, service in entries:
        locations.add(region)
        locations.add(nbg)
        n = net(pfx, path.name, bad)
        if n is not None:
            idx.add(n, (pfx, region, nbg, service))
    return m.group(1), idx, locations


def load_oci(path: Path, bad: list[str]):
    data = json.loads(path.read_text(encoding="utf-8"))
    m = re.match(r"(\d{4}-\d{2}-\d{2})", data.get("last_updated_timestamp", ""))
    if not m:
        die(f"{path}: no last_updated_timestamp")
    idx = PrefixIndex()
    regions = set()
    for r in data.get("regions", []):
        regions.add(r["region"])
        for c in r.get("cidrs", []):
            n = net(c["cidr"], path.name, bad)
            if n is not None:
                idx.add(n, (c["cidr"], r["region"], " ".join(c.get("tags", []))))
    return m.group(1), idx, regions


# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------
def build_cloud_regions(aws_locations: set[str], oci_regions: set[str]) -> tuple[list[list[str]], dict]:
    rows = []
    lookup = {}
    for loc in sorted(aws_locations):
        country, city, note = aws_location(loc)
        if not country and loc != "GLOBAL":
            warn(f"AWS location {loc} has no country: {note}")
        rows.append(["AWS", loc, country, city, note])
        lookup[("AWS", loc)] = (country, city)
    for loc in sorted(oci_regions):
        country, city, note = oci_location(loc)
        if not country:
            warn(f"OCI region {loc} has no country: {note}")
        rows.append(["OCI", loc, country, city, note])
        lookup[("OCI", loc)] = (country, city)
    return rows, lookup


def build_ranges(zoom_txt: list, zoom_txt_src: str, zoom_txt_date: str,
                 union: list[tuple], union_date: str,
                 service_labels: dict, aws_idx: PrefixIndex) -> list[list[str]]:
    """union: list of (network, source file name, service-from-file-name or '')."""
    rows: dict[tuple, list[str]] = {}
    for n in zoom_txt:
        svc = service_labels.get(n, "zoom")
        rows[netkey(n)] = [str(n), svc, zoom_txt_src, zoom_txt_date]
    for n, src, file_svc in union:
        k = netkey(n)
        if k in rows:
            continue  # prefer the newer Zoom.txt source
        svc = service_labels.get(n) or file_svc
        if not svc and n.prefixlen == n.max_prefixlen:
            for _plen, payloads in aws_idx.covering(n):
                if any(p[3] == "CLOUDFRONT" for p in payloads):
                    svc = "cdn"
                    break
        rows[k] = [str(n), svc or "zoom", src, union_date]
    return [rows[k] for k in sorted(rows)]


def compute_cloud_mapping(union: list[tuple], aws_idx: PrefixIndex, oci_idx: PrefixIndex) -> list[dict]:
    """Each non-/32 IPv4 CIDR of the Zoom union that lies inside an AWS or OCI prefix.

    Same method as the shared zoom_cloud_ranges_region_mapping_DERIVED.csv (IPv4 only;
    the only IPv6 hit, 2600:9000:2600::/48, is global CloudFront and carries no region)."""
    out = {}
    for n, _src, _svc in union:
        if n.version != 4 or n.prefixlen == n.max_prefixlen:
            continue
        hit = None
        cov = aws_idx.covering(n)
        if cov:
            _plen, payloads = cov[0]  # most specific covering prefix
            specific = [p for p in payloads if p[3] != "AMAZON"] or payloads
            pfx, region, nbg, _ = specific[0]
            services = sorted({p[3] for p in specific})
            hit = {"cloud": "AWS", "covering": pfx, "cloud_region": region, "location": nbg,
                   "detail": f"AWS region {region}, network_border_group {nbg}, service {'/'.join(services)}"}
        else:
            cov = oci_idx.covering(n)
            if cov:
                _plen, payloads = cov[0]
                pfx, region, tags = payloads[0]
                hit = {"cloud": "OCI", "covering": pfx, "cloud_region": region, "location": region,
                       "detail": f"OCI region {region}, tags {tags}"}
        if hit:
            hit["net"] = n
            out[netkey(n)] = hit
    return [out[k] for k in sorted(out)]


def build_datacenters(crc_path: Path, zoom_txt: list, zoom_txt_src: str,
                      cloud_map: list[dict], cloud_lookup: dict, cloud_dates: dict,
                      union_src: str, bad: list[str]) -> list[list[str]]:
    rows = []
    crc_name = crc_path.name
    with crc_path.open(encoding="utf-8", newline="") as fh:
        crc = list(csv.DictReader(fh))

    # --- labelled /32s -----------------------------------------------------
    by_ip: dict[tuple, dict] = {}
    for r in crc:
        ip = net(r["ip"] + "/32", crc_name, bad)
        if ip is None:
            continue
        e = by_ip.setdefault(netkey(ip), {"net": ip, "gens": set(), "sources": set(), "labels": {},
                                          "country": set()})
        gen = r["list_generation"].strip()
        e["gens"].add(gen)
        e["sources"].update(r["source_ids"].split())
        e["labels"][gen] = r["label_in_zoom_invitation"].strip()
        e["country"].add(r["country_iso2"].strip())
    labelled = []
    for k in sorted(by_ip):
        e = by_ip[k]
        if len(e["country"]) != 1:
            die(f"{crc_name}: {e['net']} has conflicting countries {sorted(e['country'])}")
        country = next(iter(e["country"]))
        srcs = sorted(e["sources"], key=lambda s: (len(s), s))
        dates = [CRC_SOURCE_DATES[s][0] for s in srcs if s in CRC_SOURCE_DATES and CRC_SOURCE_DATES[s][0]]
        date = max(dates) if dates else ""
        undated = [s for s in srcs if s in CRC_SOURCE_DATES and not CRC_SOURCE_DATES[s][0]]
        new = GEN_NEW in e["gens"]
        site = e["labels"][GEN_NEW] if new else e["labels"][GEN_OLD]
        gens = " + ".join(g for g in (GEN_OLD, GEN_NEW) if g in e["gens"])
        notes = [f"CRC (H.323) entry address labelled by Zoom in invitations ({gens})"]
        if new and GEN_OLD in e["gens"] and e["labels"][GEN_OLD] != site:
            notes.append(f"older label '{e['labels'][GEN_OLD]}'")
        if not new:
            notes.append("seen only in 2018-2021 invitations")
        if undated:
            notes.append("undated sources: " + ", ".join(f"{s} {CRC_SOURCE_DATES[s][1]}" for s in undated))
        if not zoom_region(country):
            notes.append(f"country {country} has no Zoom region")
        e["country1"] = country
        e["date"] = date
        e["new"] = new
        e["site"] = site
        labelled.append(e)
        rows.append([str(e["net"]), zoom_region(country), country, site, "labelled",
                     CONF_LABELLED_NEW if new else CONF_LABELLED_OLD,
                     f"{crc_name} {' '.join(srcs)}", date, "; ".join(notes)])

    # --- inferred blocks ---------------------------------------------------
    candidates: dict[tuple, dict] = {}

    def add_candidate(block, why: str, members: list[dict]) -> None:
        k = netkey(block)
        c = candidates.setdefault(k, {"net": block, "why": [], "members": []})
        c["why"].append(why)
        for m in members:
            if m not in c["members"]:
                c["members"].append(m)

    blocks19 = [ipaddress.ip_network(b) for b in SITE_PER_19_BLOCKS]
    for e in labelled:
        if not e["new"]:
            continue
        for b in blocks19:
            if e["net"].version == b.version and e["net"].subnet_of(b):
                add_candidate(e["net"].supernet(new_prefix=19),
                              f"the /19 around labelled 2025 address {e['net'].network_address} "
                              f"inside {b} (one CRC site per /19 in the 2025 list)", [e])
    for zr in zoom_txt:
        if zr.prefixlen < MAX_INFER_BLOCK_PREFIXLEN:
            continue
        members = [e for e in labelled if e["net"].version == zr.version and e["net"].subnet_of(zr)]
        if members:
            add_candidate(zr, f"covering {zoom_txt_src} range {zr} holding labelled address(es) "
                              + " ".join(str(m["net"].network_address) for m in members), members)

    for k in sorted(candidates):
        c = candidates[k]
        block = c["net"]
        # every labelled address (all generations) inside the block must agree
        inside = [e for e in labelled if e["net"].version == block.version and e["net"].subnet_of(block)]
        regions = {zoom_region(e["country1"]) or f"none:{e['country1']}" for e in inside}
        countries = {e["country1"] for e in inside}
        if len(regions) != 1 or len(countries) != 1 or block.prefixlen <= 16:
            warn(f"not inferring {block}: labelled addresses disagree ({sorted(countries)})")
            continue
        country = next(iter(countries))
        srcs = set()
        for e in inside:
            srcs.update(by_ip[netkey(e["net"])]["sources"])
        srcs = sorted(srcs, key=lambda s: (len(s), s))
        dates = [e["date"] for e in inside if e["date"]]
        sites = []
        for e in inside:
            if e["site"] not in sites:
                sites.append(e["site"])
        rows.append([str(block), zoom_region(country), country, " / ".join(sites), "inferred", CONF_INFERRED,
                     f"{crc_name} {' '.join(srcs)}; {zoom_txt_src}", max(dates) if dates else "",
                     "INFERRED, not published by Zoom: " + "; ".join(c["why"])])

    # --- cloud-hosted Zoom ranges -------------------------------------------
    for h in cloud_map:
        country, city = cloud_lookup.get((h["cloud"], h["location"]), ("", ""))
        rows.append(cloud_row(h["net"], h["cloud"], h["location"], h["covering"], h["detail"],
                              cloud_dates[h["cloud"]], country, city, zoom_region,
                              f"Zoom range from {union_src}",
                              (zoom_txt_src, any(h["net"] == z for z in zoom_txt))))

    kind_order = {"labelled": 0, "inferred": 1, "cloud": 2}
    rows.sort(key=lambda r: (netkey(ipaddress.ip_network(r[0])), kind_order[r[4]]))
    return rows


def check_derived(shared: Path, cloud_map: list[dict]) -> None:
    """Cross-check the computed cloud mapping against the shared DERIVED file (if present)."""
    p = default_input(shared, F_DERIVED)
    if not p.exists():
        return
    with p.open(encoding="utf-8", newline="") as fh:
        ref = {(r["zoom_cidr"], r["cloud"], r["covering_cloud_prefix"],
                r["aws_network_border_group"] or r["cloud_region"]) for r in csv.DictReader(fh)}
    got = {(str(h["net"]), h["cloud"], h["covering"], h["location"]) for h in cloud_map}
    if ref != got:
        warn(f"cloud mapping differs from {F_DERIVED} (expected when inputs were refreshed): "
             f"{len(got - ref)} new/changed, {len(ref - got)} gone")


# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Regenerate regionguard's config/data/ files from public Zoom, AWS and Oracle data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""refresh with newer downloads:
  AWS     https://ip-ranges.amazonaws.com/ip-ranges.json               -> --aws FILE
  Oracle  https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json -> --oracle FILE
  Zoom    the 12 files https://assets.zoom.us/docs/ipranges/Zoom*.txt (list in
          zoom-ipranges-file-urls_elico.txt) into one directory        -> --zoom-dir DIR --zoom-date YYYY-MM-DD
          (Zoom.txt from that directory also replaces --zoom-txt)
Unknown new AWS/OCI locations are written with an empty country and a warning:
add them to AWS_REGIONS / AWS_METRO_CODES / OCI_REGIONS in this script.""")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                    help=f"directory with the shared public data (default: {DEFAULT_SHARED}); "
                         f"files missing there are taken from {IN_REPO_INPUTS} and {DEFAULT_OUT}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    ap.add_argument("--aws", type=Path, help=f"AWS ip-ranges.json (default: SHARED/{F_AWS})")
    ap.add_argument("--oracle", type=Path, help=f"Oracle public_ip_ranges.json (default: SHARED/{F_OCI})")
    ap.add_argument("--zoom-txt", type=Path, help=f"Zoom.txt (default: SHARED/{F_ZOOM_TXT})")
    ap.add_argument("--zoom-txt-date", help="date of --zoom-txt (default: YYYY-MM-DD in its file name)")
    ap.add_argument("--zoom-v4-union", type=Path, help=f"IPv4 union of Zoom range files (default: SHARED/{F_V4_UNION})")
    ap.add_argument("--zoom-v6-union", type=Path, help=f"IPv6 union of Zoom range files (default: SHARED/{F_V6_UNION})")
    ap.add_argument("--zoom-union-date", help="date of the union files (default: YYYY-MM-DD in the v4 file name)")
    ap.add_argument("--zoom-dir", type=Path,
                    help="directory with freshly downloaded Zoom*.txt range files; replaces the union files "
                         "(and Zoom.txt when present); service taken from the file name")
    ap.add_argument("--zoom-date", help="download date of --zoom-dir files (YYYY-MM-DD, required with --zoom-dir)")
    ap.add_argument("--zoom-services", type=Path, help=f"CIDR->service labels CSV (default: SHARED/{F_SERVICES})")
    ap.add_argument("--crc", type=Path, help=f"Zoom CRC labelled addresses CSV (default: SHARED/{F_CRC})")
    args = ap.parse_args(argv)

    shared = args.shared
    aws_path = args.aws or default_input(shared, F_AWS)
    oci_path = args.oracle or default_input(shared, F_OCI)
    zoom_txt_path = args.zoom_txt or default_input(shared, F_ZOOM_TXT)
    v4_path = args.zoom_v4_union or default_input(shared, F_V4_UNION)
    v6_path = args.zoom_v6_union or default_input(shared, F_V6_UNION)
    svc_path = args.zoom_services or default_input(shared, F_SERVICES)
    crc_path = args.crc or default_input(shared, F_CRC)
    for p in (aws_path, oci_path, svc_path, crc_path):
        if not p.exists():
            die(f"missing input {p}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bad: list[str] = []

    aws_date, aws_idx, aws_locations = load_aws(aws_path, bad)
    oci_date, oci_idx, oci_regions = load_oci(oci_path, bad)

    # Zoom range lists
    union: list[tuple] = []
    if args.zoom_dir:
        if not args.zoom_date:
            die("--zoom-dir needs --zoom-date")
        files = sorted(p for p in args.zoom_dir.iterdir() if p.is_file() and p.suffix == ".txt")
        if not files:
            die(f"no .txt files in {args.zoom_dir}")
        union_date = args.zoom_date
        union_src = f"Zoom range files ({args.zoom_dir.name})"
        for p in files:
            svc = "phone" if p.name.startswith("ZoomPhone") else "cdn" if p.name.startswith("ZoomCDN") else ""
            for n in read_cidr_lines(p, bad):
                union.append((n, p.name, svc))
            if p.name == "Zoom.txt" and not args.zoom_txt:
                zoom_txt_path = p
                if not args.zoom_txt_date:
                    args.zoom_txt_date = args.zoom_date
    else:
        union_date = date_from_name(v4_path, args.zoom_union_date, "the Zoom union")
        union_src = v4_path.name
        for p in (v4_path, v6_path):
            for n in read_cidr_lines(p, bad):
                union.append((n, p.name, ""))
    # de-duplicate union entries (first file wins, phone/cdn labels preferred)
    seen: dict[tuple, tuple] = {}
    for n, src, svc in union:
        k = netkey(n)
        if k not in seen or (svc and not seen[k][2]):
            seen[k] = (n, src, svc)
    union = [seen[k] for k in sorted(seen)]

    zoom_txt = sorted(set(read_cidr_lines(zoom_txt_path, bad)), key=netkey)
    zoom_txt_date = date_from_name(zoom_txt_path, args.zoom_txt_date, "Zoom.txt")
    zoom_txt_src = zoom_txt_path.name

    service_labels = {}
    with svc_path.open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            n = net(r["ip_address"], svc_path.name, bad)
            if n is not None:
                s = r["service"].strip()
                service_labels[n] = {"zoom-phone": "phone", "zoom-cdn": "cdn"}.get(s, "zoom")
    # only phone/cdn labels override; 'zoom' is the default anyway
    service_labels = {k: v for k, v in service_labels.items() if v != "zoom"}

    # 1. verbatim copies (nothing to do when rebuilding config/data from its own copies)
    for source, name in ((aws_path, O_AWS), (oci_path, O_OCI)):
        if not ((out / name).exists() and (out / name).samefile(source)):
            shutil.copyfile(source, out / name)

    # 2. cloud regions
    cr_rows, cloud_lookup = build_cloud_regions(aws_locations, oci_regions)
    write_csv(out / O_CLOUD_REGIONS, ["cloud", "location", "country", "city", "note"], cr_rows)

    # 3. Zoom ranges
    rg_rows = build_ranges(zoom_txt, zoom_txt_src, zoom_txt_date, union, union_date, service_labels, aws_idx)
    write_csv(out / O_RANGES, ["prefix", "service", "source", "date"], rg_rows)

    # 4. Zoom data centers
    cloud_map = compute_cloud_mapping(union, aws_idx, oci_idx)
    if not args.zoom_dir and not args.aws and not args.oracle and not args.zoom_v4_union and not args.zoom_v6_union:
        check_derived(shared, cloud_map)
    dc_rows = build_datacenters(crc_path, zoom_txt, zoom_txt_src, cloud_map, cloud_lookup,
                                {"AWS": aws_date, "OCI": oci_date}, union_src, bad)
    write_csv(out / O_DATACENTERS,
              ["prefix", "region", "country", "site", "kind", "confidence", "source", "date", "note"], dc_rows)

    # 5. site codes
    sc_rows = [[code, kind, zoom_region(country), country, city, conf, source, date, note]
               for code, kind, country, city, conf, source, date, note in SITE_CODES]
    sc_rows.sort(key=lambda r: (r[1], r[0]))
    write_csv(out / O_SITE_CODES,
              ["code", "kind", "region", "country", "city", "confidence", "source", "date", "note"], sc_rows)

    for b in bad:
        warn(f"invalid prefix skipped: {b}")
    print(f"build_data: wrote {out}: {O_CLOUD_REGIONS} {len(cr_rows)} rows, {O_RANGES} {len(rg_rows)} rows, "
          f"{O_DATACENTERS} {len(dc_rows)} rows, {O_SITE_CODES} {len(sc_rows)} rows, "
          f"{len(bad)} invalid prefixes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
