"""The `Metrics` addon: Prometheus /metrics, /healthz and /readyz for the proxy, on the address
in `regionguard_metrics` (`regionguard run --metrics HOST:PORT`), a port of their own.

The endpoint runs in a thread (regionguard.metrics.endpoint), started in `running` and stopped
in `done`; a live change of the option moves it. It reads, at scrape time, what the policy
addon keeps anyway: the audit log's Counters (decisions, audit lines), the EngineHolder
(reloads, the version in force, dataset dates, learned evidence). No hook of this addon runs per
connection: the proxy's hot path pays nothing for it.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx

from regionguard.metrics.address import exposure_warning, parse_metrics_address
from regionguard.metrics.common import FrontEndCollector
from regionguard.metrics.endpoint import MetricsEndpoint
from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.probe.tcp import Prober

log = logging.getLogger("regionguard")


class Metrics:
    name = "regionguard_metrics"

    def __init__(self, policy: PolicyLoader, prober: Prober | None = None) -> None:
        self.policy = policy
        self.prober = prober   # evidence.rtt: probe's (the connections addon's)
        self.endpoint: MetricsEndpoint | None = None
        self._master: Any = None
        self._running = False

    def load(self, loader: Any) -> None:
        self._master = loader.master   # the option itself is declared by the policy addon

    def running(self) -> None:
        self._running = True
        self._serve(ctx.options.regionguard_metrics)

    def configure(self, updated: set[str]) -> None:
        if self._running and "regionguard_metrics" in updated:
            self._stop()
            self._serve(ctx.options.regionguard_metrics)

    def done(self) -> None:
        self._running = False
        self._stop()

    # --- inside -------------------------------------------------------------------------------

    def _serve(self, text: str) -> None:
        if not text:
            return
        address, problem = parse_metrics_address(text, "regionguard_metrics")
        if address is None:   # the policy addon has refused the value already
            log.error("regionguard: no metrics: %s", problem)
            return
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        policy = self.policy
        registry.register(FrontEndCollector(lambda: policy.holder, lambda: policy.audit))
        if self.prober is not None:
            registry.register(RttCollector(self.prober, lambda: policy.holder))
        endpoint = MetricsEndpoint(address, registry, self.not_ready)
        try:
            endpoint.start()
        except OSError as e:
            log.error("regionguard: cannot serve metrics on %s:%d: %s", *address,
                      e.strerror or e)
            return
        self.endpoint = endpoint
        warning = exposure_warning(address[0], "regionguard")
        if warning:
            log.warning("%s", warning)
        log.info("regionguard: metrics on http://%s:%d/metrics", *address)

    def _stop(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None

    def not_ready(self) -> str | None:
        """None when the policy is in force and every proxy listener is up, else why not."""
        problem = self.policy.not_enforcing()
        if problem is not None:
            return f"no policy in force: {problem}"
        proxyserver = self._master.addons.get("proxyserver") if self._master else None
        servers = list(getattr(proxyserver, "servers", ()) or ())
        if not servers:
            return "no proxy listener"
        down = [str(s.mode.full_spec) for s in servers if not s.is_running]
        if down:
            return f"proxy listener not up: {', '.join(down)}"
        return None


class RttCollector:
    """Round-trip-time evidence: probes the proxy made (evidence.rtt: probe) and addresses
    measured. Read at scrape time from the prober's plain counters."""

    def __init__(self, prober: Prober, holder: Any) -> None:
        self._prober = prober
        self._holder = holder

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        probes = CounterMetricFamily("regionguard_rtt_probes",
                                     "TCP connects made to measure a round trip before a first "
                                     "decision (answered or not), and first contacts decided "
                                     "without one because too many probes were in flight",
                                     labels=["result"])
        p = self._prober
        probes.add_metric(["answered"], p.answered)
        probes.add_metric(["unanswered"], p.sent - p.answered)
        probes.add_metric(["skipped"], p.skipped)
        yield probes
        holder = self._holder()
        store = holder.engine.rtt if holder is not None else None
        measured = GaugeMetricFamily("regionguard_rtt_addresses",
                                     "Addresses with a measured minimum round-trip time")
        measured.add_metric([], len(store.by_address) if store is not None else 0)
        yield measured
