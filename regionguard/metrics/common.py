"""What both front ends count, read when Prometheus scrapes: decisions (from the audit log's
Counters), audit lines, policy reloads and the version in force, the evidence sources' dataset
dates, and the learned-evidence store's size.

Label values all come from bounded sets: actions, rules, regions and services are the policy's
and config/'s; scopes are two; client groups are the policy's names; sources and datasets are
the locator's. No host name or address is ever a label.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from regionguard.audit.log import AuditLog
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


def dataset_dates(engine: Engine) -> dict[tuple[str, str], float]:
    """(source, dataset file) → the newest date its evidence carries, as a Unix time: the bundled
    files' own dates (AWS createDate, Oracle last_updated_timestamp, the rows' provenance dates
    in zoom-datacenters.csv, a GeoIP database's build time)."""
    locator = engine.locator
    dates: dict[tuple[str, str], float] = {}

    def note(source: str, dataset: str, date: str | None) -> None:
        when = _epoch(date)
        if when is not None and when > dates.get((source, dataset), 0.0):
            dates[(source, dataset)] = when

    for source in locator.static:
        path = getattr(source, "path", None)
        if path is None:
            continue   # the policy's overrides: no dataset date
        for evidence in source.table.arrays()[2]:
            note(source.name, path.name, evidence.date)
    for source in (*locator.per_address, *locator.per_host):
        path = getattr(source, "path", None)
        date = getattr(source, "date", None)
        if path is not None and isinstance(date, str):
            note(source.name, path.name, date)
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
        now = self._clock()
        for (source, dataset), when in sorted(self._dates.items()):
            date.add_metric([source, dataset], when)
            age.add_metric([source, dataset], round(now - when))
        yield date
        yield age

    @staticmethod
    def _learned(holder: EngineHolder) -> Iterator[Any]:
        store = holder.learned
        size = GaugeMetricFamily("regionguard_learned_entries",
                                 "Learned-evidence store: addresses learned from DNS answers, and "
                                 "address blocks their evidence spreads to", labels=["kind"])
        size.add_metric(["addresses"], len(store.exact) if store is not None else 0)
        size.add_metric(["spread_blocks"], len(store.spread) if store is not None else 0)
        yield size
