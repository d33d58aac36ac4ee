"""The proxy's DNS addons: regionguard.mitm.dns_filter's, or, when that module cannot be
imported, a stand-in that refuses every query rather than relay DNS unfiltered."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from mitmproxy import dns as mdns

log = logging.getLogger("regionguard")


class DnsFilterMissing:
    """Stands in for the DNS filter when it cannot be loaded. Without it, DNS through the proxy
    (DNS, WireGuard and local modes) would reach clients unfiltered, disallowed Zoom addresses
    included: every DNS query is refused instead, and the log says why."""

    name = "regionguard_dns_missing"

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self._said = False

    def dns_request(self, flow: Any) -> None:
        if not self._said:
            self._said = True
            log.error("regionguard: %s; every DNS query through the proxy is refused", self.problem)
        flow.response = flow.request.fail(mdns.response_codes.REFUSED)


def dns_addons() -> list:
    """The DNS filter's addons (regionguard.mitm.dns_filter); when it cannot be loaded,
    DnsFilterMissing, which refuses DNS rather than relay it unfiltered."""
    try:
        module = importlib.import_module("regionguard.mitm.dns_filter")
    except ImportError as e:   # not installed: said at the first query, which it refuses
        return [DnsFilterMissing(f"regionguard.mitm.dns_filter cannot be imported ({e})")]
    except Exception as e:  # noqa: BLE001 - a broken DNS addon must not take the proxy down
        log.exception("regionguard: regionguard.mitm.dns_filter failed to load")
        return [DnsFilterMissing(f"regionguard.mitm.dns_filter failed to load ({type(e).__name__}: {e})")]
    return module.make_addons()
