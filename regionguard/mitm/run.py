"""`regionguard run`: mitmproxy (mitmdump) with the regionguard addon, and `regionguard pac`.

    regionguard run                      explicit proxy on 127.0.0.1:8080, bundled default policy
    regionguard run --policy eu.yaml --audit audit.jsonl --mode wireguard --listen-host 0.0.0.0

Every option regionguard does not know is mitmdump's and is passed on unchanged (`--mode`,
`--listen-host`, `--listen-port`, `--set ...`). The proxy listens on loopback unless the operator
names another address, so a gateway mode never opens to the network by accident.

Never a proxy without its policy: every regionguard_* value (command line and mitmproxy's
config.yaml) is checked with the addon's own rules before mitmproxy starts, each option is
passed once, the addon is put in mitmproxy's addon chain directly (not as a `-s` script, which
mitmproxy drops when it fails), and nothing listens until the addon says its policy is in force.
Exit codes: 0 normal stop, 2 invalid policy or option, otherwise mitmdump's.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import yaml

from regionguard.audit.log import check_audit_path
from regionguard.core.errors import ConfigError
from regionguard.core.paths import default_policy_path
from regionguard.core.policy import load_policy, parse_hostport
from regionguard.core.prefixes import is_address
from regionguard.dns import DEFAULT_PORT as DNS_PORT
from regionguard.exits import EXIT_CONFIG, EXIT_OK
from regionguard.metrics.address import parse_metrics_address
from regionguard.mitm.options import PREFIX, OptionProblem, parse_sets, parse_value

ADDON = Path(__file__).resolve().parents[2] / "addons" / "regionguard_addon.py"


def _gives(extra: list[str], *names: str) -> bool:
    """Did the operator pass one of these mitmdump options (as --opt, --opt=v or --set opt=v)?"""
    for i, arg in enumerate(extra):
        if arg in names or any(arg.startswith(n + "=") for n in names):
            return True
        if arg == "--set" and i + 1 < len(extra):
            key = extra[i + 1].split("=", 1)[0]
            if "--" + key.replace("_", "-") in names:
                return True
    return False


def _modes(extra: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(extra):
        if arg in ("--mode", "-m") and i + 1 < len(extra):
            out.append(extra[i + 1])
        elif arg.startswith("--mode="):
            out.append(arg.split("=", 1)[1])
    return out


def local_mode_problem(modes: list[str]) -> str | None:
    """Why `--mode local` cannot run here, or None. mitmproxy's own error is a stack trace."""
    if not any(m == "local" or m.startswith("local:") or m.startswith("local@") for m in modes):
        return None
    if sys.platform != "linux":
        return None   # macOS and Windows have their own redirectors; mitmproxy explains itself
    if not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
        return ("--mode local needs cgroup v2 (a unified /sys/fs/cgroup) on Linux, and this system "
                "does not have it; use the explicit proxy (default), a PAC file, or --mode wireguard")
    if os.geteuid() != 0:
        return "--mode local needs root on Linux (it loads an eBPF program); run it as root"
    if importlib.util.find_spec("mitmproxy_linux") is None:
        return "--mode local needs the mitmproxy-linux package: pip install mitmproxy-linux"
    return None


