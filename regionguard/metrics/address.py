"""`--metrics HOST:PORT`: where the metrics endpoint listens. Loopback unless the operator names
another address, and never the front end's own port."""

from __future__ import annotations

import ipaddress

from regionguard.core.errors import Problem
from regionguard.core.policy import parse_hostport
from regionguard.core.prefixes import is_address


def parse_metrics_address(text: str, option: str = "--metrics",
                          taken: dict[int, str] | None = None) -> tuple[tuple[str, int] | None,
                                                                    Problem | None]:
    """(host, port) from HOST:PORT, or (None, the problem). A bare PORT or :PORT means
    127.0.0.1. `taken`: port → what listens there already (the proxy's, the DNS server's)."""
    text = text.strip()
    if text.isdigit() or (text.startswith(":") and text[1:].isdigit()):
        text = "127.0.0.1:" + text.lstrip(":")
    hostport = parse_hostport(text, 0) if text else None
    if hostport is None:
        return None, Problem("command line", option, f"{text!r} is not HOST:PORT",
                             f"write e.g. {option} 127.0.0.1:9153 or {option} [::1]:9153")
    host, port = hostport
    if not is_address(host) and host != "localhost":
        return None, Problem("command line", option, f"{host!r} is not an IP address",
                             f"listen on an address: {option} 127.0.0.1:9153 (0.0.0.0: every "
                             "IPv4 address)")
    if taken and port in taken:
        return None, Problem("command line", option,
                             f"port {port} is the {taken[port]} port already",
                             f"give the metrics a port of their own, e.g. {option} "
                             f"{host if ':' not in host else f'[{host}]'}:9153")
    return (host, port), None


def exposure_warning(host: str, program: str) -> str | None:
    """The start-up warning for metrics served beyond loopback; None on loopback."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if (getattr(address, "ipv4_mapped", None) or address).is_loopback:
            return None
    except ValueError:
        if host.lower() == "localhost":
            return None
    return (f"{program}: WARNING: metrics served on {host}, beyond loopback: every host that "
            "reaches this address can read them (policy groups, rules, regions, counts).\n"
            "    fix: firewall the port to your Prometheus server, or serve on 127.0.0.1")
