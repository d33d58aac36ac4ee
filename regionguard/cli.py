"""The `regionguard` command line: the options of every command, defined here and nowhere else.

Each command's options are declared below, beside each other, and each command dispatches to a
plain function of its own module (`regionguard.explain.cmd_explain(args)`, ...) that returns an
exit code from `regionguard.exits`. The dependency runs one way: this module imports the command
modules, and no module of the package imports this one except `regionguard.__main__`
(tests/test_layout.py checks it), so the engine and the front ends stay usable as a library.

A front end whose module cannot be imported (a missing dependency) is reported on stderr and left
out; the other commands still work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from regionguard import __version__, exits
from regionguard.core.errors import ConfigError
from regionguard.core.learned import OFF, default_state_dir
from regionguard.core.paths import default_policy_path
from regionguard.core.policy import parse_hostport
from regionguard.core.prefixes import is_address
from regionguard.dns import DEFAULT_PORT as DNS_PORT
from regionguard.exits import (
    EXIT_BLOCKED,
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_LISTEN,
    EXIT_NFT,
    EXIT_OK,
)


def _exit_codes() -> str:
    """The exit codes of every command, from regionguard.exits: shown under `regionguard --help`."""
    width = max(len(str(code)) for code, _ in exits.MEANINGS)
    lines = [f"  {code:>{width}}  {meaning}" for code, meaning in exits.MEANINGS]
    return ("Exit codes (all commands):\n" + "\n".join(lines) + "\n"
            "Other commands (run, dns, replay, report, coverage, pac) document their codes in\n"
            "`regionguard COMMAND --help`.\n")


Subparsers = argparse._SubParsersAction


# --- options shared by several commands ---------------------------------------------------------


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", "-p", metavar="FILE", default=None,
                        help=f"policy YAML file (default: {default_policy_path()})")


def add_state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", metavar="DIR", default=None,
                        help="where learned evidence (Zoom names regionguard resolved, round "
                        "trips measured) is kept, shared by `run`, `dns`, `probe` and `explain` "
                        f"(default: {default_state_dir()}; '{OFF}': learn nothing)")


def _port_arg(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _dns_listen_arg(text: str) -> str:
    """An address without a port gets DNS_PORT, as the default does; anything else is passed on
    as given, for the DNS command to check (and to name in its error)."""
    parsed = parse_hostport(text, DNS_PORT)
    host = parsed[0] if parsed else ""
    if parsed is None or parsed[1] != DNS_PORT or not (is_address(host) or host == "localhost"):
        return text
    return f"[{host}]:{DNS_PORT}" if ":" in host else f"{host}:{DNS_PORT}"


def _address_arg(text: str) -> str:
    if not is_address(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address")
    return text


# --- the commands, in the order `regionguard --help` lists them -------------------------------
# Each adder imports its command's module first, so a missing dependency adds no half a parser.


def _add_explain_commands(sub: Subparsers) -> None:
    from regionguard import explain

    p = sub.add_parser("explain", help="where is this Zoom endpoint, how do we know, what is decided",
                       description="Explain the region, evidence and decision for addresses or "
                       "hostnames. Addresses work offline; hostnames are resolved with the "
                       "policy's resolver (or --nameserver).")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="IPv4/IPv6 address or hostname")
    add_policy_argument(p)
    p.add_argument("--client", metavar="IP", type=_address_arg,
                   help="client address (selects the policy group)")
    p.add_argument("--port", type=_port_arg, default=443, help="destination port (default 443)")
    p.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--host", metavar="NAME", help="hostname/SNI to pair with address targets")
    p.add_argument("--nameserver", action="append", metavar="HOST:PORT",
                   help="resolve with this server instead of the policy's (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per target per line")
    add_state_dir_argument(p)
    p.set_defaults(func=explain.cmd_explain)

    v = sub.add_parser("validate", help=f"check a policy file; exit {EXIT_OK} if valid, {EXIT_CONFIG} if not")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=explain.cmd_validate)

    r = sub.add_parser("regions", help="list Zoom's regions, groups and aliases")
    r.add_argument("--json", action="store_true")
    add_policy_argument(r)
    r.set_defaults(func=explain.cmd_regions)


def _add_policy(sub: Subparsers) -> None:
    from regionguard import policy_examples

    p = sub.add_parser("policy", help="the example policies shipped with regionguard",
                       description="Print a bundled example policy, to start your own from: "
                       "`regionguard policy example eu-only > my.yaml`.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    e = actions.add_parser("example", help="print a bundled example policy (none named: list them)",
                           description="Print the bundled example policy NAME on standard output; "
                           f"without NAME (or with --list), list the examples. Exit {EXIT_CONFIG}: no such "
                           "example.")
    e.add_argument("name", nargs="?", metavar="NAME",
                   help="the example's name, e.g. eu-only; `default`: the policy used when none "
                   "is given")
    e.add_argument("--list", action="store_true", help="list the bundled examples")
    e.set_defaults(func=policy_examples.cmd_policy_example)


def _add_run(sub: Subparsers) -> None:
    from regionguard.mitm import run

    p = sub.add_parser(
        "run", allow_abbrev=False,
        help="run the enforcing proxy (mitmdump with the regionguard addon)",
        description="Run mitmproxy with the regionguard addon. Unknown options are mitmdump's and "
        "are passed on (e.g. --mode wireguard, --mode transparent, --mode socks5, "
        "--mode local:zoom, --listen-port 8081, --set regionguard_intercept=non-zoom). "
        "Without --listen-host it listens on 127.0.0.1 only.")
    p.add_argument("--policy", metavar="FILE", default=None,
                   help=f"policy YAML file (default: {default_policy_path()})")
    p.add_argument("--audit", metavar="FILE", default=None,
                   help="audit log, one JSON line per decision (= --set regionguard_audit=FILE)")
    p.add_argument("--dns", metavar="HOST:PORT", default=None, type=_dns_listen_arg,
                   help="also run the filtering DNS server (`regionguard dns`) on HOST:PORT "
                   f"beside the proxy, stopped with it (an address alone: port {DNS_PORT})")
    p.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="serve Prometheus /metrics, /healthz and /readyz on HOST:PORT, a port of "
                   "their own (= --set regionguard_metrics=HOST:PORT; default: off; PORT alone: "
                   "127.0.0.1)")
    p.add_argument("--dns-metrics", metavar="HOST:PORT", default=None,
                   help="with --dns: the DNS server's own Prometheus endpoint (its queries, "
                   "cache and upstreams), a port apart from --metrics (default: off)")
    add_state_dir_argument(p)
    # mitmdump's own options come through unparsed, in args.extra
    p.set_defaults(func=run.cmd_run, accepts_extra=True)


def _add_pac(sub: Subparsers) -> None:
    from regionguard.mitm import pac

    p = sub.add_parser("pac", help="write a PAC file sending only Zoom's traffic through the proxy",
                       description="Write a proxy auto-config (PAC) file that sends Zoom's domains "
                       "and address ranges through regionguard and everything else DIRECT. "
                       "`regionguard run` also serves it at http://HOST:PORT/proxy.pac.")
    p.add_argument("--proxy", metavar="HOST:PORT", default="127.0.0.1:8080",
                   help="the proxy's address as clients reach it (default 127.0.0.1:8080)")
    p.add_argument("--policy", "-p", metavar="FILE", default=None,
                   help="also send the endpoints this policy's overrides declare Zoom's")
    p.add_argument("--output", "-o", metavar="FILE", default="-",
                   help="where to write the PAC file (default: standard output)")
    p.set_defaults(func=pac.cmd_pac)


def _add_dns(sub: Subparsers) -> None:
    from regionguard.dns import cli as dns_cli
    from regionguard.dns import tcp

    p = sub.add_parser("dns", help="DNS server (UDP+TCP) that filters Zoom answers by region",
                       description="Forward DNS queries to upstream resolvers and drop every "
                       "address of a Zoom name whose region the policy does not allow. "
                       f"Exit codes: {EXIT_OK} stopped, {EXIT_CONFIG} invalid policy or options, "
                       f"{EXIT_LISTEN} cannot listen.")
    add_policy_argument(p)
    p.add_argument("--listen", "-l", default=f"127.0.0.1:{DNS_PORT}", metavar="HOST:PORT",
                   type=_dns_listen_arg,
                   help=f"address to serve on, UDP and TCP (default 127.0.0.1:{DNS_PORT}; an "
                   f"address alone: port {DNS_PORT}; port 0: any)")
    p.add_argument("--upstream", "-u", action="append", metavar="HOST:PORT",
                   help="upstream resolver, repeatable, tried in order (default: the policy's "
                   "resolver.nameservers, else /etc/resolv.conf)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="answer SERVFAIL when no upstream answered within this time "
                   "(default: the policy's resolver.timeout, 3 s)")
    p.add_argument("--cache-mb", type=float, default=64, metavar="MB",
                   help="memory bound of the answer caches (default 64)")
    p.add_argument("--audit", metavar="FILE", help="append one JSON line per filtered Zoom answer")
    p.add_argument("--audit-flush-ms", type=int, default=250, metavar="MS",
                   help="write audit lines in batches this often, and at exit (default 250; "
                   "0: each line at once)")
    p.add_argument("--no-tcp", action="store_true", help="serve UDP only")
    p.add_argument("--tcp-max-connections", type=int, default=tcp.TCP_MAX_CONNECTIONS,
                   metavar="N",
                   help="open TCP connections at most; when full, the one idle longest is closed "
                   f"for a new one (default {tcp.TCP_MAX_CONNECTIONS})")
    p.add_argument("--tcp-max-per-client", type=int, default=tcp.TCP_MAX_PER_CLIENT,
                   metavar="N",
                   help="open TCP connections per client address at most; beyond, the client's "
                   f"own idle one is closed (default {tcp.TCP_MAX_PER_CLIENT})")
    p.add_argument("--tcp-idle-timeout", type=float, default=tcp.TCP_IDLE_TIMEOUT,
                   metavar="SECONDS",
                   help="close a TCP connection that sends no query for this long "
                   f"(default {tcp.TCP_IDLE_TIMEOUT:g})")
    p.add_argument("--tcp-read-timeout", type=float, default=tcp.TCP_READ_TIMEOUT,
                   metavar="SECONDS",
                   help="close a TCP connection whose query, once begun, is not whole within "
                   f"this time, or that does not take its answer (default {tcp.TCP_READ_TIMEOUT:g})")
    p.add_argument("--no-uvloop", action="store_true",
                   help="use asyncio's own event loop even when uvloop is installed")
    p.add_argument("--trusted-forwarder", action="append", metavar="CIDR", default=[],
                   help="a balancer (e.g. dnsdist) whose PROXY v2 header or EDNS Client Subnet "
                   "names the client, so per-client policy groups apply behind it; repeatable. "
                   "From any other peer both are ignored (and counted)")
    p.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="serve Prometheus /metrics, /healthz and /readyz on HOST:PORT, a port of "
                   "their own (default: off; PORT alone: 127.0.0.1)")
    p.add_argument("--verbose", "-v", action="store_true")
    add_state_dir_argument(p)
    p.set_defaults(func=dns_cli.cmd_dns)


def _add_replay(sub: Subparsers) -> None:
    # the module, not the package: the package's `replay` is the function it re-exports
    from regionguard.replay.flows import FORMATS
    from regionguard.replay.replay import DEFAULT_FAIL_ON, FAIL_CHOICES, cmd_replay

    def fail_on(text: str) -> frozenset[str]:
        items = frozenset(x.strip() for x in text.split(",") if x.strip())
        bad = items - set(FAIL_CHOICES)
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{', '.join(sorted(bad)) or 'nothing'}: choose from {', '.join(FAIL_CHOICES)} "
                "(comma-separated)")
        return items

    p = sub.add_parser(
        "replay", help="decide recorded sessions (mitmproxy flows, HAR, audit logs, pcap) offline",
        description="Replay recorded sessions through the decision core, offline: mitmproxy flow "
        "files (mitmdump -w), HAR files (serverIPAddress is the address), regionguard audit "
        "logs (JSON lines; also holds CONNECT/passthrough flows that mitmproxy does not save) and "
        "packet captures (.pcap, .pcapng: one connection per TCP/UDP flow, SNI from the "
        "ClientHello; their DNS answers are learned evidence for the run). "
        "Never opens a network connection.",
        epilog=f"Exit codes: {EXIT_OK} compliant; {EXIT_BLOCKED} something would be blocked "
        f"(--fail-on); {EXIT_CONFIG} usage error or invalid policy; {EXIT_INPUT} some input "
        f"unreadable (the rest was replayed); {EXIT_BLOCKED | EXIT_INPUT} both {EXIT_BLOCKED} and "
        f"{EXIT_INPUT}.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE",
                   help=".mitm, .har, audit .jsonl(.gz), .pcap or .pcapng")
    add_policy_argument(p)
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="read every FILE as this format (default: detected from the content)")
    p.add_argument("--client", metavar="IP", default=None,
                   help="client address for records that carry none (HAR): selects the policy group")
    p.add_argument("--fail-on", type=fail_on, default=DEFAULT_FAIL_ON, metavar="ACTIONS",
                   help=f"comma-separated actions that fail the replay (exit {EXIT_BLOCKED}): block, "
                   "reroute, monitor (a monitored connection that enforcement would block), or none "
                   "(default: block,reroute)")
    p.add_argument("--all", action="store_true", help="also list connections that are not Zoom's")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--junit", metavar="OUT", default=None, help="also write JUnit XML to OUT")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (auto: on a terminal, for inputs over 8 MB)")
    p.set_defaults(func=cmd_replay)


def _add_report(sub: Subparsers) -> None:
    from regionguard.report import command

    p = sub.add_parser(
        "report", help="summarise audit logs: regions, services, actions, groups; HTML/PNG charts",
        description="Summarise regionguard audit logs (JSON lines, plain or .gz, rotated files "
        "too) in the terminal; optionally write a self-contained HTML report with charts and a "
        "world map, or the charts alone as PNG. Logs are read as a stream (bounded memory).",
        epilog=f"Exit codes: {EXIT_OK} done; {EXIT_CONFIG} usage error or unwritable output; "
        f"{EXIT_INPUT} some input unreadable "
        "(the rest is in the report).")
    p.add_argument("files", nargs="+", metavar="AUDIT.jsonl")
    p.add_argument("--html", metavar="OUT", help="write a self-contained HTML report to OUT")
    p.add_argument("--png", metavar="OUT", help="write the charts as a PNG image (needs matplotlib: "
                   "pip install 'regionguard[report]')")
    p.add_argument("--json", action="store_true", help="print the totals as JSON instead of text")
    p.add_argument("--top", type=int, default=10, metavar="N", help="blocked hosts to list (10)")
    p.add_argument("--title", default="regionguard report", help="title of the HTML/PNG report")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (auto: on a terminal, for inputs over 8 MB)")
    p.set_defaults(func=command.cmd_report)


def _add_coverage(sub: Subparsers) -> None:
    from regionguard import coverage

    p = sub.add_parser(
        "coverage", help="share of Zoom's address space the evidence places; of sessions decided",
        description="The share of Zoom's published IPv4 and IPv6 space that the policy's evidence "
        "places at its min_confidence, by source and by region (exact, address-weighted); with "
        "session files (captures, flow files, HAR, audit logs), the share of their Zoom "
        "connections that were decided, by rule. Offline.",
        epilog=f"Exit codes: {EXIT_OK} done; {EXIT_CONFIG} usage error or invalid policy; "
        f"{EXIT_INPUT} some session input "
        "unreadable (the rest was counted).")
    p.add_argument("files", nargs="*", metavar="CAPTURE_OR_LOG",
                   help="sessions to replay: .pcap, .pcapng, .mitm, .har, audit .jsonl(.gz)")
    add_policy_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=coverage.cmd_coverage)


def _add_invite(sub: Subparsers) -> None:
    from regionguard.invite import command
    from regionguard.invite.formats import FORMATS

    p = sub.add_parser(
        "invite", help="check meeting invitations: dial-in numbers, room connectors, SIP URIs",
        description="Check Zoom meeting invitations (text pasted from the Zoom client, .ics "
        "calendar files, .eml mails) against the policy: each dial-in number by its country "
        "(disabled with its region, Zoom's rule S5), each H.323/SIP room-connector address by "
        "the evidence for where it is (a disabled region's connectors cannot join, S4; the "
        "label beside it is checked too), each SIP URI and meeting link by its host. Offline.",
        epilog=f"Exit codes: {EXIT_OK} every entry allowed; {EXIT_BLOCKED} some entry outside the "
        f"policy; {EXIT_CONFIG} usage error or invalid policy; {EXIT_INPUT} some input unreadable "
        f"(the rest was checked); {EXIT_BLOCKED | EXIT_INPUT} both {EXIT_BLOCKED} and {EXIT_INPUT}.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="invitation: text, .ics or .eml ('-': "
                   "standard input)")
    add_policy_argument(p)
    p.add_argument("--client", metavar="IP", type=_address_arg,
                   help="client address (selects the policy group whose rules apply)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="read every FILE as this format (default: from its name and content)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--fix", metavar="OUT", default=None,
                   help="write the invitation with the entries outside the policy removed to OUT "
                   "(several FILEs: OUT is a directory, one file per FILE)")
    p.set_defaults(func=command.cmd_invite)


def _add_data(sub: Subparsers) -> None:
    from regionguard.data import update

    p = sub.add_parser("data", help="update the data regionguard ships (Zoom, AWS, Oracle ranges)",
                       description="Fetch fresh copies of the public data regionguard ships, check "
                       "them, and install them atomically beside the previous set (kept for "
                       "rollback). Running `run` and `dns` switch to a new set without a restart. "
                       f"Exit codes: {EXIT_OK} done, {EXIT_DATA} failed (the data in force is "
                       "unchanged).")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    u = actions.add_parser("update", help="fetch, check and install a new data set",
                           description="Fetch Zoom's range files, AWS ip-ranges.json and Oracle's "
                           "public_ip_ranges.json (URLs in config/data-sources.yaml), check each, "
                           "and make them the data in force.")
    r = actions.add_parser("rollback", help="put the previous data set back in force")
    s = actions.add_parser("status", help="which data set is in force, and its dates")
    for q in (u, r, s):
        q.add_argument("--data-dir", metavar="DIR", default=None,
                       help="where data sets are kept (default: $REGIONGUARD_DATA_DIR, else "
                       "$XDG_STATE_HOME/regionguard/data); front ends read "
                       "$REGIONGUARD_DATA_DIR, so give them the same directory")
    u.add_argument("--rollback", action="store_true",
                   help="fetch nothing: put the previous set back (as `data rollback`)")
    u.add_argument("--sources", metavar="FILE", default=None,
                   help="a list of URLs shaped like config/data-sources.yaml, in its place")
    u.add_argument("--mirror", action="append", metavar="KEY=URL",
                   help="fetch one file from a mirror; KEY: aws, oracle or a Zoom file name "
                   "(Zoom.txt, ZoomPhone.txt, ...); repeatable")
    u.add_argument("--mirror-base", metavar="URL", default=None,
                   help="fetch every file from URL/<its file name> (a local mirror)")
    u.add_argument("--timeout", type=float, default=update.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"per-request timeout (default {update.DEFAULT_TIMEOUT:g})")
    u.add_argument("--retries", type=int, default=update.DEFAULT_RETRIES, metavar="N",
                   help="retries after a network error, a timeout or a 5xx answer "
                   f"(default {update.DEFAULT_RETRIES})")
    u.add_argument("--max-shrink", type=float, default=update.DEFAULT_MAX_SHRINK,
                   metavar="FRACTION",
                   help="refuse a source with this fraction fewer entries than the data in force "
                   f"(default {update.DEFAULT_MAX_SHRINK:g})")
    u.add_argument("--force", action="store_true", help="accept a source that shrank that much")
    u.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (default auto: when stderr is a terminal)")
    p.set_defaults(func=update.cmd_data)


def _add_probe(sub: Subparsers) -> None:
    from regionguard.probe import command

    p = sub.add_parser("probe", help="measure round trips to addresses: physics bounds where "
                       "they can be", description="Send TCP connects (SYN only) to each address "
                       "and keep the minimum round-trip time with the learned evidence; print "
                       "the radius it allows around the client site and the Zoom sites inside. "
                       "Run it at the client site the policy names (client.site).")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS", type=_address_arg,
                   help="IPv4/IPv6 address")
    add_policy_argument(p)
    p.add_argument("--client", metavar="IP", type=_address_arg,
                   help="a client address: its group's client.site is where this host stands")
    p.add_argument("--port", type=_port_arg, action="append",
                   help="TCP port to connect to (repeatable; default 443 and 8801, Zoom's)")
    p.add_argument("--count", type=int, choices=range(1, 11), default=3, metavar="N",
                   help="rounds of connects per port (1-10, default 3): the minimum is kept")
    p.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS",
                   help="how long to wait for each answer (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per address per line")
    add_state_dir_argument(p)
    p.set_defaults(func=command.cmd_probe)


def _add_nft(sub: Subparsers) -> None:
    from regionguard.nft import command
    from regionguard.nft.ruleset import HOOKS, VERDICTS

    p = sub.add_parser(
        "nft", help="enforce in the kernel: compile the policy to an nftables table",
        description="Compile the policy and its evidence into table inet regionguard: the "
        "Zoom destinations each client group is blocked from (by address, transport and "
        "port, as the proxy and the DNS filter decide a bare address), dropped in the kernel. "
        "Covers what no proxy sees, e.g. Zoom's UDP media. The table is replaced in one "
        "transaction; no other table is touched.",
        epilog=f"Exit codes: {EXIT_OK} done; {EXIT_CONFIG} invalid policy or options; {EXIT_NFT} nft "
        "could not do it (not "
        "root, nft not installed, or the kernel refused the ruleset: nothing changed).")
    add_policy_argument(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--print", action="store_true",
                      help="print the ruleset (nft JSON, as `nft -j -f` reads it) on standard "
                      "output and a summary on standard error; needs no root")
    what.add_argument("--check", action="store_true", help="have nft check the ruleset "
                      "(nft -c): nothing is loaded (root)")
    what.add_argument("--apply", action="store_true", help="load the ruleset, replacing table "
                      "inet regionguard in one transaction (root)")
    what.add_argument("--delete", action="store_true",
                      help="remove table inet regionguard, and nothing else (root)")
    what.add_argument("--watch", action="store_true",
                      help="load, then keep the table current until stopped: policy and data "
                      "changes replace it, learned placements update its elements; until the "
                      "policy first loads, every Zoom range is blocked (fail closed) (root)")
    p.add_argument("--hook", choices=HOOKS, default="forward",
                   help="forward: on a gateway, for the clients it routes (default); output: on "
                   "a workstation, for its own traffic")
    p.add_argument("--verdict", choices=VERDICTS, default="drop",
                   help="drop (default), or reject: TCP reset, ICMP port unreachable for UDP")
    p.add_argument("--log-prefix", metavar="TEXT", default=None,
                   help="also log each blocked packet to the kernel log with this prefix")
    p.add_argument("--priority", type=int, default=0, metavar="N",
                   help="the base chain's priority (default 0, filter)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="--watch: how often to look for changes (default 1)")
    p.add_argument("--learned-every", type=float, default=5.0, metavar="SECONDS",
                   help="--watch: apply learned placements at most this often (default 5; each "
                   "application recompiles the table, a second or two of CPU)")
    p.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="--watch: serve Prometheus /metrics (the table's counters), /healthz and "
                   "/readyz on HOST:PORT (PORT alone: 127.0.0.1)")
    add_state_dir_argument(p)
    p.set_defaults(func=command.cmd_nft)


# (the commands an adder adds, the adder): explain and friends are the core's; run and pac the
# mitmproxy front end's; dns the DNS front end's; replay, report, coverage the offline tools.
_COMMANDS: tuple[tuple[str, Callable[[Subparsers], None]], ...] = (
    ("explain, validate, regions", _add_explain_commands),
    ("probe", _add_probe),
    ("policy", _add_policy),
    ("run", _add_run),
    ("pac", _add_pac),
    ("dns", _add_dns),
    ("replay", _add_replay),
    ("report", _add_report),
    ("coverage", _add_coverage),
    ("invite", _add_invite),
    ("data", _add_data),
    ("nft", _add_nft),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regionguard",
        description="Verify and enforce a Zoom data-center region policy.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_exit_codes(),
    )
    parser.add_argument("--version", action="version", version=f"regionguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for commands, add in _COMMANDS:
        try:
            add(sub)
        except ImportError as e:  # a front end whose dependency is missing: say so, keep the rest
            print(f"regionguard: {commands} unavailable: {e}", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or EXIT_OK)
    except ConfigError as e:
        print(f"regionguard: invalid configuration:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


__all__ = ["add_policy_argument", "add_state_dir_argument", "build_parser", "main"]