def _given_sets(extra: list[str]) -> tuple[list[str], list[str]]:
    """The `--set` specifications and `-s` scripts among mitmdump's options, read as mitmdump's
    own parser reads those two (`--set X`, `--set=X`, `-s X`, `--scripts X`)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--set", action="append", dest="setoptions", default=[])
    p.add_argument("-s", "--scripts", action="append", dest="scripts", default=[])
    known, _ = p.parse_known_args(extra)
    return known.setoptions, known.scripts


class RunOptionError(Exception):
    """An option of `regionguard run` is bad; the message says which and how to fix it."""


def checked_options(args: argparse.Namespace, extra: list[str]) -> tuple[Path, dict[str, object]]:
    """(the policy file, the regionguard_* options given with --set), every value checked with
    the addon's own rules (regionguard.mitm.options) before mitmproxy starts, so a bad one can
    never make mitmproxy drop the addon. Each option may come from one place only."""
    specs, scripts = _given_sets(extra)
    values, problems = parse_sets(specs)
    in_file, file_problems = _config_file_options(specs)
    problems += file_problems
    for name in sorted(in_file.keys() & values.keys()):
        problems.append(f"{name}: given twice (--set and the mitmproxy config file); give it once")
    if problems:
        raise RunOptionError("\n".join(problems))
    given_policy = ("regionguard_policy" in values or "regionguard_policy" in in_file)
    given_audit = ("regionguard_audit" in values or "regionguard_audit" in in_file)
    given_state = ("regionguard_state_dir" in values or "regionguard_state_dir" in in_file)
    values = {**in_file, **values}
    for script in scripts:
        if Path(script).expanduser().resolve() == ADDON:
            raise RunOptionError(f"-s {script}: regionguard run loads its addon itself; remove "
                                 "the -s option (or run mitmdump -s ... directly)")
    if args.policy is not None and given_policy:
        raise RunOptionError("the policy is given twice (--policy and --set regionguard_policy); "
                             "give it once, with --policy FILE")
    if args.audit is not None and given_audit:
        raise RunOptionError("the audit log is given twice (--audit and --set regionguard_audit); "
                             "give it once, with --audit FILE")
    if getattr(args, "metrics", None) is not None and "regionguard_metrics" in values:
        raise RunOptionError("the metrics address is given twice (--metrics and --set "
                             "regionguard_metrics); give it once, with --metrics HOST:PORT")
    metrics = getattr(args, "metrics", None) or values.get("regionguard_metrics")
    if metrics:
        _check_metrics(str(metrics), "--metrics" if getattr(args, "metrics", None)
                       else "regionguard_metrics", extra, getattr(args, "dns", None))
    dns_metrics = getattr(args, "dns_metrics", None)
    if dns_metrics is not None:
        if not getattr(args, "dns", None):
            raise RunOptionError("--dns-metrics is the DNS server's endpoint: it needs --dns "
                                 "HOST:PORT too (the proxy's own is --metrics)")
        _check_metrics(str(dns_metrics), "--dns-metrics", extra, args.dns,
                       str(metrics) if metrics else None)
    if getattr(args, "state_dir", None) is not None and given_state:
        raise RunOptionError("the state directory is given twice (--state-dir and --set "
                             "regionguard_state_dir); give it once, with --state-dir DIR")
    if args.policy is not None:
        policy = Path(args.policy).resolve()
    elif values.get("regionguard_policy"):
        policy = Path(str(values["regionguard_policy"])).resolve()
    else:
        policy = default_policy_path()
    return policy, values


def _listen_port(extra: list[str]) -> int:
    """The proxy's port as mitmdump will take it from its options (8080 unless given)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--listen-port", "-p", dest="port", default=None)
    known, _ = p.parse_known_args(extra)
    port = known.port
    for spec in _given_sets(extra)[0]:
        name, _eq, value = spec.partition("=")
        if name == "listen_port":
            port = value
    return int(port) if port and str(port).isdigit() else 8080


def _check_metrics(text: str, option: str, extra: list[str], dns: str | None,
                   proxy_metrics: str | None = None) -> None:
    """A metrics address: HOST:PORT, and a port of its own (not the proxy's, not --dns's, not
    the proxy's metrics'). Beyond loopback, the endpoint warns when it starts."""
    taken = {_listen_port(extra): "proxy's"}
    dns_address = parse_hostport(dns, DNS_PORT) if dns else None
    if dns_address is not None:
        taken[dns_address[1]] = "DNS server's (--dns)"
    if proxy_metrics:
        proxy_address, _ = parse_metrics_address(proxy_metrics)
        if proxy_address is not None:
            taken[proxy_address[1]] = "proxy's metrics (--metrics)"
    _address, problem = parse_metrics_address(text, option, taken)
    if problem is not None:
        raise RunOptionError(str(problem))


