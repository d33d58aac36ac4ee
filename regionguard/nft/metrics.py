"""Metrics of `regionguard nft --watch --metrics HOST:PORT`: the kernel's counters of table inet
regionguard (read from nft at scrape time), the loads and updates the watcher made, and the
common families (policy in force, reloads, dataset dates, learned store).

Label values come from bounded sets: set names are `GROUP_RULE_FAMILY`, from the policy's group
names and the engine's rules; no address is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from regionguard.metrics.common import FrontEndCollector
from regionguard.metrics.endpoint import MetricsEndpoint
from regionguard.nft import apply
from regionguard.nft.watch import Watcher


class NftCollector(Collector):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def collect(self) -> Iterator[Any]:
        w = self.watcher
        packets = CounterMetricFamily("regionguard_nft_blocked_packets",
                                      "Packets the kernel dropped or rejected, by set "
                                      "(client group, deciding rule, address family)",
                                      labels=["set", "group", "rule"])
        octets = CounterMetricFamily("regionguard_nft_blocked_bytes",
                                     "Bytes of the packets the kernel dropped or rejected, by set",
                                     labels=["set", "group", "rule"])
        loaded = GaugeMetricFamily("regionguard_nft_loaded", "1 when table inet regionguard is "
                                   "loaded in the kernel")
        try:
            listing = apply.list_table(netns=w.netns)
        except apply.NftError:
            listing = None
        loaded.add_metric([], 1 if listing is not None else 0)
        sets = {s.name: s for s in (w.loaded.sets if w.loaded is not None else ())}
        totals: dict[str, list[int]] = {}
        for comment, (p, b) in apply.counters(listing).items():
            name = comment.removesuffix(" (tcp)")
            if name in sets:
                t = totals.setdefault(name, [0, 0])
                t[0] += p
                t[1] += b
        for name, (p, b) in sorted(totals.items()):
            labels = [name, sets[name].group, sets[name].rule]
            packets.add_metric(labels, p)
            octets.add_metric(labels, b)
        loads = CounterMetricFamily("regionguard_nft_loads", "Rulesets loaded by the watcher: "
                                    "whole tables (full) and learned element updates (elements)",
                                    labels=["kind"])
        loads.add_metric(["full"], w.full_loads)
        loads.add_metric(["elements"], w.element_updates)
        failures = CounterMetricFamily("regionguard_nft_load_failures",
                                       "Loads nft refused: the ruleset in force stayed")
        failures.add_metric([], w.failures)
        seconds = GaugeMetricFamily("regionguard_nft_last_load_seconds",
                                    "Time to compile and load the last whole table")
        seconds.add_metric([], w.last_load_seconds)
        yield from (packets, octets, loaded, loads, failures, seconds)


def start_metrics(address: tuple[str, int], watcher: Watcher) -> MetricsEndpoint:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FrontEndCollector(lambda: watcher.holder, lambda: None))
    registry.register(NftCollector(watcher))

    def ready() -> str | None:
        return None if watcher.loaded is not None else "the ruleset is not loaded yet"

    endpoint = MetricsEndpoint(address, registry, ready)
    endpoint.start()
    return endpoint
