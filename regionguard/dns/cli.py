"""`regionguard dns`, the command: its options checked into a Config, and the server run with
them until SIGINT or SIGTERM. The server itself is regionguard.dns.server (which never imports
this module).

Its arguments are defined in regionguard/cli.py, with every command's. Exit codes
(regionguard/exits.py): 0 stopped, 2 invalid policy or options, 4 (EXIT_LISTEN) cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import sys
import time
from pathlib import Path

import dns.resolver

from regionguard import _compiled
from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.audit.log import check_audit_path
from regionguard.core.errors import ConfigError, Problem
from regionguard.core.learned import open_state
from regionguard.core.paths import policy_path
from regionguard.core.policy import parse_hostport
from regionguard.core.prefixes import is_address
from regionguard.dns import DEFAULT_PORT
from regionguard.dns.server import Config, DnsServer
from regionguard.exits import EXIT_LISTEN, EXIT_OK
from regionguard.metrics.address import exposure_warning, parse_metrics_address


class ConsoleFormatter(logging.Formatter):
    """mitmproxy's console format, `[HH:MM:SS.mmm] message` with no level name: the proxy and
    this server print regionguard's lines alike (`regionguard: ...`, `regionguard dns: ...`), so
    one eye, or one grep, reads both."""

    def format(self, record: logging.LogRecord) -> str:
        return stamped(super().format(record), record.created)


def stamped(message: str, when: float | None = None) -> str:
    when = time.time() if when is None else when
    return f"[{time.strftime('%H:%M:%S', time.localtime(when))}.{int(when % 1 * 1000):03d}] {message}"


def say(message: str) -> None:
    """A start-up or exit line on the console, in the format of the log records."""
    print(stamped(message), file=sys.stderr, flush=True)


FD_SPARE = 64                  # descriptors beside the TCP clients: sockets upstream, audit, ...


def system_upstreams() -> tuple[tuple[str, int], ...]:
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        return ()
    return tuple((str(ns), 53) for ns in resolver.nameservers)


def _parse_listen(text: str) -> tuple[str, int] | None:
    """HOST:PORT, where port 0 (any free port, for tests and benchmarks) is allowed too."""
    if text.endswith(":0"):
        hp = parse_hostport(text[:-2] + ":53", DEFAULT_PORT)
        return (hp[0], 0) if hp else None
    return parse_hostport(text, DEFAULT_PORT)


def build_config(args: argparse.Namespace, holder: EngineHolder) -> Config:
    problems = []
    listen = _parse_listen(args.listen)
    if listen is None:
        problems.append(Problem("command line", "--listen", f"{args.listen!r} is not HOST:PORT",
                                "write e.g. --listen 127.0.0.1:5353 or --listen [::1]:53"))
    elif not is_address(listen[0]) and listen[0] != "localhost":
        # a name would be looked up at bind time: a bad option, not a failure to listen
        problems.append(Problem("command line", "--listen", f"{listen[0]!r} is not an IP address",
                                "listen on an address: --listen 127.0.0.1:5353, [::1]:53, "
                                "0.0.0.0:53 (every IPv4 address)"))
        listen = None
    upstreams = []
    for text in args.upstream or ():
        hp = parse_hostport(text, 53)
        if hp is None or not is_address(hp[0]):
            problems.append(Problem("command line", "--upstream",
                                    f"{text!r} is not ADDRESS:PORT" if hp is None else
                                    f"{hp[0]!r} is not an IP address (a resolver is reached by address)",
                                    "write e.g. --upstream 9.9.9.9 or --upstream 127.0.0.1:5300"))
        else:
            upstreams.append(hp)
    source = "--upstream"
    if not upstreams:
        upstreams, source = list(holder.engine.policy.resolver.nameservers), "resolver.nameservers"
    if not upstreams:
        upstreams, source = list(system_upstreams()), "/etc/resolv.conf"
    if not upstreams:
        problems.append(Problem("command line", "--upstream", "no upstream DNS server: none given "
                                "and none in the policy's resolver.nameservers or /etc/resolv.conf",
                                "give one with --upstream HOST:PORT"))
    if listen is not None and listen in upstreams:
        problems.append(Problem("command line", source, f"upstream {listen[0]}:{listen[1]} is this "
                                "server's own address: every query would loop",
                                "forward to another resolver (--upstream HOST:PORT)"))
    if args.timeout is not None and args.timeout <= 0:
        problems.append(Problem("command line", "--timeout", f"{args.timeout} is not positive",
                                "give seconds, e.g. --timeout 2"))
    if args.cache_mb <= 0:
        problems.append(Problem("command line", "--cache-mb", f"{args.cache_mb} is not positive",
                                "give megabytes, e.g. --cache-mb 64"))
    if not 0 <= args.audit_flush_ms <= 60_000:
        problems.append(Problem("command line", "--audit-flush-ms",
                                f"{args.audit_flush_ms} is not between 0 and 60000",
                                "give milliseconds, e.g. --audit-flush-ms 250 (0: write at once)"))
    problems.extend(_tcp_problems(args))
    forwarders = []
    for text in getattr(args, "trusted_forwarder", None) or ():
        try:
            forwarders.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            problems.append(Problem("command line", "--trusted-forwarder",
                                    f"{text!r} is not an address or CIDR prefix",
                                    "give the balancer's address or network, e.g. "
                                    "--trusted-forwarder 10.0.0.5 or --trusted-forwarder 10.0.0.0/29"))
    unwritable = check_audit_path(args.audit) if args.audit else None
    if unwritable is not None:   # said now, before listening, not at the first lost line
        problems.append(unwritable)
    if problems or listen is None:
        raise ConfigError(problems)
    timeout = args.timeout if args.timeout is not None else holder.engine.policy.resolver.timeout
    return Config(listen, tuple(upstreams), float(timeout), int(args.cache_mb * 1024 * 1024),
                  args.audit, not args.no_tcp, args.audit_flush_ms / 1000,
                  args.tcp_max_connections, args.tcp_max_per_client,
                  float(args.tcp_idle_timeout), float(args.tcp_read_timeout), tuple(forwarders))


def _tcp_problems(args: argparse.Namespace) -> list[Problem]:
    """The TCP bounds: whole numbers of connections, seconds in a sane range, and enough file
    descriptors for every connection allowed (the soft limit is raised when the hard one lets
    it): past the limit the server could not accept at all, UDP upstream sockets included."""
    problems = []
    for flag, value, example in (("--tcp-max-connections", args.tcp_max_connections, 512),
                                 ("--tcp-max-per-client", args.tcp_max_per_client, 32)):
        if not 1 <= value <= 1_000_000:
            problems.append(Problem("command line", flag, f"{value} is not between 1 and 1000000",
                                    f"give a number of connections, e.g. {flag} {example}"))
    for flag, seconds, example in (("--tcp-idle-timeout", args.tcp_idle_timeout, 10),
                                   ("--tcp-read-timeout", args.tcp_read_timeout, 2)):
        if not 0 < seconds <= 3600:   # also false for NaN
            problems.append(Problem("command line", flag, f"{seconds} is not between 0 and 3600",
                                    f"give seconds, e.g. {flag} {example}"))
    if not problems and not args.no_tcp:
        needed = args.tcp_max_connections + FD_SPARE
        have = _raise_fd_limit(needed)
        if have < needed:
            problems.append(Problem(
                "command line", "--tcp-max-connections",
                f"{args.tcp_max_connections} connections need {needed} file descriptors, and the "
                f"limit is {have}",
                f"give at most --tcp-max-connections {max(1, have - FD_SPARE)}, or raise the "
                "limit (ulimit -n; LimitNOFILE= under systemd)"))
    return problems


def _raise_fd_limit(needed: int) -> int:
    """Raise the soft limit on open files to `needed` if it is lower and the hard limit allows;
    the soft limit in force after."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ImportError, ValueError, OSError):
        return needed   # no such limit here (not POSIX), or it cannot be read: nothing to check
    return needed if soft == resource.RLIM_INFINITY else int(soft)


