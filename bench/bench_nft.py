"""The kernel's cost of table inet regionguard on a gateway (issue #9 goal: throughput with the
full bundled data compiled in ≥ 0.95× the same path without the table), and the time to build
and load the full ruleset. Run as root: .venv/bin/python bench/bench_nft.py [--seconds 3]

Lab: client ns → gateway ns (forwarding; the table on the forward hook) → server ns, veth
pairs, all created here (names carry the pid) and removed at the end. iperf3 (Debian: iperf3)
runs in the server and client namespaces. The server's address is a Zoom address in SG (an
override in a documentation prefix) and the client is in the group `lab`, which allows SG while
the other clients may not reach it: so the address is in the table's first lookup (blocked for
some group), and every packet is then looked up in every set of its group before it passes.
The longest path an allowed packet takes: the worst case for an allowed flow.

Side by side in one run: rounds alternate without and with the table (ABAB...), and each
figure is the median of its rounds. Measured: TCP throughput; UDP throughput (1400-byte
datagrams, unlimited rate); small-packet UDP (64-byte datagrams) packets/s received; the time to
compile the ruleset from the policy and the full data, and to load it with one nft transaction.

Against the proxy (--proxy-wireguard, on when wg, wireguard-go and mitmproxy are here): the same
transfers from the same client namespace through `regionguard run --mode wireguard` in the
gateway namespace (the addon enforcing the same policy: the tunnel address is in group `lab`)
instead of kernel forwarding, in the same alternating rounds; `full/proxy` is the ratio the
kernel path gains. Its runs last at most PROXY_MAX_SECONDS: mitmproxy keeps every message of a
TCP or UDP flow in memory until the connection ends. The UDP figures are what the server
received (its own report): at an unlimited rate the proxy relays datagrams in order far slower
than they come, and what is still queued when the run ends never counts. The setup is in
bench/wireguard_path.py; the audit log must show the addon allowing the tunnel's TCP and UDP
flows, or the bench fails rather than print figures that are not the proxy's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from regionguard.core.decision import Engine  # noqa: E402
from regionguard.core.policy import load_policy  # noqa: E402
from regionguard.nft import apply  # noqa: E402
from regionguard.nft.ruleset import compile_ruleset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wireguard_path import WireGuardPath, wireguard_missing  # noqa: E402

POLICY = """\
version: 1
account: {default_region: US}
regions: {opt_in: [US, DE]}
overrides:
  - {match: "198.51.100.0/24", region: SG, zoom: true, note: "the bench's server: lab only"}
groups:
  - {name: lab, clients: [10.9.2.0/24], regions: {opt_in: [US, SG]}}
