"""The `cloud` rows of zoom-datacenters.csv, made again from freshly fetched files.

A Zoom range (IPv4, wider than one address) that lies inside an AWS or Oracle Cloud prefix takes
that prefix's place: AWS's network_border_group (a Local Zone can be in another country than its
parent region), or the OCI region; the country comes from cloud-regions.csv and the Zoom region
from the catalogue. The method of tools/build_data.py (`compute_cloud_mapping`), so an update
moves these rows with the clouds. The Zoom-labelled and inferred rows are not fetchable (they
come from meeting invitations) and are kept as they are.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CONFIDENCE = "0.9"     # as tools/build_data.py CONF_CLOUD
HEADER = ["prefix", "region", "country", "site", "kind", "confidence", "source", "date", "note"]
_KIND_ORDER = {"labelled": 0, "inferred": 1, "cloud": 2}


class _Covering:
    """Most specific covering prefix of an IPv4 network, by masking at each length."""

    def __init__(self) -> None:
        self.by_len: dict[int, dict[int, list[tuple]]] = {}

    def add(self, n: Network, payload: tuple) -> None:
        if n.version == 4:
            self.by_len.setdefault(n.prefixlen, {}).setdefault(int(n.network_address), []).append(payload)

    def most_specific(self, n: Network) -> list[tuple] | None:
        addr = int(n.network_address)
        for plen in range(n.prefixlen, -1, -1):
            hit = self.by_len.get(plen, {}).get(addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF))
            if hit:
                return hit
        return None


def _aws(data: bytes) -> tuple[str, _Covering]:
    doc = json.loads(data)
    index = _Covering()
    for p in doc["prefixes"]:
        index.add(ipaddress.ip_network(p["ip_prefix"]),
                  (p["ip_prefix"], p["region"], p["network_border_group"], p["service"]))
    return doc["createDate"][:10], index


def _oracle(data: bytes) -> tuple[str, _Covering]:
    doc = json.loads(data)
    index = _Covering()
    for r in doc["regions"]:
        for c in r["cidrs"]:
            index.add(ipaddress.ip_network(c["cidr"]), (c["cidr"], r["region"], c.get("tags", [])))
    return str(doc.get("last_updated_timestamp", ""))[:10], index


def cloud_rows(zoom: Iterable[tuple[Network, str]], in_zoom_txt: set[Network], aws: bytes,
               oracle: bytes, cloud_regions: bytes, region_for_country) -> list[list[str]]:
    """One `cloud` row per Zoom range (network, file it came from) inside an AWS or OCI prefix."""
    aws_date, aws_index = _aws(aws)
    oci_date, oci_index = _oracle(oracle)
    places = {(r["cloud"].upper(), r["location"]): (r["country"], r["city"])
              for r in csv.DictReader(io.StringIO(cloud_regions.decode("utf-8")))}
    rows = []
    for n, source in zoom:
        if n.version != 4 or n.prefixlen == n.max_prefixlen:
            continue
        payloads = aws_index.most_specific(n)
        if payloads:
            specific = [p for p in payloads if p[3] != "AMAZON"] or payloads
            covering, cloud_region, location, _ = specific[0]
            services = "/".join(sorted({p[3] for p in specific}))
            cloud, date = "AWS", aws_date
            detail = (f"AWS region {cloud_region}, network_border_group {location}, "
                      f"service {services}")
        else:
            payloads = oci_index.most_specific(n)
            if not payloads:
                continue
            covering, location, tags = payloads[0]
            cloud, date = "OCI", oci_date
            detail = f"OCI region {location}, tags {tags}"
        country, city = places.get((cloud, location), ("", ""))
        rows.append(cloud_row(n, cloud, location, covering, detail, date, country, city,
                              region_for_country, f"Zoom range from {source}",
                              ("Zoom.txt", n in in_zoom_txt)))
    return rows


def cloud_row(n: Network, cloud: str, location: str, covering: str, detail: str, date: str,
              country: str, city: str, region_for_country, origin: str,
              listed: tuple[str, bool]) -> list[str]:
    """The `cloud` row of Zoom range `n` inside `covering` of `cloud` at `location` (an AWS
    network border group or OCI region), in `country`/`city` as cloud-regions.csv places it.
    `origin` says which file the range came from; `listed` whether that list names it. The one
    writer of these rows, for tools/build_data.py and `regionguard data update` alike."""
    region = "" if location == "GLOBAL" or not country else (region_for_country(country) or "")
    notes = [f"{origin} hosted in {detail}", f"in {listed[0]}: {'yes' if listed[1] else 'no'}"]
    if location == "GLOBAL":
        notes.append("anycast/global: no region")
    elif country and not region:
        notes.append(f"country {country} has no Zoom region")
    elif not country:
        notes.append("cloud location unknown")
    site = f"{cloud} {location}" + (f" ({city})" if city else "")
    return [str(n), region, country, site, "cloud", CONFIDENCE,
            f"derived: inside {cloud} {covering} {location}", date, "; ".join(notes)]


def datacenters_csv(bundled: bytes, cloud: list[list[str]]) -> bytes:
    """The bundled table's labelled and inferred rows with `cloud` in place of its cloud rows,
    in the order tools/build_data.py writes (by prefix, then kind)."""
    kept = [[r[h] for h in HEADER] for r in csv.DictReader(io.StringIO(bundled.decode("utf-8")))
            if r["kind"] != "cloud"]
    rows = kept + cloud

    def order(row: list[str]) -> tuple:
        n = ipaddress.ip_network(row[0])
        return n.version, int(n.network_address), n.prefixlen, _KIND_ORDER[row[4]]

    rows.sort(key=order)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode()