def metrics_address(args: argparse.Namespace, listen: tuple[str, int]) -> tuple[str, int] | None:
    """--metrics HOST:PORT checked (never the DNS port); None when off."""
    if getattr(args, "metrics", None) is None:
        return None
    address, problem = parse_metrics_address(args.metrics,
                                             taken={listen[1]: "DNS"} if listen[1] else None)
    if problem is not None:
        raise ConfigError([problem])
    return address


def cmd_dns(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler()
    handler.setFormatter(ConsoleFormatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        handlers=[handler])
    learned = open_state(args.state_dir)   # upstream answers teach it; the proxy reads it too
    holder = EngineHolder(policy_path(args.policy), learned)
    config = build_config(args, holder)
    metrics = metrics_address(args, config.listen)
    loop_factory = None
    if not args.no_uvloop:
        try:   # optional: uvloop roughly halves the cost of each packet on the cache-hit path
            import uvloop
            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_main(holder, config, metrics))
    except MetricsListenError as e:
        say(f"regionguard dns: cannot serve metrics on {e.address[0]}:{e.address[1]}: "
              f"{e.reason}\n    fix: choose a free port with --metrics HOST:PORT")
        return EXIT_LISTEN
    except OSError as e:
        say(f"regionguard dns: cannot listen on {config.listen[0]}:{config.listen[1]}: "
              f"{e.strerror or e}\n    fix: choose a free port with --listen HOST:PORT "
              "(ports below 1024 need root)")
        return EXIT_LISTEN
    finally:
        if learned is not None:
            learned.close()


