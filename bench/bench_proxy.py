"""Proxy throughput with and without regionguard, side by side in one run.

    .venv/bin/python bench/bench_proxy.py [--seconds 2] [--rounds 5] [--threads 8]

Two mitmdump processes in regular (explicit proxy) mode, both passing TLS through untouched:
  bare   mitmdump -s <a one-line addon that passes every TLS connection through>
  guard  mitmdump -s addons/regionguard_addon.py (default options: TLS passthrough, audit log on)
Loads, alternated bare/guard per round (medians reported, and the median of the rounds' ratios):
  http     plain HTTP requests/s over keep-alive client connections (absolute-form GETs)
  connect  new CONNECT tunnels/s, each a TLS handshake with the origin and one request
Latency: p50 of one sequential request or tunnel, bare vs guard; the difference is the added
latency of a decision. Also, in process, the p50 of Enforcer.verdict (resolve + decide) and of
AuditLog.record on a connection's path: queued for the writer thread (the addon's default,
regionguard_audit_flush_ms=250) and written at once (regionguard_audit_flush_ms=0).
Goal: guard ≥ 0.95 × bare for both loads. Loopback only; every loop bounded in count and time.

    --metrics       also run "metrics": guard with its metrics endpoint on (regionguard_metrics),
                    scraped every second throughout, in the same rounds: metrics on vs off.
    --compare DIR   also run DIR's addons (another checkout, e.g. main) as a third proxy, "base",
                    in the same alternating rounds: before/after figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
ORIGIN = "127.0.1.1"
MAX_OPS = 200_000   # upper bound per measurement, whatever the duration

POLICY = """\
version: 1
name: bench
account: {type: paid, default_region: US}
regions: {opt_in: [US, DE]}
overrides: [{match: 127.0.1.0/24, region: DE, zoom: true}]
resolver: {hosts: {de.zoom.us: 127.0.1.1}}
"""
PASSTHROUGH = """\
def tls_clienthello(data):
    data.ignore_connection = True
"""


# --- origin: HTTP and HTTPS keep-alive servers in their own process ---------------------------


def _origin_main(http_port: int, tls_port: int, cert: str, key: str, ready) -> None:
    body = b'{"ok":true}'
    response = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n"
                % len(body)) + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        await asyncio.start_server(handle, ORIGIN, http_port, backlog=1024)
        await asyncio.start_server(handle, ORIGIN, tls_port, ssl=ctx, backlog=1024)
        ready.set()
        await asyncio.sleep(3600)

    asyncio.run(main())


def _free_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- proxies ----------------------------------------------------------------------------------


class Mitmdump:
    def __init__(self, name: str, script: Path, workdir: Path, *sets: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.port = _free_port("127.0.0.1")
        cmd = [str(BIN / "mitmdump"), "--set", "flow_detail=0", "-s", str(script),
               "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
               "--set", f"confdir={workdir / 'conf'}", "--set", "termlog_verbosity=warn"]
        for s in sets:
            cmd += ["--set", s]
        self._out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start:\n{self.log.read_text()}")

    def cpu_seconds(self) -> float:
        """CPU time the proxy process has used: a per-operation cost that, unlike wall-clock
        throughput, does not swing with other work on a shared machine."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._out.close()


# --- client loads -----------------------------------------------------------------------------


def _read_response(sock: socket.socket | ssl.SSLSocket, buf: bytearray) -> None:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)) if \
        re.search(rb"(?i)content-length:", head) else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    buf[:] = rest[length:]


def http_op_factory(proxy_port: int, target: str):
    """A keep-alive client connection sending absolute-form GETs through the proxy."""
    state: dict = {}
    request = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()

    def op() -> None:
        if "sock" not in state:
            state["sock"] = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
            state["buf"] = bytearray()
        try:
            state["sock"].sendall(request)
            _read_response(state["sock"], state["buf"])
        except OSError:
            state.pop("sock").close()
            raise

    return op


