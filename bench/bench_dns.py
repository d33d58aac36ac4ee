"""Benchmark `regionguard dns` against Debian's unbound, side by side in one run.

    .venv/bin/python bench/bench_dns.py [--seconds 8] [--miss-names 20000]

Needs `unbound` and `dnsperf` (Debian: apt-get install unbound dnsperf). Everything runs on
127.0.0.1. Layout, one core each where the machine has two:
  core 1: the upstream (an unbound serving a Zoom-like zone from local-data) and dnsperf;
  core 0: the server under test, one at a time: unbound as a forwarding cache (the anchor), then
          regionguard dns forwarding to the same upstream.
Every answer of the zone is Zoom's and holds one address in an allowed region (DE) and one in a
disallowed one (US), both from the bundled Zoom data, so regionguard filters every miss.

Measured, for each server: cache-hit queries/s (1000 names, warmed), cache-miss queries/s (every
name new), and latency percentiles under load (from dnsperf's per-query report). Also, for
each run, the server's CPU use and how busy the load core was: a load core near 100% means
dnsperf and the upstream, not the server, set the pace (flagged "LOAD-BOUND").
rg-audit is regionguard writing its audit log (one JSON line per filtered answer) as well;
rg-pure is regionguard with REGIONGUARD_COMPILED=off, its compiled modules run from source (as
where nothing was compiled, see regionguard/_compiled.py). --build NAME=DIR adds regionguard from
another checkout DIR (with its own build, e.g. another list of compiled modules) to the same run.
--metrics adds rg-metrics: regionguard with its metrics endpoint on (--metrics HOST:PORT), scraped
every --scrape-every seconds throughout its runs (Prometheus' default is 15 s: 1 s is harsher),
to show what the metrics cost the hot path beside the same server without them (regionguard).
floor is bench/dns_floor.py, a uvloop forwarder that only forwards (misses only): what the four
datagrams of a miss cost any Python server, so the rest of regionguard's cost is its own work.
Goals (issue 4): hit rate >= 0.6x unbound's; miss rate with filtering >= 1.0x unbound's.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from regionguard import _compiled  # noqa: E402
from tests.ports import free_port  # noqa: E402

BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
SERVER_CORE, LOAD_CORE = "0", ("1" if CORES > 1 else "0")


def uvloop_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("uvloop") is not None


def zone_addresses() -> tuple[str, str]:
    """One DE and one US address inside Zoom's published ranges, from the bundled data."""
    found: dict[str, str] = {}
    with open(ROOT / "config" / "data" / "zoom-datacenters.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["region"] in ("DE", "US") and row["region"] not in found and ":" not in row["prefix"]:
                found[row["region"]] = str(ipaddress.ip_network(row["prefix"])[1])
    return found["DE"], found["US"]


UNBOUND_BASE = """\
server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: "{dir}/unbound.pid"
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-ip6: no
  verbosity: 0
  module-config: "iterator"
  do-not-query-localhost: no
  qname-minimisation: no
  prefetch: no
  msg-cache-size: 64m
  rrset-cache-size: 64m
remote-control:
  control-enable: no
"""


def unbound_upstream(directory: Path, port: int, de: str, us: str) -> Path:
    conf = UNBOUND_BASE.format(port=port, dir=directory) + f"""\
server:
  local-zone: "zoom.us." redirect
  local-data: "zoom.us. 3600 IN A {de}"
  local-data: "zoom.us. 3600 IN A {us}"
"""
    path = directory / "upstream.conf"
    path.write_text(conf)
    return path


def unbound_anchor(directory: Path, port: int, upstream: int) -> Path:
    conf = UNBOUND_BASE.format(port=port, dir=directory) + f"""\
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{upstream}
"""
    path = directory / "anchor.conf"
    path.write_text(conf)
    return path


def wait_answer(port: int, name: str = "ready.zoom.us", timeout: float = 30) -> dns.message.Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
        except (OSError, dns.exception.Timeout):
            time.sleep(0.2)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def start(cmd: list[str], core: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", core, *cmd], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=env)  # noqa: SIM115


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def dnsperf_command(port: int, datafile: Path, seconds: float, once: bool, verbose: bool) -> list[str]:
    cmd = ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
           str(datafile), "-l", str(seconds), "-q", "200", "-t", "3", "-c", "4"]
    if once:
        cmd += ["-n", "1"]
    if verbose:
        cmd += ["-v"]
    return cmd


def core_times(core: str) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU, from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{core} "):
                    v = [int(x) for x in line.split()[1:]]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    return sum(v) - idle, sum(v)
    except OSError:
        pass
    return 0, 0


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process `pid`; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def dnsperf(port: int, datafile: Path, seconds: float, once: bool, verbose: bool,
            server_pid: int | None = None) -> dict:
    cmd = dnsperf_command(port, datafile, seconds, once, verbose)
    busy0, total0 = core_times(LOAD_CORE)
    cpu0, wall0 = process_cpu(server_pid), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    busy1, total1 = core_times(LOAD_CORE)
    cpu1, wall1 = process_cpu(server_pid), time.monotonic()
    m = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    latencies = sorted(float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    completed = int(m.group(1)) if m else 0
    return {"completed": completed, "lost": int(lost.group(1)) if lost else 0,
            "qps": float(qps.group(1)) if qps else 0.0, "latencies": latencies,
            "load_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
            "server_cpu": (cpu1 - cpu0) / (wall1 - wall0) if server_pid else float("nan"),
            "cpu_us_per_query": (cpu1 - cpu0) / completed * 1e6 if server_pid and completed
            else float("nan")}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def write_misses(work: Path, name: str, miss_names: int) -> Path:
    misses = work / f"{name}-misses.txt"
    misses.write_text("".join(f"m{i}-{name}.zoom.us A\n" for i in range(miss_names)))
    return misses


class Scraper:
    """Scrapes http://127.0.0.1:PORT/metrics every `every` seconds in a thread, as Prometheus
    would, until stopped; counts the scrapes that succeeded."""

    def __init__(self, port: int, every: float) -> None:
        self.url, self.every = f"http://127.0.0.1:{port}/metrics", every
        self.scrapes = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def scrape_cost(port: int, pid: int, scrapes: int = 200) -> float:
    """The server's CPU microseconds per /metrics scrape, idle otherwise (caches full)."""
    cpu0 = process_cpu(pid)
    for _ in range(scrapes):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            r.read()
    return (process_cpu(pid) - cpu0) / scrapes * 1e6


def measure(name: str, port: int, work: Path, seconds: float, miss_names: int,
            pid: int | None = None, metrics: tuple[int, float] | None = None) -> dict:
    hits = work / f"{name}-hits.txt"
    hits.write_text("".join(f"h{i}.zoom.us A\n" for i in range(1000)))
    misses = write_misses(work, name, miss_names)
    dnsperf(port, hits, 10, once=True, verbose=False)              # warm the cache
    scraper = Scraper(*metrics) if metrics else None
    try:
        hit = dnsperf(port, hits, seconds, once=False, verbose=True, server_pid=pid)
        miss = dnsperf(port, misses, seconds * 3, once=True, verbose=True, server_pid=pid)
    finally:
        if scraper is not None:
            scraper.stop()
    result = {"hit": hit, "miss": miss}
    if scraper is not None:
        result["scrapes"] = (scraper.scrapes, scraper.failures)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each hit run")
    parser.add_argument("--miss-names", type=int, default=100000,
                        help="distinct names per miss run (enough for a few seconds of steady "
                        "state: a run of well under a second is mostly ramp-up and drain)")
    parser.add_argument("--no-audit-run", action="store_true",
                        help="skip the rg-audit variant (regionguard writing its audit log)")
    parser.add_argument("--no-pure-run", action="store_true",
                        help="skip the rg-pure variant (regionguard with REGIONGUARD_COMPILED=off: "
                        "its hot path run from source, as where nothing was compiled)")
    parser.add_argument("--no-floor-run", action="store_true",
                        help="skip the floor run (bench/dns_floor.py: a forwarder that does "
                        "nothing but forward, the I/O cost any Python server pays per miss)")
    parser.add_argument("--metrics", action="store_true",
                        help="add rg-metrics: regionguard with --metrics on, scraped throughout")
    parser.add_argument("--scrape-every", type=float, default=1.0, metavar="SECONDS",
                        help="how often rg-metrics is scraped (default 1)")
    parser.add_argument("--no-asyncio-run", action="store_true",
                        help="skip the rg-asyncio variant (regionguard on asyncio's own loop)")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                        help="also run regionguard from the checkout DIR (PYTHONPATH=DIR: its "
                        "sources and its own compiled build) as variant NAME; repeatable")
    args = parser.parse_args()
    builds = [b.partition("=")[::2] for b in args.build]
    for name, directory in builds:
        if not name or not (Path(directory) / "regionguard" / "__init__.py").is_file():
            parser.error(f"--build {name}={directory}: give NAME=DIR, DIR a checkout holding "
                         "regionguard/ (e.g. --build leaf=/tmp/regionguard-leaf)")
    for tool in ("unbound", "dnsperf", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench_dns: `{tool}` not found; install it (Debian: apt-get install unbound dnsperf)",
                  file=sys.stderr)
            return 2
    de, us = zone_addresses()
    procs: list[subprocess.Popen] = []
    results = {}
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        work = Path(tmp)
        try:
            up_port = free_port()
            procs.append(start(["unbound", "-d", "-c", str(unbound_upstream(work, up_port, de, us))],
                               LOAD_CORE, work / "upstream.log"))
            wait_answer(up_port)

            anchor_port = free_port()
            anchor_cmd = ["unbound", "-d", "-c", str(unbound_anchor(work, anchor_port, up_port))]
            commands["unbound"] = ["taskset", "-c", SERVER_CORE, *anchor_cmd]
            anchor = start(anchor_cmd, SERVER_CORE, work / "anchor.log")
            procs.append(anchor)
            wait_answer(anchor_port)
            results["unbound"] = measure("unbound", anchor_port, work, args.seconds, args.miss_names,
                                         anchor.pid)
            stop(anchor)

            policy = work / "policy.yaml"
            policy.write_text("version: 1\naccount: {type: paid, default_region: DE}\n"
                              "regions: {opt_in: [Europe]}\n")
            pure_env = {**os.environ, _compiled.ENV: "off"}
            variants: list[tuple[str, list[str], dict[str, str] | None]] = [("regionguard", [], None)]
            metrics_port = free_port()
            if args.metrics:
                variants.append(("rg-metrics", ["--metrics", f"127.0.0.1:{metrics_port}"], None))
            if not args.no_audit_run:
                variants.append(("rg-audit", ["--audit", str(work / "audit.jsonl")], None))
            if uvloop_installed() and not args.no_asyncio_run:
                variants.append(("rg-asyncio", ["--no-uvloop"], None))
            if not args.no_pure_run:
                variants.append(("rg-pure", [], pure_env))
            for name, directory in builds:
                variants.append((name, [], {**os.environ, "PYTHONPATH": directory}))
            if uvloop_installed() and not args.no_floor_run:
                floor_port = free_port()
                floor_cmd = [sys.executable, str(ROOT / "bench" / "dns_floor.py"), str(floor_port),
                             str(up_port)]
                commands["floor"] = ["taskset", "-c", SERVER_CORE, *floor_cmd]
                floor = start(floor_cmd, SERVER_CORE, work / "floor.log")
                procs.append(floor)
                wait_answer(floor_port)
                results["floor"] = {"miss": dnsperf(floor_port, write_misses(work, "floor",
                                                                              args.miss_names),
                                                    args.seconds * 3, once=True, verbose=True,
                                                    server_pid=floor.pid)}
                stop(floor)
            for name, extra, env in variants:
                rg_port = free_port()
                rg_cmd = [str(BIN / "regionguard"), "dns", "--policy", str(policy), "--listen",
                          f"127.0.0.1:{rg_port}", "--upstream", f"127.0.0.1:{up_port}", "--no-tcp",
                          *extra]
                commands[name] = ["taskset", "-c", SERVER_CORE, *rg_cmd]
                if env is pure_env:
                    commands[name].insert(0, f"{_compiled.ENV}=off")
                elif env is not None:
                    commands[name].insert(0, f"PYTHONPATH={env['PYTHONPATH']}")
                rg = start(rg_cmd, SERVER_CORE, work / f"{name}.log", env)
                procs.append(rg)
                answer = wait_answer(rg_port)
                got = sorted(rd.address for s in answer.answer for rd in s)
                if got != [de]:
                    print(f"bench_dns: regionguard answered {got}, expected only the DE address {de} "
                          f"(US {us} filtered): the benchmark would not measure filtering",
                          file=sys.stderr)
                    print((work / f"{name}.log").read_text(), file=sys.stderr)
                    return 1
                results[name] = measure(name, rg_port, work, args.seconds, args.miss_names, rg.pid,
                                        (metrics_port, args.scrape_every)
                                        if name == "rg-metrics" else None)
                if name == "rg-metrics":
                    results[name]["scrape_cpu_us"] = scrape_cost(metrics_port, rg.pid)
                stop(rg)
        finally:
            for p in procs:
                stop(p)

    print(f"bench_dns: {CORES} core(s); servers on core {SERVER_CORE}, upstream unbound and dnsperf "
          f"on core {LOAD_CORE}; zone answers {de} (DE, allowed) + {us} (US, filtered out)")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    for name, cmd in commands.items():
        print(f"  {name}: {' '.join(cmd)}")
    print(f"  load: {' '.join(dnsperf_command(0, Path('QUERIES'), args.seconds, False, True))}"
          f"  (hits; misses: -l {args.seconds * 3:g} -n 1 over {args.miss_names} new names)")
    print(f"{'':<12} {'hit q/s':>10} {'miss q/s':>10} {'hit p50 ms':>11} {'hit p99 ms':>11} "
          f"{'hit p99.9':>10} {'miss p50 ms':>12} {'miss p99 ms':>12} {'lost':>6}")
    servers = {name: r for name, r in results.items() if "hit" in r}
    for name, r in servers.items():
        hit, miss = r["hit"], r["miss"]
        print(f"{name:<12} {hit['qps']:>10.0f} {miss['qps']:>10.0f} {pct(hit['latencies'], .5):>11.3f} "
              f"{pct(hit['latencies'], .99):>11.3f} {pct(hit['latencies'], .999):>10.3f} "
              f"{pct(miss['latencies'], .5):>12.3f} {pct(miss['latencies'], .99):>12.3f} "
              f"{hit['lost'] + miss['lost']:>6}")
    print(f"{'':<12} {'hit srv cpu':>12} {'miss srv cpu':>13} {'hit cpu us/q':>13} "
          f"{'miss cpu us/q':>14} {'hit load core':>14} {'miss load core':>15}")
    for name, r in servers.items():
        hit, miss = r["hit"], r["miss"]
        flags = [f"LOAD-BOUND ({run})" for run, x in (("hit", hit), ("miss", miss))
                 if x["load_busy"] >= 0.95 and x["server_cpu"] < 0.9]
        print(f"{name:<12} {hit['server_cpu']:>12.0%} {miss['server_cpu']:>13.0%} "
              f"{hit['cpu_us_per_query']:>13.1f} {miss['cpu_us_per_query']:>14.1f} "
              f"{hit['load_busy']:>14.0%} {miss['load_busy']:>15.0%}  {' '.join(flags)}")
    print("LOAD-BOUND: the load core was saturated while the server had CPU to spare, so that "
          "rate understates the server; compare the CPU cost per query (cpu us/q) instead.")
    if "rg-metrics" in results:
        on, rg_off = results["rg-metrics"], results["regionguard"]
        ok, failed = on["scrapes"]
        print(f"metrics on/off (rg-metrics/regionguard), scraped every {args.scrape_every:g} s "
              f"({ok} scrapes, {failed} failed): cpu us/q hit {on['hit']['cpu_us_per_query']:.1f}"
              f" / {rg_off['hit']['cpu_us_per_query']:.1f}, miss "
              f"{on['miss']['cpu_us_per_query']:.1f} / {rg_off['miss']['cpu_us_per_query']:.1f}; "
              f"one scrape costs the server {on['scrape_cpu_us']:.0f} cpu us")
    if "rg-asyncio" in results:
        print("regionguard runs on uvloop when it is installed; rg-asyncio is the same server on "
              "asyncio's own loop (--no-uvloop)")
    if "rg-pure" in results:
        print(f"regionguard's compiled modules here: {_compiled.status()}; rg-pure is the same "
              f"server with {_compiled.ENV}=off (its sources, as where nothing compiled)")
    if "floor" in results:
        floor = results["floor"]["miss"]
        print(f"floor (bench/dns_floor.py, forwards and nothing else): miss {floor['qps']:.0f} q/s, "
              f"{floor['cpu_us_per_query']:.1f} cpu us/q, server cpu {floor['server_cpu']:.0%}, "
              f"load core {floor['load_busy']:.0%}: the I/O any Python forwarder on uvloop pays "
              "per miss")
    rg, ub = results["regionguard"], results["unbound"]
    hit_ratio = rg["hit"]["qps"] / ub["hit"]["qps"] if ub["hit"]["qps"] else float("nan")
    miss_ratio = rg["miss"]["qps"] / ub["miss"]["qps"] if ub["miss"]["qps"] else float("nan")
    print(f"ratio hit  regionguard/unbound = {hit_ratio:.2f}  (goal >= 0.6)  "
          f"{'OK' if hit_ratio >= 0.6 else 'BELOW GOAL'}")
    print(f"ratio miss regionguard/unbound = {miss_ratio:.2f}  (goal >= 1.0)  "
          f"{'OK' if miss_ratio >= 1.0 else 'BELOW GOAL'}")
    for run in ("hit", "miss"):   # capacity on one core: the inverse of the CPU cost per query
        a, b = ub[run]["cpu_us_per_query"], rg[run]["cpu_us_per_query"]
        if a == a and b == b and b > 0:
            print(f"ratio {run:<4} by CPU cost per query (unbound us/q / regionguard us/q) = "
                  f"{a / b:.2f}  ({a:.1f} / {b:.1f} us)")
    if "rg-audit" in results and ub["miss"]["qps"]:
        print(f"ratio miss rg-audit/unbound    = {results['rg-audit']['miss']['qps'] / ub['miss']['qps']:.2f}"
              "  (with the audit log written)")
    if "rg-pure" in results and ub["miss"]["qps"]:
        print(f"ratio miss rg-pure/unbound     = {results['rg-pure']['miss']['qps'] / ub['miss']['qps']:.2f}"
              "  (the hot path run from its sources)")
    for name, _ in builds:
        r = results[name]
        print(f"ratio {name}/unbound: hit {r['hit']['qps'] / ub['hit']['qps']:.2f}  miss "
              f"{r['miss']['qps'] / ub['miss']['qps']:.2f}  (--build {name}; cpu us/q: hit "
              f"{r['hit']['cpu_us_per_query']:.1f}, miss {r['miss']['cpu_us_per_query']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