"""
SERVER = "198.51.100.10"
CLIENT = "10.9.2.2"      # in group lab
TUNNEL = "10.9.2.3"      # the client's WireGuard address, in group lab too
PROXY_SIDE = "wg proxy"
PROXY_MAX_SECONDS = 10.0


def sh(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def build_lab(n: str) -> tuple[str, str, str]:
    client, gateway, server = f"rgbn-c{n}", f"rgbn-g{n}", f"rgbn-s{n}"
    for ns in (client, gateway, server):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", f"rgbc{n}", "netns", client, "type", "veth", "peer", "name",
       f"rgbgc{n}", "netns", gateway)
    sh("ip", "link", "add", f"rgbgs{n}", "netns", gateway, "type", "veth", "peer", "name",
       f"rgbs{n}", "netns", server)
    sh("ip", "-n", client, "addr", "add", f"{CLIENT}/24", "dev", f"rgbc{n}")
    sh("ip", "-n", gateway, "addr", "add", "10.9.2.1/24", "dev", f"rgbgc{n}")
    sh("ip", "-n", gateway, "addr", "add", "10.8.0.1/30", "dev", f"rgbgs{n}")
    sh("ip", "-n", server, "addr", "add", "10.8.0.2/30", "dev", f"rgbs{n}")
    sh("ip", "-n", server, "addr", "add", f"{SERVER}/32", "dev", "lo")
    for ns, dev in ((client, f"rgbc{n}"), (gateway, f"rgbgc{n}"), (gateway, f"rgbgs{n}"),
                    (server, f"rgbs{n}")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", client, "route", "add", "default", "via", "10.9.2.1")
    sh("ip", "-n", gateway, "route", "add", "default", "via", "10.8.0.2")
    sh("ip", "-n", server, "route", "add", "10.9.0.0/16", "via", "10.8.0.1")
    sh("ip", "netns", "exec", gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return client, gateway, server


def iperf(client: str, seconds: float, bind: str, *extra: str) -> dict:
    cmd = ["ip", "netns", "exec", client, "iperf3", "-c", SERVER, "-B", bind, "-J",
           "--connect-timeout", "10000", "-t", f"{seconds:g}", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()[-500:]}")
    return json.loads(r.stdout)


def measure(client: str, seconds: float, bind: str = CLIENT) -> dict[str, float]:
    tcp = iperf(client, seconds, bind)
    udp = iperf(client, seconds, bind, "-u", "-b", "0", "-l", "1400")
    small = iperf(client, seconds, bind, "-u", "-b", "0", "-l", "64")

    # what the server received, from its own report (sum_received): `sum` is the sender's
    # rate less the loss the server saw in the sequence numbers, which reads as the full sending
    # rate when nothing at all arrives (no gap to see)
    def received_pps(result: dict) -> float:
        s = result["end"].get("sum_received", result["end"]["sum"])
        return (s["packets"] - s["lost_packets"]) / result["end"]["sum"]["seconds"]

    def received_bps(result: dict) -> float:
        if "sum_received" in result["end"]:
            return result["end"]["sum_received"]["bits_per_second"]
        s = result["end"]["sum"]   # iperf3 before 3.11 has no sum_received for UDP
        return s["bits_per_second"] * (1 - s["lost_percent"] / 100)

    return {"tcp_gbps": tcp["end"]["sum_received"]["bits_per_second"] / 1e9,
            "udp_gbps": received_bps(udp) / 1e9,
            "small_udp_kpps": received_pps(small) / 1e3}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")   # nothing got through on side b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each side (default 3)")
    ap.add_argument("--proxy-wireguard", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the transfers through regionguard run --mode wireguard "
                         "(default: when wg, wireguard-go and mitmproxy are installed)")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("iperf3") is None or shutil.which("nft") is None:
        print("bench_nft: needs root, iperf3 (Debian: iperf3) and nft (Debian: nftables)",
              file=sys.stderr)
        return 2
    missing = wireguard_missing() if args.proxy_wireguard is not False else None
    if args.proxy_wireguard and missing:
        print(f"bench_nft: --proxy-wireguard: {missing}", file=sys.stderr)
        return 2
    with_proxy = args.proxy_wireguard is not False and missing is None
    if missing:
        print(f"wireguard proxy side skipped: {missing}")
    # a plain kill (SIGTERM) tears the lab down too, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    n = str(os.getpid())
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        made = []
        iperf_server = None
        proxy_path = None
        try:
            client, gateway, server = build_lab(n)
            made = [client, gateway, server]
            iperf_server = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s",
                                             "-B", SERVER], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            t0 = time.perf_counter()
            engine = Engine(load_policy(policy))
            t1 = time.perf_counter()
            compiled = compile_ruleset(engine)
            document = compiled.document()
            t2 = time.perf_counter()
            apply.run_batch(document, netns=gateway)
            t3 = time.perf_counter()
            elements = sum(len(s.elements) for s in compiled.sets)
            print(f"ruleset: {len(compiled.sets)} sets, {elements} elements; engine "
                  f"{t1 - t0:.2f} s, compile {t2 - t1:.2f} s, nft load (one transaction) "
                  f"{t3 - t2:.2f} s")
            # the hook alone: table inet regionguard with its base chain and no rule, to tell
            # the cost of having a forward hook at all from that of the sets
            empty = {"nftables": [*document["nftables"][:3], {"add": {"chain": {
                "family": "inet", "table": "regionguard", "name": "filter", "type": "filter",
                "hook": "forward", "prio": 0, "policy": "accept"}}}]}
            sides = {"without": apply.delete_table, "empty chain": lambda: apply.run_batch(
                empty, netns=gateway), "full table": lambda: apply.run_batch(
                document, netns=gateway)}
            if with_proxy:
                proxy_path = WireGuardPath(
                    client_ns=client, gateway_ns=gateway, gateway_address="10.9.2.1",
                    tunnel_address=TUNNEL, destinations=[SERVER], policy=policy,
                    workdir=Path(tmp), device=f"rgbw{n}",
                    # mitmdump's console prints a line per TCP segment or datagram relayed at
                    # its default flow_detail=1: the proxy at its best is measured without
                    proxy_options=("--set", "flow_detail=0"))
                proxy_path.start()
                # the proxy's own connections leave the gateway (output hook): the table, on
                # the forward hook, never sees them, so this side loads nothing
                sides[PROXY_SIDE] = lambda: None
            proxy_seconds = min(args.seconds, PROXY_MAX_SECONDS)
            results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side, load in sides.items():
                    if side == "without":
                        apply.delete_table(netns=gateway)
                    else:
                        load()
                    if side != PROXY_SIDE:
                        results[side].append(measure(client, args.seconds))
                        continue
                    try:
                        results[side].append(measure(client, proxy_seconds, bind=TUNNEL))
                    except Exception as e:
                        raise RuntimeError(f"the wireguard proxy side failed: {e}\n"
                                           f"the proxy's output (end):\n"
                                           f"{proxy_path.output()[-3000:]}") from e
            if with_proxy:
                print(proxy_path.audited_summary(SERVER))
            print(f"{'':16}" + "".join(f"{side:>14}" for side in sides)
                  + f"{'full/without':>14}" + (f"{'full/proxy':>14}" if with_proxy else ""))
            for key in ("tcp_gbps", "udp_gbps", "small_udp_kpps"):
                median = {side: statistics.median(r[key] for r in results[side]) for side in sides}
                full = median["full table"]
                print(f"{key:16}" + "".join(f"{median[side]:14.3f}" for side in sides)
                      + f"{ratio(full, median['without']):14.3f}"
                      + (f"{ratio(full, median[PROXY_SIDE]):14.3f}" if with_proxy else ""))
            # the spread says how far a ratio can be trusted on a busy machine
            print("rounds (min-max): " + "; ".join(
                f"{key} {side}: " + "-".join(f"{f(r[key] for r in results[side]):.3g}"
                                             for f in (min, max))
                for key in ("tcp_gbps", "udp_gbps", "small_udp_kpps") for side in sides))
        finally:
            if proxy_path is not None:
                proxy_path.stop()
            if iperf_server is not None:
                iperf_server.terminate()
                iperf_server.wait(10)
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