def connect_op_factory(proxy_port: int, target: str, cafile: str):
    ctx = ssl.create_default_context(cafile=cafile)
    host = target.rsplit(":", 1)[0]

    def op() -> None:
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as raw:
            raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                chunk = raw.recv(4096)
                if not chunk:
                    raise ConnectionError("CONNECT refused")
                buf += chunk
            if not buf.startswith(b"HTTP/1.1 200") and not buf.startswith(b"HTTP/1.0 200"):
                raise ConnectionError(buf[:100])
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                _read_response(tls, bytearray())

    return op


def _load_worker(kind: str, proxy_port: int, target: str, cafile: str, threads: int,
                 seconds: float, out) -> None:
    done = [0] * threads
    errors = [0] * threads
    stop_at = time.monotonic() + seconds

    def run(i: int) -> None:
        op = (http_op_factory(proxy_port, target) if kind == "http"
              else connect_op_factory(proxy_port, target, cafile))
        n = 0
        while time.monotonic() < stop_at and n < MAX_OPS // threads:
            try:
                op()
                done[i] += 1
            except OSError:
                errors[i] += 1
            n += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((sum(done), sum(errors), time.monotonic() - start))


def throughput(kind: str, proxy_port: int, target: str, cafile: str, threads: int,
               seconds: float) -> tuple[float, int]:
    """Operations per second (client in its own process, so it does not share our GIL)."""
    q: multiprocessing.Queue = multiprocessing.Queue()
    p = multiprocessing.Process(target=_load_worker,
                                args=(kind, proxy_port, target, cafile, threads, seconds, q))
    p.start()
    done, errors, elapsed = q.get(timeout=seconds + 120)
    p.join(timeout=30)
    return done / elapsed, errors


def latency_p50(kind: str, proxy_port: int, target: str, cafile: str, n: int = 200) -> float:
    op = (http_op_factory(proxy_port, target) if kind == "http"
          else connect_op_factory(proxy_port, target, cafile))
    op()   # warm up (and open the keep-alive connection)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        op()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def verdict_p50(policy: Path, n: int = 20_000) -> float:
    from regionguard.core.decision import Engine
    from regionguard.core.policy import load_policy
    from regionguard.mitm.enforce import Enforcer

    enforcer = Enforcer(Engine(load_policy(policy)))

    async def run() -> list[float]:
        samples = []
        for i in range(n):
            t = time.perf_counter()
            await enforcer.verdict(f"127.0.0.{1 + i % 200}", "de.zoom.us", None, 443)
            samples.append(time.perf_counter() - t)
        return samples

    return statistics.median(asyncio.run(run())) * 1e6


