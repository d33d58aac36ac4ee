"""The addon that says who may use the proxy: clients outside the policy's `gateway.clients` are
refused before they send anything, and a proxy open beyond loopback without that list is
pointed out at start-up."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from mitmproxy import ctx
from mitmproxy.proxy import mode_specs

from regionguard.audit.log import timestamp
from regionguard.mitm.enforce import plain_address
from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.verdicts import mode_name

log = logging.getLogger("regionguard")

REFUSED_REPORT_EVERY = 60.0   # seconds between reports of one refused client address
REFUSED_TRACKED = 4096        # refused addresses remembered for that


class GatewayAccess:
    name = "regionguard_gateway"

    def __init__(self, policy: PolicyLoader) -> None:
        self.policy = policy
        self._refused: dict[str, tuple[float, int]] = {}   # address → (last reported, since)

    def running(self) -> None:
        if self.policy.not_enforcing() is None:
            self._warn_open_gateway()

    def client_connected(self, client: Any) -> None:
        """Refuse a client outside the policy's `gateway.clients` before it sends anything."""
        holder = self.policy.holder
        if holder is None:
            return   # not enforcing: the guard blocks Zoom for everyone
        peer = client.peername[0] if client.peername else None
        try:
            allowed = holder.engine.policy.gateway.client_allowed(peer)
        except Exception:  # noqa: BLE001 - cannot tell: refuse
            log.exception("regionguard: client check failed for %s: refused", peer)
            allowed = False
        if allowed:
            return
        client.error = f"regionguard: client {peer} is not in the policy's gateway.clients"
        self._report_refused(peer, client, holder.engine.policy.version_id)

    def _report_refused(self, peer: str | None, client: Any, version: str) -> None:
        """One log and audit line per refused address per REFUSED_REPORT_EVERY seconds, with the
        count refused since: a client that hammers the proxy cannot flood the log."""
        now = time.monotonic()
        key = peer or "?"
        last, count = self._refused.get(key, (0.0, 0))
        if last and now - last < REFUSED_REPORT_EVERY:
            self._refused[key] = (last, count + 1)
            return
        if key not in self._refused and len(self._refused) >= REFUSED_TRACKED:
            self._refused.clear()   # bounded memory: forget, at worst report some again
        self._refused[key] = (now, 0)
        log.warning("regionguard: refused client %s (not in gateway.clients)%s", key,
                    f"; {count} more refused since the last report" if count else "")
        self.policy.audit.write_raw({"time": timestamp(), "event": "client-refused", "client": peer,
                                     "mode": mode_name(client), "front_end": "mitmproxy",
                                     "refused_since_last_report": count, "policy_version": version})

    def _warn_open_gateway(self) -> None:
        """Listening beyond loopback with no `gateway.clients`: anyone who reaches the address
        may use the proxy. Allowed (a lab), but said at start-up."""
        holder = self.policy.holder
        if holder is None or holder.engine.policy.gateway.restricted:
            return
        for host, port, name in listen_addresses():
            if not _loopback_only(host):
                log.warning("regionguard: warning: %s listens on %s, beyond loopback, and the "
                            "policy has no gateway.clients: anyone who reaches it may use it; "
                            "list the client networks allowed in the policy's gateway.clients "
                            "(e.g. [10.0.0.0/8])", name, hostport(host or "*", port))


def listen_addresses() -> list[tuple[str, int, str]]:
    """(host, port, mode) for each mode that listens on a socket; host "" = every address."""
    out = []
    for spec in ctx.options.mode:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue
        if mode.type_name == "local":
            continue   # redirects local processes; listens on no address
        out.append((mode.listen_host(ctx.options.listen_host),
                    mode.listen_port(ctx.options.listen_port) or 0, mode.type_name))
    return out


def _loopback_only(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(plain_address(host) or "").is_loopback
    except ValueError:
        return False   # "" (every address) or a name: assume it reaches the network


def hostport(host_header: str, port: int) -> str:
    """HOST:PORT from a Host header or an address, with IPv6 in brackets."""
    if ":" in host_header and not host_header.startswith("[") and host_header.count(":") == 1:
        return host_header
    if host_header.startswith("[") and "]:" in host_header:
        return host_header
    if ":" in host_header:   # bare IPv6
        return f"[{host_header}]:{port}"
    return f"{host_header}:{port}"
