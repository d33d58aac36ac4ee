"""`regionguard data update`: fetch, check, install atomically; `rollback`; `status`.

Order of work, so that a failure anywhere leaves the data in force untouched:
1. fetch every file (httpx: timeouts, a few retries with back-off on network errors and 5xx);
2. check each: it parses, it has the fields the locator reads, no entry is malformed, and no
   source shrank by more than --max-shrink against the set in force (unless --force);
3. write the new set into a fresh directory under ROOT/sets, with its manifest, fsync'd;
4. point ROOT/current at it with one rename (atomic), and ROOT/previous at the old one.
Readers (regionguard.core.datasets.active_set) only ever see a whole set.

What a set holds: AWS's and Oracle's files verbatim; zoom-ranges.csv made from the union of
Zoom's range files; zoom-datacenters.csv with its `cloud` rows made again from those
(regionguard.data.cloudmap) and its Zoom-labelled and inferred rows kept; the curated tables
(cloud-regions.csv, site-codes.csv, iso3166-alpha2.csv) copied from the bundled snapshot, since
no upstream publishes them (config/data/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import hashlib
import io
import ipaddress
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionguard.core import datasets
from regionguard.core.datasets import AWS, DATACENTERS, FILES, MANIFEST, ORACLE, ZOOM_RANGES
from regionguard.core.paths import bundled_data_dir, config_dir, data_dir, data_root
from regionguard.exits import EXIT_DATA, EXIT_OK
from regionguard.progress import ProgressBar

DEFAULT_MAX_SHRINK = 0.2    # a source losing more than a fifth of its entries is suspicious
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
_USER_AGENT = "regionguard-data-update"


class UpdateError(Exception):
    """Why an update (or rollback) did not happen; the data in force is unchanged."""


@dataclass
class Fetch:
    key: str          # "aws", "oracle", or a Zoom file name ("Zoom.txt")
    url: str
    official: str     # the URL in config/data-sources.yaml

    @property
    def file_name(self) -> str:
        return self.official.rstrip("/").rsplit("/", 1)[-1]


# --- where from ----------------------------------------------------------------------------------


def load_sources(path: Path | None = None) -> list[Fetch]:
    """The files to fetch, from config/data-sources.yaml (or `path`)."""
    import yaml

    path = path or config_dir() / "data-sources.yaml"
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        out = [Fetch("aws", raw["aws"]["url"], raw["aws"]["url"]),
               Fetch("oracle", raw["oracle"]["url"], raw["oracle"]["url"])]
        for url in raw["zoom"]:
            out.append(Fetch(url.rstrip("/").rsplit("/", 1)[-1], url, url))
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UpdateError(f"{path}: cannot read the list of sources ({type(e).__name__}: {e}); "
                          "it needs `aws: {url: ...}`, `oracle: {url: ...}` and `zoom: [urls]`") from e
    return out


def apply_mirrors(fetches: list[Fetch], mirrors: list[str], base: str | None) -> None:
    """--mirror-base BASE: every file from BASE/<its file name>; --mirror KEY=URL: one file
    (KEY: aws, oracle or a Zoom file name), which wins over the base."""
    if base:
        for f in fetches:
            f.url = base.rstrip("/") + "/" + f.file_name
    by_key = {f.key: f for f in fetches}
    for item in mirrors:
        key, sep, url = item.partition("=")
        if not sep or key not in by_key or not url:
            raise UpdateError(f"--mirror {item!r}: expected KEY=URL with KEY one of "
                              + ", ".join(by_key))
        by_key[key].url = url


# --- fetching ------------------------------------------------------------------------------------


def fetch_all(fetches: list[Fetch], timeout: float, retries: int,
              show_progress: bool) -> dict[str, bytes]:
    import httpx

    out: dict[str, bytes] = {}
    with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True,
                      headers={"User-Agent": _USER_AGENT}) as client:
        for f in fetches:
            out[f.key] = _fetch_one(client, f, retries, show_progress)
    return out


def _fetch_one(client: Any, f: Fetch, retries: int, show_progress: bool) -> bytes:
    import httpx

    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** attempt * 0.5, 10))
        try:
            with client.stream("GET", f.url) as response:
                if response.status_code != 200:
                    last = f"HTTP {response.status_code} {response.reason_phrase}"
                    if response.status_code >= 500 or response.status_code == 429:
                        continue          # the server's trouble: may pass
                    break                 # 404, 403...: asking again will not help
                total = int(response.headers.get("content-length") or 0)
                # no Content-Length (chunked, or up to the close): the bytes received so far
                bar = ProgressBar(total or None, f.file_name) if show_progress else None
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if bar is not None:
                        bar.update(len(body))
                if bar is not None:
                    bar.close()
                if total and len(body) != total:
                    last = f"truncated: {len(body)} of {total} bytes"
                    continue
                return bytes(body)
        except httpx.TimeoutException as e:
            last = f"timed out ({type(e).__name__})"
        except httpx.RemoteProtocolError as e:   # closed before Content-Length bytes came
            last = f"truncated: {e}"
        except httpx.HTTPError as e:   # refused, reset, cut short, bad TLS...
            last = f"{type(e).__name__}: {e}"
    raise UpdateError(f"{f.key}: fetching {f.url} failed after {retries + 1} attempt(s): {last}"
                      + ("" if f.url == f.official else f" (official URL: {f.official})"))


# --- checking ------------------------------------------------------------------------------------


def _json(data: bytes, what: str) -> Any:
    if data.lstrip()[:1] == b"<":
        raise UpdateError(f"{what}: got an HTML/XML page, not JSON (an error page, a captive "
                          "portal or a wrong mirror URL?)")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UpdateError(f"{what}: not valid JSON ({e}): truncated or damaged download") from e


def _network(text: Any, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except (TypeError, ValueError) as e:
        raise UpdateError(f"{what}: {text!r} is not an address prefix") from e


def check_aws(data: bytes, what: str = AWS) -> tuple[int, set[str]]:
    """(number of prefixes, network border groups). The locator reads ip_prefix/ipv6_prefix,
    network_border_group (the place) and region, and createDate (the data's date)."""
    doc = _json(data, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("createDate"), str):
        raise UpdateError(f"{what}: no `createDate`: not AWS ip-ranges.json")
    groups = set()
    count = 0
    for field, key in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        items = doc.get(field)
        if not isinstance(items, list):
            raise UpdateError(f"{what}: `{field}` missing or not a list")
        for i, p in enumerate(items):
            if not isinstance(p, dict) or not all(isinstance(p.get(k), str)
                                                  for k in (key, "region", "network_border_group")):
                raise UpdateError(f"{what}: {field}[{i}] lacks {key}, region or "
                                  "network_border_group")
            _network(p[key], f"{what}: {field}[{i}].{key}")
            groups.add(p["network_border_group"])
        count += len(items)
    if not count:
        raise UpdateError(f"{what}: no prefixes at all")
    return count, groups


def check_oracle(data: bytes, what: str = ORACLE) -> tuple[int, set[str]]:
    """(number of CIDRs, regions). The locator reads regions[].region and regions[].cidrs[].cidr."""
    doc = _json(data, what)
    regions = doc.get("regions") if isinstance(doc, dict) else None
    if not isinstance(regions, list):
        raise UpdateError(f"{what}: `regions` missing or not a list: not Oracle public_ip_ranges.json")
    names = set()
    count = 0
    for i, r in enumerate(regions):
        if not isinstance(r, dict) or not isinstance(r.get("region"), str) \
                or not isinstance(r.get("cidrs"), list):
            raise UpdateError(f"{what}: regions[{i}] lacks `region` or `cidrs`")
        for j, c in enumerate(r["cidrs"]):
            if not isinstance(c, dict):
                raise UpdateError(f"{what}: regions[{i}].cidrs[{j}] is not an object")
            _network(c.get("cidr"), f"{what}: regions[{i}].cidrs[{j}].cidr")
        names.add(r["region"])
        count += len(r["cidrs"])
    if not count:
        raise UpdateError(f"{what}: no CIDRs at all")
    return count, names


def parse_zoom(data: bytes, what: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """One prefix per line (blank lines and # comments allowed); anything else is an error, so
    an HTML page or a cut line never becomes data."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UpdateError(f"{what}: not text ({e})") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("<"):
            raise UpdateError(f"{what}: line {n} is HTML ({line[:40]!r}): an error page, a captive "
                              "portal or a wrong mirror URL?")
        try:
            out.append(ipaddress.ip_network(line, strict=True))
        except ValueError as e:
            raise UpdateError(f"{what}: line {n}: {line[:60]!r} is not a prefix ({e})") from e
    return out


def zoom_ranges_rows(files: list[tuple[str, list]], date: str) -> list[list[str]]:
    """zoom-ranges.csv rows: one per distinct prefix; the first file naming it is its source,
    except that a phone/cdn file's service wins over plain `zoom` (as tools/build_data.py)."""
    seen: dict[tuple[int, int, int], list[str]] = {}
    for name, networks in files:
        service = "phone" if name.startswith("ZoomPhone") else "cdn" if name.startswith("ZoomCDN") \
            else "zoom"
        for n in networks:
            key = (n.version, int(n.network_address), n.prefixlen)
            if key not in seen or (service != "zoom" and seen[key][1] == "zoom"):
                seen[key] = [str(n), service, name, date]
    return [seen[k] for k in sorted(seen)]


ZOOM_FILE_COUNTS = "zoom_files"   # manifest key: Zoom range file name -> prefixes it held


def counts_of(directory: Path) -> dict[str, int]:
    """Entries per fetched source in a set, for the shrink check: "aws", "oracle", "zoom" (the
    distinct prefixes of zoom-ranges.csv), and one per Zoom range file ("ZoomMeetings.txt"), so
    that one file emptied cannot hide in the total of all of them."""
    out = {}
    with contextlib.suppress(OSError, UpdateError):
        out["aws"] = check_aws((directory / AWS).read_bytes())[0]
    with contextlib.suppress(OSError, UpdateError):
        out["oracle"] = check_oracle((directory / ORACLE).read_bytes())[0]
    with contextlib.suppress(OSError):
        out["zoom"] = max(len((directory / ZOOM_RANGES).read_text(encoding="utf-8").splitlines()) - 1, 0)
    out.update(_zoom_file_counts(directory))
    return out


def _zoom_file_counts(directory: Path) -> dict[str, int]:
    """Prefixes per Zoom range file: as the manifest recorded them; for a set written before
    manifests held them, the rows zoom-ranges.csv attributes to each file, a lower bound (a
    prefix two files list is attributed to one), so comparing against it never refuses a file
    that did not shrink. The bundled snapshot's rows name no Zoom file: nothing to compare."""
    recorded = (datasets.read_manifest(directory) or {}).get(ZOOM_FILE_COUNTS)
    if isinstance(recorded, dict):
        return {name: n for name, n in recorded.items() if isinstance(n, int)}
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, csv.Error), \
            open(directory / ZOOM_RANGES, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            source = row.get("source") or ""
            if source.startswith("Zoom") and source.endswith(".txt"):
                out[source] = out.get(source, 0) + 1
    return out


def check_shrink(old: dict[str, int], new: dict[str, int], max_shrink: float) -> None:
    """Refuse a source (or a Zoom range file) that lost more than `max_shrink` of its entries,
    or that is empty now and was not: sources only the old or the new set knows are not compared."""
    for source, count in new.items():
        before = old.get(source, 0)
        if before and count == 0:
            raise UpdateError(
                f"{source}: no entries at all, down from {before} in the data in force: an "
                "emptied or wrong file? Check the source, then run again with --force to accept it")
        if before and count < before * (1 - max_shrink):
            raise UpdateError(
                f"{source}: {count} entries, down from {before} in the data in force "
                f"(more than {max_shrink:.0%} fewer): a partial or wrong file? "
                "Check the source, then run again with --force to accept it")


# --- installing ----------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(root: Path, name: str, target: str) -> None:
    """ROOT/name -> target, replaced in one rename (readers see the old or the new link)."""
    tmp = root / f".{name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, root / name)


@contextlib.contextmanager
def _locked(root: Path):
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise UpdateError(f"{root}: another `regionguard data` command is running") from e
        yield


def install(root: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write a whole set under ROOT/sets, then make it current; the old current becomes previous
    and older sets are removed. Returns the new set's directory."""
    sets = root / datasets.SETS
    sets.mkdir(parents=True, exist_ok=True)
    set_id = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    tmp = sets / f".tmp-{set_id}"
    tmp.mkdir()
    try:
        manifest["files"] = {}
        for name in FILES:
            _write(tmp / name, files[name])
            manifest["files"][name] = {"size": len(files[name]),
                                       "sha256": hashlib.sha256(files[name]).hexdigest()}
        _write(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _fsync_dir(tmp)
        final = sets / set_id
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _target(root, datasets.CURRENT)
    _point(root, datasets.CURRENT, f"{datasets.SETS}/{set_id}")
    if old is not None:
        _point(root, datasets.PREVIOUS, old)
    _fsync_dir(root)
    _prune(root)
    return final


def _target(root: Path, name: str) -> str | None:
    try:
        return os.readlink(root / name)
    except OSError:
        return None


def _prune(root: Path) -> None:
    keep = {Path(t).name for t in (_target(root, datasets.CURRENT), _target(root, datasets.PREVIOUS)) if t}
    for d in (root / datasets.SETS).iterdir():
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def rollback(root: Path) -> str:
    with _locked(root):
        current, previous = _target(root, datasets.CURRENT), _target(root, datasets.PREVIOUS)
        if previous is None:
            raise UpdateError(f"{root}: no previous data set to roll back to")
        problem = datasets.check_set(root / previous)
        if problem:
            raise UpdateError(f"the previous data set is not usable: {problem}")
        _point(root, datasets.CURRENT, previous)
        if current is not None:
            _point(root, datasets.PREVIOUS, current)
        _fsync_dir(root)
        return previous


def update(root: Path, fetches: list[Fetch], *, timeout: float, retries: int, force: bool,
           max_shrink: float, show_progress: bool, out=sys.stdout) -> Path:
    with _locked(root):
        started = time.monotonic()
        raw = fetch_all(fetches, timeout, retries, show_progress)
        fetched_in = time.monotonic() - started
        today = _dt.datetime.now(_dt.UTC).date().isoformat()
        aws_count, groups = check_aws(raw["aws"], f"{AWS} from {_url(fetches, 'aws')}")
        oracle_count, regions = check_oracle(raw["oracle"], f"{ORACLE} from {_url(fetches, 'oracle')}")
        zoom_files = [(f.key, parse_zoom(raw[f.key], f"{f.key} from {f.url}"))
                      for f in fetches if f.key not in ("aws", "oracle")]
        rows = zoom_ranges_rows(zoom_files, today)
        if not rows:
            raise UpdateError("Zoom's range files hold no prefix at all")
        new_counts = {"aws": aws_count, "oracle": oracle_count, "zoom": len(rows)}
        file_counts = {name: len(networks) for name, networks in zoom_files}
        old_counts = counts_of(data_dir())
        if not force:
            check_shrink(old_counts, {**new_counts, **file_counts}, max_shrink)
        bundled = bundled_data_dir()
        files = {name: (bundled / name).read_bytes() for name in FILES}
        files[AWS], files[ORACLE] = raw["aws"], raw["oracle"]
        files[ZOOM_RANGES] = ("prefix,service,source,date\n"
                              + "".join(",".join(r) + "\n" for r in rows)).encode()
        _warn_unknown_locations(files, groups, regions)
        files[DATACENTERS] = _datacenters(files, rows, zoom_files)
        manifest = {"format": 1, "fetched": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "sources": {f.key: f.url for f in fetches}, "counts": new_counts,
                    ZOOM_FILE_COUNTS: file_counts,
                    "dates": {"zoom-ranges": today}}
        final = install(root, files, manifest)
        size = sum(len(b) for b in raw.values())
        print(f"data update: {len(fetches)} files, {size / 1e6:.1f} MB fetched in {fetched_in:.2f} s; "
              f"checked and installed in {time.monotonic() - started - fetched_in:.2f} s "
              f"(total {time.monotonic() - started:.2f} s)", file=out)
        print(f"  {AWS}: {aws_count} prefixes; {ORACLE}: {oracle_count} CIDRs; {ZOOM_RANGES}: "
              f"{len(rows)} prefixes (before: "
              + ", ".join(f"{k} {old_counts[k]}" for k in ("aws", "oracle", "zoom") if k in old_counts)
              + ")", file=out)
        print(f"  in force: {final}", file=out)
        return final


def _datacenters(files: dict[str, bytes], rows: list[list[str]], zoom_files: list) -> bytes:
    """zoom-datacenters.csv with its cloud rows made from the new files (regionguard.data.cloudmap)."""
    from regionguard.core.regions import load_catalogue
    from regionguard.data.cloudmap import cloud_rows, datacenters_csv

    zoom_txt = next((set(networks) for name, networks in zoom_files if name == "Zoom.txt"), set())
    zoom = [(ipaddress.ip_network(r[0]), r[2]) for r in rows]
    cloud = cloud_rows(zoom, zoom_txt, files[AWS], files[ORACLE], files[datasets.CLOUD_REGIONS],
                       load_catalogue().region_for_country)
    return datacenters_csv(files[DATACENTERS], cloud)


def _url(fetches: list[Fetch], key: str) -> str:
    return next(f.url for f in fetches if f.key == key)


def _warn_unknown_locations(files: dict[str, bytes], groups: set[str], regions: set[str]) -> None:
    known = {(r["cloud"].upper(), r["location"]) for r in
             csv.DictReader(io.StringIO(files[datasets.CLOUD_REGIONS].decode("utf-8")))}
    new = sorted(({("AWS", g) for g in groups} | {("OCI", r) for r in regions}) - known)
    if new:
        print(f"data update: warning: {len(new)} cloud location(s) not in cloud-regions.csv, their "
              "addresses stay unplaced until regionguard knows them: "
              + ", ".join(f"{c} {loc}" for c, loc in new[:10]) + (" ..." if len(new) > 10 else ""),
              file=sys.stderr)


# --- the command ---------------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    root = Path(args.data_dir) if args.data_dir else data_root()
    if args.data_dir:   # what this process then reads (status, the shrink check) follows it too
        os.environ["REGIONGUARD_DATA_DIR"] = str(root)
    try:
        if args.action == "rollback" or getattr(args, "rollback", False):
            target = rollback(root)
            print(f"data rollback: {root / target} is in force again")
            print(datasets.describe_set(data_dir(), bundled_data_dir()))
            return EXIT_OK
        if args.action == "status":
            print(datasets.describe_set(data_dir(), bundled_data_dir()))
            for warning in datasets.stale_sources(data_dir()):
                print(f"warning: {warning}")
            return EXIT_OK
        fetches = load_sources(Path(args.sources) if args.sources else None)
        apply_mirrors(fetches, args.mirror or [], args.mirror_base)
        show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
        update(root, fetches, timeout=args.timeout, retries=args.retries, force=args.force,
               max_shrink=args.max_shrink, show_progress=show)
        print(datasets.describe_set(data_dir(), bundled_data_dir()))
        return EXIT_OK
    except UpdateError as e:
        print(f"regionguard data {args.action}: failed, the data in force is unchanged "
              f"({data_dir()}):\n  {e}", file=sys.stderr)
        return EXIT_DATA
    except OSError as e:
        print(f"regionguard data {args.action}: failed, the data in force is unchanged: {e}",
              file=sys.stderr)
        return EXIT_DATA
