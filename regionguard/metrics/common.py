"""What both front ends count, read when Prometheus scrapes: decisions (from the audit log's
Counters), audit lines, policy reloads and the version in force, the dataset dates and ages of
every evidence source, whether each is stale and the threshold, and the learned-evidence store's
size.

Label values all come from bounded sets: actions, rules, regions and services are the policy's
and config/'s; scopes are two; client groups are the policy's names; sources and datasets are
the locator's. No host name or address is ever a label.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from regionguard.audit.log import AuditLog
from regionguard.core import datasets, paths
from regionguard.core.decision import Engine
from regionguard.core.reload import EngineHolder

DECISION_LABELS = ["action", "rule", "region", "service", "scope", "group"]


def copied(d: dict) -> dict:
    """A copy of a dict another thread may be adding keys to (a scrape runs beside the loop)."""
    for _ in range(10):
        try:
            return dict(d)
        except RuntimeError:   # changed size during the copy: try again
            continue
    return {}


def _epoch(date: str | None) -> float | None:
    if not date or len(date) < 10:
        return None
    try:
        day = _dt.date.fromisoformat(date[:10])
    except ValueError:
        return None
    return _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.UTC).timestamp()


_SOURCE_OF_FILE = {file: source for source, file in datasets.SOURCE_FILES.items()}


def dataset_dates(engine: Engine) -> dict[tuple[str, str], float]:
    """(source, dataset file) → the date of its data, as a Unix time. For the files a data set
    holds (core.datasets.SOURCE_FILES), the date core.datasets reads from them, the one the
    start-up warning and `data status` show: AWS createDate, Oracle last_updated_timestamp, the
    newest row of the Zoom tables, the fetch day of an updated set's Zoom ranges. The source
    label is the locator's name for the source reading the file ("cloud", "zoom-dc"); Zoom's
    ranges, which no locator source reads, are "zoom-ranges". Other evidence (a geofeed, a GeoIP
    database, or a file that states no date of its own): the newest date its evidence carries."""
    locator = engine.locator
    dates: dict[tuple[str, str], float] = {}
    by_directory: dict[Path, dict[str, str | None]] = {}

    def file_date(path: Path) -> str | None:
        source = _SOURCE_OF_FILE.get(path.name)
        if source is None:
            return None
        if path.parent not in by_directory:
            by_directory[path.parent] = datasets.dataset_dates(path.parent)
        return by_directory[path.parent].get(source)

    def note(source: str, dataset: str, date: str | None) -> None:
        when = _epoch(date)
        if when is not None and when > dates.get((source, dataset), 0.0):
            dates[(source, dataset)] = when

    for source in locator.static:
        path = getattr(source, "path", None)
        if path is None:
            continue   # the policy's overrides: no dataset date
        if (date := file_date(path)) is not None:
            note(source.name, path.name, date)
            continue
        for evidence in source.table.arrays()[2]:
            note(source.name, path.name, evidence.date)
    for source in (*locator.per_address, *locator.per_host):
        path = getattr(source, "path", None)
        date = file_date(path) if path is not None else None
        date = date or getattr(source, "date", None)
        if path is not None and isinstance(date, str):
            note(source.name, path.name, date)
    # the set's files no locator source reads: Zoom's ranges (what makes an address Zoom's)
    read = {dataset for _source, dataset in dates}
    for directory in by_directory or [paths.data_dir()]:
        for source, file in datasets.SOURCE_FILES.items():
            if file not in read:
                note(source, file, file_date(directory / file))
    return dates


class FrontEndCollector(Collector):
    """The common families for one front end. The callables give what is in force at scrape
    time (a proxy may reopen its audit log or reload its policy)."""

    def __init__(self, holder: Callable[[], EngineHolder | None],
                 audit: Callable[[], AuditLog | None],
                 clock: Callable[[], float] = time.time) -> None:
        self._holder = holder
        self._audit = audit
        self._clock = clock
        self._dates_for: Any = None   # the engine whose dataset dates are remembered
        self._dates: dict[tuple[str, str], float] = {}
        self._max_age_days = datasets.max_age_days()   # read once: it warns on a bad value

    def collect(self) -> Iterator[Any]:
        holder = self._holder()
        audit = self._audit()
        yield from self._decisions(audit)
        yield from self._audit_lines(audit)
        yield from self._policy(holder)
        if holder is not None:
            yield from self._datasets(holder.engine)
            yield from self._learned(holder)

    def _decisions(self, audit: AuditLog | None) -> Iterator[Any]:
        decisions = CounterMetricFamily("regionguard_decisions", "Decisions taken, by action, "
                                        "rule, region, service, scope and client group",
                                        labels=DECISION_LABELS)
        unknown = CounterMetricFamily("regionguard_unknown_region_decisions",
                                      "Decisions on Zoom endpoints whose region is unknown",
                                      labels=["action", "group"])
        unknown_counts: dict[tuple[str, str], int] = {}
        for key, n in (audit.counters.by_key() if audit is not None else {}).items():
            decisions.add_metric([str(k) for k in key], n)
            if key[1] == "unknown-region":
                k = (str(key[0]), key[5])
                unknown_counts[k] = unknown_counts.get(k, 0) + n
        for (action, group), n in unknown_counts.items():
            unknown.add_metric([action, group], n)
        yield decisions
        yield unknown

    @staticmethod
    def _audit_lines(audit: AuditLog | None) -> Iterator[Any]:
        written = CounterMetricFamily("regionguard_audit_lines_written",
                                      "Audit lines appended to the audit log")
        dropped = CounterMetricFamily("regionguard_audit_lines_dropped",
                                      "Audit lines lost: not written, or written to a deleted file")
        queued = GaugeMetricFamily("regionguard_audit_lines_queued",
                                   "Audit lines queued for the writer thread, not yet written")
        counters = audit.counters if audit is not None else None
        written.add_metric([], counters.audit_written if counters else 0)
        dropped.add_metric([], counters.audit_failures if counters else 0)
        queued.add_metric([], audit.queued if audit is not None else 0)
        yield from (written, dropped, queued)

    @staticmethod
    def _policy(holder: EngineHolder | None) -> Iterator[Any]:
        loaded = GaugeMetricFamily("regionguard_policy_loaded", "1 when a policy is in force")
        loaded.add_metric([], 1 if holder is not None else 0)
        yield loaded
        reloads = CounterMetricFamily("regionguard_policy_reloads",
                                      "Policy file changes loaded (ok) or rejected, the running "
                                      "policy kept (failed)", labels=["result"])
        reloads.add_metric(["ok"], holder.reloads_ok if holder is not None else 0)
        reloads.add_metric(["failed"], holder.reloads_failed if holder is not None else 0)
        yield reloads
        if holder is not None:
            policy = holder.engine.policy
            yield InfoMetricFamily("regionguard_policy", "The policy in force",
                                   value={"version": policy.version_id,
                                          "file": holder.path.name})

    def _datasets(self, engine: Engine) -> Iterator[Any]:
        if self._dates_for is not engine:   # once per policy: it walks every source's table
            self._dates, self._dates_for = dataset_dates(engine), engine
        date = GaugeMetricFamily("regionguard_dataset_date_seconds",
                                 "Date of each evidence source's dataset (its newest entry), "
                                 "as a Unix time", labels=["source", "dataset"])
        age = GaugeMetricFamily("regionguard_dataset_age_seconds",
                                "Age of each evidence source's dataset (now - its date)",
                                labels=["source", "dataset"])
        stale = GaugeMetricFamily("regionguard_dataset_stale",
                                  "1 when the dataset is older than the threshold "
                                  f"(regionguard_dataset_max_age_seconds, {datasets.MAX_AGE_ENV}): "
                                  "run `regionguard data update`; for the sources the start-up "
                                  "warning checks", labels=["source", "dataset"])
        now = self._clock()
        today = _dt.datetime.fromtimestamp(now, _dt.UTC).date()
        aged = {datasets.SOURCE_FILES[s] for s in datasets.AGED_SOURCES}
        for (source, dataset), when in sorted(self._dates.items()):
            date.add_metric([source, dataset], when)
            age.add_metric([source, dataset], round(now - when))
            if dataset in aged:
                day = _dt.datetime.fromtimestamp(when, _dt.UTC).date()
                stale.add_metric([source, dataset],
                                 1 if datasets.is_old(day, today, self._max_age_days) else 0)
        threshold = GaugeMetricFamily("regionguard_dataset_max_age_seconds",
                                      "Age past which a dataset counts as stale "
                                      f"({datasets.MAX_AGE_ENV}; 0: never)")
        threshold.add_metric([], max(self._max_age_days, 0) * 86400)
        yield from (date, age, stale, threshold)

    @staticmethod
    def _learned(holder: EngineHolder) -> Iterator[Any]:
        store = holder.learned
        size = GaugeMetricFamily("regionguard_learned_entries",
                                 "Learned-evidence store: addresses learned from DNS answers, and "
                                 "address blocks their evidence spreads to", labels=["kind"])
        size.add_metric(["addresses"], len(store.exact) if store is not None else 0)
        size.add_metric(["spread_blocks"], len(store.spread) if store is not None else 0)
        yield size
