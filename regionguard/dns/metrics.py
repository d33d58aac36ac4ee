"""`regionguard dns --metrics HOST:PORT`: the DNS server's own families, and its endpoint.

Everything here is read at scrape time from tallies the server keeps anyway: `stats` (queries
past the hit path, SERVFAIL, FORMERR, REFUSED, upstream queries), the two caches' hits and
misses, the answers by filter outcome, and the upstream client's failures, timeouts and latency
buckets. The hot path pays nothing for the metrics being on (bench/bench_dns.py --metrics).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from regionguard.dns.filter import CHANGED
from regionguard.dns.forwarded import (
    ECS_MALFORMED,
    ECS_UNTRUSTED,
    FORWARDED_ECS,
    FORWARDED_PROXY,
    PROXY_MALFORMED,
    PROXY_UNTRUSTED,
)
from regionguard.dns.server import DnsServer
from regionguard.dns.upstream import LATENCY_BUCKETS
from regionguard.metrics.common import FrontEndCollector, copied
from regionguard.metrics.endpoint import MetricsEndpoint

# What a peer said about the client behind it (dns.forwarded's counters), as (kind, result).
CLAIMS = {FORWARDED_PROXY: ("proxy", "believed"), FORWARDED_ECS: ("ecs", "believed"),
          PROXY_UNTRUSTED: ("proxy", "untrusted"), ECS_UNTRUSTED: ("ecs", "untrusted"),
          PROXY_MALFORMED: ("proxy", "malformed"), ECS_MALFORMED: ("ecs", "malformed")}


class DnsCollector(Collector):
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        server = self.server
        stats = copied(server.stats)
        replies, answers, upstreams = server.replies, server.answers, server.upstreams

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        # the UDP hit path counts only its cache hit; every other query is in stats
        yield counter("regionguard_dns_queries", "DNS queries received",
                      stats.get("queries", 0) + replies.hits)
        hits = CounterMetricFamily("regionguard_dns_cache_hits", "Cache hits: `replies` (replies "
                                   "sent, the UDP hit path), `answers` (filtered answers)",
                                   labels=["cache"])
        misses = CounterMetricFamily("regionguard_dns_cache_misses", "Cache misses, as hits",
                                     labels=["cache"])
        size = GaugeMetricFamily("regionguard_dns_cache_bytes", "Bytes held in each cache",
                                 labels=["cache"])
        for name, cache in (("replies", replies), ("answers", answers)):
            hits.add_metric([name], cache.hits)
            misses.add_metric([name], cache.misses)
            size.add_metric([name], cache.bytes)
        yield from (hits, misses, size)
        yield counter("regionguard_dns_upstream_queries", "Misses asked upstream",
                      stats.get("upstream_queries", 0))
        outcomes = copied(server.answer_outcomes)
        by_outcome = CounterMetricFamily("regionguard_dns_answers", "Upstream answers by what "
                                         "the filter did (pass: not Zoom's)", labels=["outcome"])
        for outcome, n in sorted(outcomes.items()):
            by_outcome.add_metric([str(outcome)], n)
        yield by_outcome
        yield counter("regionguard_dns_filtered_answers", "Answers the filter changed "
                      "(addresses dropped, blocked or rerouted)",
                      sum(n for o, n in outcomes.items() if o in CHANGED))
        for key, doc in (("servfail", "SERVFAIL replies"), ("formerr", "FORMERR replies"),
                         ("refused", "REFUSED replies (clients gateway.clients keeps out)")):
            yield counter(f"regionguard_dns_{key}", doc, stats.get(key, 0))
        claims = CounterMetricFamily("regionguard_dns_client_claims", "PROXY v2 headers and ECS "
                                     "options naming a client: believed (from a trusted forwarder), "
                                     "untrusted (ignored), malformed (dropped or FORMERR)",
                                     labels=["kind", "result"])
        for key, (kind, result) in CLAIMS.items():
            claims.add_metric([kind, result], stats.get(key, 0))
        yield claims
        yield counter("regionguard_dns_upstream_failures", "Upstream exchanges no upstream "
                      "answered (SERVFAIL to the client)", upstreams.failures)
        yield counter("regionguard_dns_upstream_timeouts", "Upstream tries that timed out",
                      upstreams.timeouts)
        counts = list(upstreams.latency_counts)
        buckets, total = [], 0
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            total += n
            buckets.append((bound, total))
        yield HistogramMetricFamily("regionguard_dns_upstream_latency_seconds",
                                    "Time from asking upstream to its checked answer",
                                    buckets=buckets, sum_value=upstreams.latency_sum)


def ready(server: DnsServer) -> str | None:
    """None when the server has a policy and its listener is up, else why not."""
    if server.holder.engine is None:
        return "no policy loaded"
    if server.address is None:
        return "the DNS listener is not up yet"
    return None


def endpoint(server: DnsServer, address: tuple[str, int]) -> MetricsEndpoint:
    """The endpoint for `server` (not started)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FrontEndCollector(lambda: server.holder, lambda: server.audit))
    registry.register(DnsCollector(server))
    return MetricsEndpoint(address, registry, lambda: ready(server))