def _config_file_options(specs: list[str]) -> tuple[dict[str, object], list[str]]:
    """regionguard_* options in mitmproxy's config file (CONFDIR/config.yaml, which mitmproxy
    reads after --set and lets override it), checked like the command line's."""
    confdir = Path("~/.mitmproxy")
    for spec in specs:
        name, eq, value = spec.partition("=")
        if name == "confdir" and eq:
            confdir = Path(value)
    values: dict[str, object] = {}
    problems: list[str] = []
    for path in (confdir.expanduser() / "config.yaml", confdir.expanduser() / "config.yml"):
        try:
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            problems.append(f"{path}: cannot read mitmproxy's config file: {e}")
            continue
        if not isinstance(data, dict):
            continue
        for name, raw in data.items():
            if not str(name).startswith(PREFIX):
                continue
            try:
                values[str(name)] = parse_value(str(name), raw)
            except OptionProblem as e:
                problems.append(f"{path}: {e}")
    return values, problems


def mitmdump_args(args: argparse.Namespace, extra: list[str], policy: Path,
                  values: dict[str, object]) -> list[str]:
    """mitmdump's command line: the operator's options, plus the policy and audit options when
    the operator gave them as --policy/--audit (never a second time)."""
    argv = []
    if "regionguard_policy" not in values:
        argv += ["--set", f"regionguard_policy={policy}"]
    if args.audit:
        argv += ["--set", f"regionguard_audit={Path(args.audit).resolve()}"]
    state_dir = getattr(args, "state_dir", None)
    if state_dir:
        argv += ["--set", f"regionguard_state_dir={_state_dir_value(state_dir)}"]
    if getattr(args, "metrics", None):
        argv += ["--set", f"regionguard_metrics={args.metrics}"]
    if not _gives(extra, "--listen-host"):
        argv += ["--listen-host", "127.0.0.1"]
    return argv + list(extra)


def load_addon_module() -> ModuleType:
    """The module that assembles the proxy's addons (regionguard.mitm.addon): `make_addons()`
    gives a fresh set, the policy addon (named "regionguard") first."""
    return importlib.import_module("regionguard.mitm.addon")


def run_mitmdump(argv: list[str], policy: Path) -> int | str | None:
    """mitmdump, in this process, with the addon in mitmproxy's own addon chain rather than as
    a `-s` script: a script is loaded later, in a task, and mitmproxy drops it (and runs on as a
    plain proxy) when it fails. Before anything listens, the addon must say its policy is in
    force, else exit 2."""
    from mitmproxy import hooks
    from mitmproxy.tools import cmdline, dump, main

    module = load_addon_module()
    running = False   # past mitmproxy's reading of the options

    class EnforcingMaster(dump.DumpMaster):
        def __init__(self, opts, *a, **kw) -> None:
            super().__init__(opts, *a, **kw)
            self.regionguard_addons = module.make_addons()
            self.addons.add(*self.regionguard_addons)

        async def run(self) -> None:
            nonlocal running
            running = True
            addon = self.addons.get("regionguard")
            if addon is None:
                problem = "the regionguard addon is not loaded"
            else:
                if not addon.configured_once:
                    # not configured yet (no option of its own changed): configure them now,
                    # the policy addon first, as mitmproxy would
                    everything = hooks.ConfigureHook(set(self.options.keys()))
                    for each in self.regionguard_addons:
                        self.addons.invoke_addon_sync(each, everything)
                problem = addon.not_enforcing()
                if problem is None and addon.holder.path.resolve() != policy.resolve():
                    problem = f"the policy in force is {addon.holder.path}, not {policy}"
            if problem is not None:
                print(f"regionguard run: not starting: {problem}", file=sys.stderr)
                sys.exit(EXIT_CONFIG)
            await super().run()

    def extra(args: argparse.Namespace) -> dict:   # as mitmdump's own entry point
        if args.filter_args:
            v = " ".join(args.filter_args)
            return {"save_stream_filter": v, "readfile_filter": v, "dumper_filter": v}
        return {}

    try:
        main.run(EnforcingMaster, cmdline.mitmdump, argv, extra)
    except SystemExit as e:
        # mitmproxy ends with 1 for an option it cannot read (argparse's usage error, its own
        # OptionsError), its message already printed: a usage error, as every command reports it
        if not running and e.code == 1:
            raise SystemExit(EXIT_CONFIG) from None
        raise
    return None


