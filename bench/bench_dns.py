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
name new), and latency percentiles under the hit load (from dnsperf's per-query report).
Goals (issue 4): hit rate >= 0.6x unbound's; miss rate with filtering >= 1.0x unbound's.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
SERVER_CORE, LOAD_CORE = "0", ("1" if CORES > 1 else "0")


def uvloop_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("uvloop") is not None


def free_port() -> int:
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


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


def start(cmd: list[str], core: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", core, *cmd], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))  # noqa: SIM115


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def dnsperf(port: int, datafile: Path, seconds: float, once: bool, verbose: bool) -> dict:
    cmd = ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
           str(datafile), "-l", str(seconds), "-q", "200", "-t", "3", "-c", "4"]
    if once:
        cmd += ["-n", "1"]
    if verbose:
        cmd += ["-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    latencies = sorted(float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    return {"completed": int(m.group(1)) if m else 0, "lost": int(lost.group(1)) if lost else 0,
            "qps": float(qps.group(1)) if qps else 0.0, "latencies": latencies}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def measure(name: str, port: int, work: Path, seconds: float, miss_names: int) -> dict:
    hits = work / f"{name}-hits.txt"
    hits.write_text("".join(f"h{i}.zoom.us A\n" for i in range(1000)))
    misses = work / f"{name}-misses.txt"
    misses.write_text("".join(f"m{i}-{name}.zoom.us A\n" for i in range(miss_names)))
    dnsperf(port, hits, 10, once=True, verbose=False)              # warm the cache
    hit = dnsperf(port, hits, seconds, once=False, verbose=True)
    miss = dnsperf(port, misses, seconds * 3, once=True, verbose=True)
    return {"hit": hit, "miss": miss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each hit run")
    parser.add_argument("--miss-names", type=int, default=20000, help="distinct names per miss run")
    args = parser.parse_args()
    for tool in ("unbound", "dnsperf", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench_dns: `{tool}` not found; install it (Debian: apt-get install unbound dnsperf)",
                  file=sys.stderr)
            return 2
    de, us = zone_addresses()
    procs: list[subprocess.Popen] = []
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        work = Path(tmp)
        try:
            up_port = free_port()
            procs.append(start(["unbound", "-d", "-c", str(unbound_upstream(work, up_port, de, us))],
                               LOAD_CORE, work / "upstream.log"))
            wait_answer(up_port)

            anchor_port = free_port()
            anchor = start(["unbound", "-d", "-c", str(unbound_anchor(work, anchor_port, up_port))],
                           SERVER_CORE, work / "anchor.log")
            procs.append(anchor)
            wait_answer(anchor_port)
            results["unbound"] = measure("unbound", anchor_port, work, args.seconds, args.miss_names)
            stop(anchor)

            policy = work / "policy.yaml"
            policy.write_text("version: 1\naccount: {type: paid, default_region: DE}\n"
                              "regions: {opt_in: [Europe]}\n")
            variants = [("regionguard", [])]
            if uvloop_installed():
                variants.append(("rg-asyncio", ["--no-uvloop"]))
            for name, extra in variants:
                rg_port = free_port()
                rg = start([str(BIN / "regionguard"), "dns", "--policy", str(policy), "--listen",
                            f"127.0.0.1:{rg_port}", "--upstream", f"127.0.0.1:{up_port}", "--no-tcp",
                            *extra], SERVER_CORE, work / f"{name}.log")
                procs.append(rg)
                answer = wait_answer(rg_port)
                got = sorted(rd.address for s in answer.answer for rd in s)
                if got != [de]:
                    print(f"bench_dns: regionguard answered {got}, expected only the DE address {de} "
                          f"(US {us} filtered): the benchmark would not measure filtering",
                          file=sys.stderr)
                    print((work / f"{name}.log").read_text(), file=sys.stderr)
                    return 1
                results[name] = measure(name, rg_port, work, args.seconds, args.miss_names)
                stop(rg)
        finally:
            for p in procs:
                stop(p)

    print(f"bench_dns: {CORES} core(s); servers on core {SERVER_CORE}, upstream unbound and dnsperf "
          f"on core {LOAD_CORE}; zone answers {de} (DE, allowed) + {us} (US, filtered out)")
    print(f"{'':<12} {'hit q/s':>10} {'miss q/s':>10} {'hit p50 ms':>11} {'hit p99 ms':>11} "
          f"{'hit p99.9':>10} {'miss p99 ms':>12} {'lost':>6}")
    for name, r in results.items():
        hit, miss = r["hit"], r["miss"]
        print(f"{name:<12} {hit['qps']:>10.0f} {miss['qps']:>10.0f} {pct(hit['latencies'], .5):>11.3f} "
              f"{pct(hit['latencies'], .99):>11.3f} {pct(hit['latencies'], .999):>10.3f} "
              f"{pct(miss['latencies'], .99):>12.3f} {hit['lost'] + miss['lost']:>6}")
    if "rg-asyncio" in results:
        print("regionguard runs on uvloop when it is installed; rg-asyncio is the same server on "
              "asyncio's own loop (--no-uvloop)")
    rg, ub = results["regionguard"], results["unbound"]
    hit_ratio = rg["hit"]["qps"] / ub["hit"]["qps"] if ub["hit"]["qps"] else float("nan")
    miss_ratio = rg["miss"]["qps"] / ub["miss"]["qps"] if ub["miss"]["qps"] else float("nan")
    print(f"ratio hit  regionguard/unbound = {hit_ratio:.2f}  (goal >= 0.6)  "
          f"{'OK' if hit_ratio >= 0.6 else 'BELOW GOAL'}")
    print(f"ratio miss regionguard/unbound = {miss_ratio:.2f}  (goal >= 1.0)  "
          f"{'OK' if miss_ratio >= 1.0 else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