def open_resolver_warning(host: str, restricted: bool) -> str | None:
    """The start-up warning for a server that anyone who reaches it may use: listening beyond
    loopback with no gateway.clients in the policy. None when there is nothing to say."""
    if restricted:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if (mapped or address).is_loopback:
            return None
    except ValueError:   # a host name: only localhost is known to be loopback
        if host.lower().rstrip(".") == "localhost":
            return None
    return (f"regionguard dns: WARNING: listening on {host}, beyond loopback, and the policy has "
            "no gateway.clients: every host that reaches this address may use this resolver "
            "(an open resolver, usable for amplification attacks).\n"
            "    fix: list the client networks allowed under `gateway: {clients: [...]}` in the "
            "policy (e.g. clients: [10.0.0.0/8]), or listen on 127.0.0.1")


class MetricsListenError(Exception):
    def __init__(self, address: tuple[str, int], reason: str) -> None:
        super().__init__(reason)
        self.address, self.reason = address, reason


async def _main(holder: EngineHolder, config: Config,
                metrics: tuple[str, int] | None = None) -> int:
    server = DnsServer(holder, config)
    endpoint = None
    if metrics is not None:
        # up before the DNS listener: /healthz answers, /readyz says 503 until the listener is up
        from regionguard.dns.metrics import endpoint as metrics_endpoint

        endpoint = metrics_endpoint(server, metrics)
        try:
            endpoint.start()
        except OSError as e:
            raise MetricsListenError(metrics, e.strerror or str(e)) from None
        warning = exposure_warning(metrics[0], "regionguard dns")
        if warning:
            say(warning)
    try:
        return await _serve(server, holder, config, metrics)
    finally:
        if endpoint is not None:
            endpoint.stop()


async def _serve(server: DnsServer, holder: EngineHolder, config: Config,
                 metrics: tuple[str, int] | None) -> int:
    host, port = await server.start()
    # The collector tuned for a long-lived cache server (README, "Speed"): the start-up objects
    # frozen out of its walks, young collections ten times rarer than the default.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    ups = ", ".join(f"{h}:{p}" for h, p in config.upstreams)
    shown = f"[{host}]" if ":" in host else host
    warning = open_resolver_warning(host, holder.engine.policy.gateway.restricted)
    if warning:
        say(warning)
    say(f"regionguard dns: listening on {shown}:{port} ({'udp+tcp' if config.tcp else 'udp'}); "
        f"upstream {ups}; policy {holder.path} ({holder.engine.policy.version_id}); "
        f"hot path {_compiled.status()}"
        + (f"; metrics on http://{_shown(metrics)}/metrics" if metrics else ""))
    say(audit_line(config.audit_path))
    if config.trusted_forwarders:
        say("regionguard dns: clients named by PROXY v2 headers and EDNS Client Subnet from "
            f"trusted forwarders {', '.join(config.trusted_forwarders)} only")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return EXIT_OK


def audit_line(path: str | None) -> str:
    """The start-up line saying where answers are audited, or that they are not and how to."""
    if path:
        return f"regionguard dns: audit: decisions logged to {Path(path).resolve()} (one JSON line each)"
    return ("regionguard dns: audit: off, decisions are not logged to a file; to keep them: "
            "regionguard dns --audit FILE")


def _shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["Config", "build_config", "cmd_dns", "system_upstreams"]