def audit_record_p50(policy: Path, workdir: Path, n: int = 20_000) -> dict[str, float]:
    """µs per AuditLog.record call as the addon makes it: queued (flush interval 0.25 s, the
    writer thread's encoding and writing then happen off the connection's path) and written at
    once (flush interval 0)."""
    from regionguard.audit.log import AuditLog
    from regionguard.core.decision import Engine
    from regionguard.core.policy import load_policy

    decision = Engine(load_policy(policy)).decide("127.0.0.1", "de.zoom.us", ORIGIN, 443)
    result = {}
    for name, interval in (("queued", 0.25), ("at once", 0.0)):
        audit = AuditLog(workdir / f"audit-{interval}.jsonl", flush_interval=interval)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            audit.record(decision, mode="regular", front_end="mitmproxy", hook="http_connect",
                         connect_to=ORIGIN)
            samples.append(time.perf_counter() - t)
        audit.close()
        result[name] = statistics.median(samples) * 1e6
    return result


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--metrics", action="store_true",
                    help="also run guard with the metrics endpoint on, scraped every second")
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="another checkout whose addons run as a third proxy, base")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from proxy_support import make_cert  # the tests' certificate helper

    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        work = Path(tmp)
        cert, key = make_cert(work, ["de.zoom.us"], [ORIGIN])
        policy = work / "policy.yaml"
        policy.write_text(POLICY)
        passthrough = work / "passthrough.py"
        passthrough.write_text(PASSTHROUGH)
        http_port, tls_port = _free_port(ORIGIN), _free_port(ORIGIN)
        ready = multiprocessing.Event()
        origin = multiprocessing.Process(target=_origin_main, daemon=True,
                                         args=(http_port, tls_port, str(cert), str(key), ready))
        origin.start()
        proxies = []
        try:
            if not ready.wait(30):
                raise RuntimeError("origin did not start")
            bare = Mitmdump("bare", passthrough, work)
            proxies.append(bare)
            guard = Mitmdump("guard", ROOT / "addons" / "regionguard_addon.py", work,
                             f"regionguard_policy={policy}",
                             f"regionguard_audit={work / 'audit.jsonl'}")
            proxies.append(guard)
            metrics = scraper = None
            if args.metrics:
                from bench_dns import Scraper  # the same scraper as the DNS benchmark's

                metrics_port = _free_port("127.0.0.1")
                metrics = Mitmdump("metrics", ROOT / "addons" / "regionguard_addon.py", work,
                                   f"regionguard_policy={policy}",
                                   f"regionguard_audit={work / 'audit-metrics.jsonl'}",
                                   f"regionguard_metrics=127.0.0.1:{metrics_port}")
                proxies.append(metrics)
                scraper = Scraper(metrics_port, 1.0)
            base = None
            if args.compare:
                other = args.compare.resolve()
                env = {**os.environ, "PYTHONPATH": str(other)}
                script = other / "addons" / "regionguard_addon.py"
                if not script.exists():   # a checkout from before the entry file's rename
                    script = other / "addons" / "regionguard.py"
                base = Mitmdump("base", script, work,
                                f"regionguard_policy={policy}",
                                f"regionguard_audit={work / 'audit-base.jsonl'}", env=env)
                proxies.append(base)
            http_target, tls_target = f"{ORIGIN}:{http_port}", f"{ORIGIN}:{tls_port}"
            results: dict[str, dict[str, list[float]]] = {}
            cost: dict[str, dict[str, list[float]]] = {}   # operations per proxy CPU-second
            loads = [("http", http_target), ("connect", tls_target),
                     ("http-by-name", f"de.zoom.us:{http_port}")]
            for kind, target in loads:
                op_kind = "connect" if kind == "connect" else "http"
                for i in range(args.rounds):
                    # Which proxy goes first alternates, so neither always follows the other.
                    order = [p for p in (bare, guard, metrics, base) if p is not None]
                    for proxy in (order if i % 2 == 0 else order[::-1]):
                        if kind == "http-by-name" and proxy is bare:
                            continue   # bare mitmproxy cannot resolve the lab name
                        cpu0 = proxy.cpu_seconds()
                        rate, errors = throughput(op_kind, proxy.port, target, str(cert),
                                                  args.threads, args.seconds)
                        cpu = proxy.cpu_seconds() - cpu0
                        if errors:
                            print(f"  {proxy.name} {kind}: {errors} failed operations")
                        results.setdefault(kind, {}).setdefault(proxy.name, []).append(rate)
                        ops = rate * args.seconds
                        if ops and cpu:
                            cost.setdefault(kind, {}).setdefault(proxy.name, []).append(ops / cpu)
            lat = {}
            for kind, target in loads[:2]:
                for proxy in (bare, guard):
                    lat[(kind, proxy.name)] = latency_p50(kind, proxy.port, target, str(cert))
        finally:
            if scraper is not None:
                scraper.stop()
            for p in proxies:
                p.stop()
            origin.terminate()
            origin.join(timeout=10)
        # Counted after the proxy stopped: it writes its queued lines when it stops.
        audit_lines = sum(1 for _ in open(work / "audit.jsonl"))

        print(f"bench_proxy: mitmdump regular mode, TLS passthrough, {args.rounds} alternating "
              f"rounds × {args.seconds:g}s, {args.threads} client threads, {os.cpu_count()} CPUs")
        report = {}
        for kind in ("http", "connect"):
            b = statistics.median(results[kind]["bare"])
            g = statistics.median(results[kind]["guard"])
            unit = "requests/s" if kind == "http" else "new tunnels/s"
            # Each round measures both proxies seconds apart: the median of the rounds' own
            # ratios cancels load that other work on a shared machine puts on some rounds.
            paired = statistics.median(gr / br for br, gr in
                                       zip(results[kind]["bare"], results[kind]["guard"], strict=True))
            verdict = "ok" if paired >= 0.95 else "BELOW GOAL"
            print(f"  {kind:8s} bare {b:8.0f} {unit:13s} guard {g:8.0f}   ratio {g / b:.3f}, "
                  f"per round {paired:.3f} (goal ≥ 0.95: {verdict})")
            cb = statistics.median(cost[kind]["bare"])
            cg = statistics.median(cost[kind]["guard"])
            print(f"  {'':8s} per proxy CPU-second: bare {cb:8.0f}   guard {cg:8.0f}   "
                  f"ratio {cg / cb:.3f} (goal ≥ 0.95: {'ok' if cg >= 0.95 * cb else 'BELOW GOAL'})")
            report[kind] = {"bare": b, "guard": g, "ratio": g / b, "paired_ratio": paired,
                            "cpu_ratio": cg / cb}
        by_name = statistics.median(results["http-by-name"]["guard"])
        print(f"  http by name (resolve via policy hosts + pin), guard only: {by_name:8.0f} requests/s")
        if base is not None:
            print(f"  guard vs base ({args.compare}), median of per-round ratios:")
            for kind in ("http", "connect", "http-by-name"):
                rounds = results[kind]
                paired = statistics.median(g / b for b, g in
                                           zip(rounds["base"], rounds["guard"], strict=True))
                cpu = statistics.median(cost[kind]["guard"]) / statistics.median(cost[kind]["base"])
                print(f"    {kind:12s} base {statistics.median(rounds['base']):8.0f}/s  guard "
                      f"{statistics.median(rounds['guard']):8.0f}/s  ratio {paired:.3f}  "
                      f"per proxy CPU-second {cpu:.3f}")
                report[f"vs_base_{kind}"] = {"paired_ratio": paired, "cpu_ratio": cpu}
        if metrics is not None:
            print(f"  metrics on vs off (metrics / guard, scraped every 1 s: {scraper.scrapes} "
                  f"scrapes, {scraper.failures} failed), median of per-round ratios:")
            for kind in ("http", "connect", "http-by-name"):
                rounds = results[kind]
                paired = statistics.median(m / g for g, m in
                                           zip(rounds["guard"], rounds["metrics"], strict=True))
                cpu = (statistics.median(cost[kind]["metrics"])
                       / statistics.median(cost[kind]["guard"]))
                print(f"    {kind:12s} guard {statistics.median(rounds['guard']):8.0f}/s  metrics "
                      f"{statistics.median(rounds['metrics']):8.0f}/s  ratio {paired:.3f}  "
                      f"per proxy CPU-second {cpu:.3f}")
                report[f"metrics_{kind}"] = {"paired_ratio": paired, "cpu_ratio": cpu}
        for kind in ("http", "connect"):
            b, g = lat[(kind, "bare")], lat[(kind, "guard")]
            print(f"  p50 latency {kind:8s} bare {b:6.3f} ms  guard {g:6.3f} ms  "
                  f"added {g - b:+.3f} ms")
        print(f"  in-process Enforcer.verdict p50 (name → hosts → decide): "
              f"{verdict_p50(policy):.1f} µs")
        record = audit_record_p50(policy, work)
        print(f"  in-process AuditLog.record p50: queued {record['queued']:.2f} µs, "
              f"written at once {record['at once']:.2f} µs")
        print(f"  audit lines written by guard: {audit_lines}")
        report["latency_added_ms"] = {k: lat[(k, "guard")] - lat[(k, "bare")]
                                      for k in ("http", "connect")}
        print(json.dumps({"bench": "proxy", **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
