"""Data sets: which one is in force, what it holds, and how old its sources are.

A data set is a directory with the files the locator reads (FILES). The bundled snapshot is one
(config/data); `regionguard data update` writes others under a data root (paths.data_root()):

    ROOT/sets/<id>/      one complete set, with manifest.json (what was fetched, sizes, dates)
    ROOT/current  ->     symbolic link to the set in force (replaced atomically by rename)
    ROOT/previous ->     the set before it, for `data rollback`

A set counts only when its manifest lists every file and each has the size recorded there: a
half-copied or damaged set is ignored (and the bundled snapshot used) rather than half read.
Stdlib only: the core reads this, the update command (regionguard.data) writes it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

AWS = "aws-ip-ranges.json"
ORACLE = "oracle-public_ip_ranges.json"
ZOOM_RANGES = "zoom-ranges.csv"
DATACENTERS = "zoom-datacenters.csv"
CLOUD_REGIONS = "cloud-regions.csv"
SITE_CODES = "site-codes.csv"
ISO3166 = "iso3166-alpha2.csv"
# Every file a set holds; the first three are fetched, the rest are curated and copied.
FILES = (AWS, ORACLE, ZOOM_RANGES, DATACENTERS, CLOUD_REGIONS, SITE_CODES, ISO3166)
MANIFEST = "manifest.json"
CURRENT = "current"
PREVIOUS = "previous"
SETS = "sets"

MAX_AGE_ENV = "REGIONGUARD_DATA_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS = 90   # AWS republishes several times a week, Zoom every few months

_warned: set[str] = set()   # a broken set is reported once per process, not per lookup


def read_manifest(directory: Path) -> dict | None:
    try:
        with open(directory / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def check_set(directory: Path) -> str | None:
    """Why the set in `directory` cannot be used, or None when it is whole."""
    manifest = read_manifest(directory)
    if manifest is None:
        return f"{directory / MANIFEST} is missing or not JSON"
    sizes = manifest.get("files")
    if not isinstance(sizes, dict):
        return f"{directory / MANIFEST}: no `files`"
    for name in FILES:
        try:
            size = os.stat(directory / name).st_size
        except OSError:
            return f"{directory / name} is missing"
        if sizes.get(name, {}).get("size") != size:
            return f"{directory / name} has {size} bytes, its manifest says {sizes.get(name)}"
    return None


def active_set(root: Path) -> Path | None:
    """The updated set in force under `root`, or None (use the bundled snapshot)."""
    link = root / CURRENT
    if not os.path.lexists(link):
        return None
    target = link.resolve()
    problem = check_set(target)
    if problem is None:
        return target
    if problem not in _warned:
        _warned.add(problem)
        log.warning("regionguard: the updated data set is not used, the bundled data is: %s "
                    "(run `regionguard data update` or `regionguard data rollback`)", problem)
    return None


def set_stamp(root: Path) -> tuple[str, int] | None:
    """What identifies the set in force, cheaply (one readlink, one stat): a change of it means
    the data changed and engines should be rebuilt."""
    try:
        target = os.readlink(root / CURRENT)
        return target, os.stat(root / CURRENT / MANIFEST).st_mtime_ns
    except OSError:
        return None


# --- dates ------------------------------------------------------------------------------------

_AWS_DATE = re.compile(rb'"createDate"\s*:\s*"(\d{4})-(\d{2})-(\d{2})')
_ORACLE_DATE = re.compile(rb'"last_updated_timestamp"\s*:\s*"(\d{4})-(\d{2})-(\d{2})')


def _head_date(path: Path, pattern: re.Pattern[bytes]) -> str | None:
    # both files carry their date in the first lines: no need to parse megabytes for it
    try:
        with open(path, "rb") as f:
            m = pattern.search(f.read(4096))
    except OSError:
        return None
    return "-".join(x.decode() for x in m.groups()) if m else None


def _newest_row_date(path: Path) -> str | None:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            dates = [row.get("date") or "" for row in csv.DictReader(f)]
    except OSError:
        return None
    return max((d for d in dates if d), default=None)


# The dated sources of a set, by the names the start-up warning and `data status` use, and the
# file each is read from (the metrics label their series with both).
SOURCE_FILES = {"aws": AWS, "oracle": ORACLE, "zoom-ranges": ZOOM_RANGES,
                "zoom-datacenters": DATACENTERS}
# The sources whose age is checked against the threshold. Not zoom-datacenters: its labels come
# from meeting invitations collected over years, so its newest row says nothing about whether it
# is up to date.
AGED_SOURCES = ("aws", "oracle", "zoom-ranges")


def dataset_dates(directory: Path) -> dict[str, str | None]:
    """Source → the date of its data (YYYY-MM-DD), as the files themselves say. For an updated
    set, the Zoom range files carry no date: the day they were fetched is theirs."""
    manifest = read_manifest(directory) or {}
    recorded = manifest.get("dates") if isinstance(manifest.get("dates"), dict) else {}
    return {
        "aws": _head_date(directory / AWS, _AWS_DATE),
        "oracle": _head_date(directory / ORACLE, _ORACLE_DATE),
        "zoom-ranges": recorded.get("zoom-ranges") or _newest_row_date(directory / ZOOM_RANGES),
        "zoom-datacenters": _newest_row_date(directory / DATACENTERS),
    }


def is_old(date: _dt.date, today: _dt.date, max_days: float) -> bool:
    """Whether data of `date` is past the threshold on `today` (never when it is 0 or less)."""
    return max_days > 0 and (today - date).days > max_days


def describe_set(directory: Path, bundled: Path) -> str:
    """One line: which set is in force and the date of each source."""
    dates = dataset_dates(directory)
    where = "bundled snapshot" if directory.resolve() == bundled.resolve() else "updated set"
    manifest = read_manifest(directory) or {}
    fetched = f", fetched {manifest['fetched']}" if manifest.get("fetched") else ""
    return (f"data: {where} {directory}{fetched}; dates: "
            + ", ".join(f"{k} {v or 'unknown'}" for k, v in dates.items()))


def max_age_days() -> float:
    """The age past which a data set is reported as old: REGIONGUARD_DATA_MAX_AGE_DAYS (0: never),
    else DEFAULT_MAX_AGE_DAYS."""
    text = os.environ.get(MAX_AGE_ENV, "")
    try:
        return float(text) if text else DEFAULT_MAX_AGE_DAYS
    except ValueError:
        log.warning("regionguard: %s=%r is not a number of days; using %s",
                    MAX_AGE_ENV, text, DEFAULT_MAX_AGE_DAYS)
        return DEFAULT_MAX_AGE_DAYS


def stale_sources(directory: Path, today: _dt.date | None = None,
                  max_days: float | None = None) -> list[str]:
    """One message per source of AGED_SOURCES whose data is older than the threshold (none when
    it is 0)."""
    max_days = max_age_days() if max_days is None else max_days
    if max_days <= 0:
        return []
    today = today or _dt.datetime.now(_dt.UTC).date()
    out = []
    for source, date in dataset_dates(directory).items():
        if source not in AGED_SOURCES or not date:
            continue
        day = _dt.date.fromisoformat(date)
        if is_old(day, today, max_days):
            out.append(f"{source} data is {(today - day).days} days old ({date}; threshold "
                       f"{max_days:g} days, {MAX_AGE_ENV}): run `regionguard data update`")
    return out


__all__ = ["AGED_SOURCES", "FILES", "MANIFEST", "SOURCE_FILES", "active_set", "check_set",
           "dataset_dates", "describe_set", "is_old", "max_age_days", "read_manifest", "set_stamp",
           "stale_sources"]