def _state_dir_value(state_dir: str) -> str:
    return state_dir if state_dir.strip().lower() == "off" else str(Path(state_dir).resolve())


class DnsStartError(Exception):
    """The DNS child could not be started; the message says why and what to do."""


def start_dns(policy: Path, nameservers: tuple[tuple[str, int], ...], listen: str,
              audit: str | None = None, timeout: float = 15.0,
              state_dir: str | None = None, metrics: str | None = None) -> subprocess.Popen:
    """Start `regionguard dns` beside the proxy and wait until it accepts TCP on its address, so
    the proxy never runs with a DNS server that died at start-up. `nameservers`: the policy's
    resolver name servers (the policy is already loaded)."""
    if importlib.util.find_spec("regionguard.dns.server") is None:
        raise DnsStartError("--dns needs the DNS front end (regionguard.dns.server), which is not installed")
    hostport = parse_hostport(listen, DNS_PORT)
    if hostport is None or not is_address(hostport[0]):
        raise DnsStartError(f"--dns {listen!r} is not ADDRESS:PORT (e.g. 127.0.0.1:5353)")
    exe = shutil.which("regionguard")
    cmd = ([exe] if exe else [sys.executable, "-m", "regionguard"]) + [
        "dns", "--policy", str(policy), "--listen", listen]
    if audit:  # its own file: two processes must not rotate one log
        path = Path(audit).resolve()
        cmd += ["--audit", str(path.with_name(path.stem + ".dns" + path.suffix))]
    if state_dir:   # the same learned evidence as the proxy
        cmd += ["--state-dir", _state_dir_value(state_dir)]
    if metrics:
        cmd += ["--metrics", metrics]
    # The proxy resolves through the policy's name servers; when that is this very server, the
    # DNS child forwards to the system's resolvers instead of to itself.
    if not nameservers or hostport in nameservers:
        from regionguard.dns.cli import system_upstreams

        for host, port in system_upstreams():
            if (host, port) != hostport:
                cmd += ["--upstream", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    child = subprocess.Popen(cmd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DnsStartError(f"the DNS server (`{' '.join(cmd[1:])}`) exited with code "
                                f"{child.returncode}; see its message above")
        try:
            socket.create_connection(hostport, timeout=0.5).close()
            return child
        except OSError:
            time.sleep(0.1)
    stop(child)
    raise DnsStartError(f"the DNS server did not start listening on {listen} within {timeout:.0f} s")


def stop(child: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a child process, giving it `timeout` seconds to exit before it is killed."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def cmd_run(args: argparse.Namespace) -> int:
    extra = list(getattr(args, "extra", []) or [])
    try:
        policy, values = checked_options(args, extra)
    except RunOptionError as e:
        print(f"regionguard run: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        loaded = load_policy(policy)   # fail here, with file, field and fix, not in mitmproxy's log
    except ConfigError as e:
        print(f"regionguard run: invalid policy:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    problem = local_mode_problem(_modes(extra))
    if problem:
        print(f"regionguard run: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    audit = args.audit or values.get("regionguard_audit")
    unwritable = check_audit_path(str(audit), "--audit" if args.audit else "regionguard_audit") \
        if audit else None
    if unwritable is not None:   # said now, before anything listens, not at the first lost line
        print(f"regionguard run: {unwritable}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        child = (start_dns(policy, loaded.resolver.nameservers, args.dns, args.audit,
                           state_dir=args.state_dir, metrics=args.dns_metrics)
                 if args.dns else None)
    except DnsStartError as e:
        print(f"regionguard run: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = run_mitmdump(mitmdump_args(args, extra, policy, values), policy)
    except SystemExit as e:
        result = e.code
    finally:
        if child is not None:
            stop(child)
    if isinstance(result, int):
        return result
    return EXIT_OK if result is None else EXIT_CONFIG
